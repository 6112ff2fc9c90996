"""Helpers shared by tests: partner job types written outside the repository."""
