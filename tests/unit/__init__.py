"""Tests that need no service: pure functions and in-memory fakes."""
