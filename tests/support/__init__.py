"""Shared test support: partner job types written outside the repository."""
