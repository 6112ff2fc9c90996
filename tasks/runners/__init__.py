"""Runners: how the scientific processing of one job is executed (a subprocess, a container)."""
