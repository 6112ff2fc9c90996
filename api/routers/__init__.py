"""One router per resource: ``jobs`` (jobs and their metadata), ``events``, ``health``."""
