"""jobline's tests: ``unit`` (no services), ``integration`` (real PostgreSQL, Docker, S3,
RabbitMQ), ``acceptance`` (the CLI and the flows end to end)."""
