"""End-to-end tests: the CLI and the flows under a real Prefect server."""
