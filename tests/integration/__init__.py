"""Tests against the real services: PostgreSQL, Docker, moto's S3 server, RabbitMQ."""
