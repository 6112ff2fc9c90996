"""Every error jobline raises on purpose derives from :class:`JoblineError`.

Driver errors (SQLAlchemy, psycopg, docker, botocore, pika) are translated into these where they
cross into jobline, so callers handle one family of errors with messages that name the job, the
field or the resource involved.
"""

from __future__ import annotations


class JoblineError(Exception):
    """Root of all jobline errors."""


class ConfigurationError(JoblineError):
    """A setting or a job type declaration is missing or malformed."""


class SchemaNotCurrent(ConfigurationError):
    """The job store's schema is missing or at another revision than this jobline's newest;
    the message says what to run (``jobline db upgrade``)."""


class PrefectUnavailable(ConfigurationError):
    """Prefect cannot serve a run: its server does not answer, or its embedded server cannot
    start; the message names the cause and the setting that fixes it."""


class JobNotFound(JoblineError):
    """No job has the given id or key."""

    def __init__(self, job: int | str) -> None:
        super().__init__(f"job {job} does not exist")
        self.job = job


class TransitionError(JoblineError):
    """A status change was refused; nothing was written."""


class IllegalTransition(TransitionError):
    """The state machine has no edge from the current status to the requested one."""

    def __init__(
        self, job_id: int | None, from_status: str | None, to_status: str, detail: str = ""
    ) -> None:
        subject = f"job {job_id}" if job_id is not None else "a new job"
        origin = from_status if from_status is not None else "(new job)"
        super().__init__(
            detail or f"illegal status transition for {subject}: {origin} -> {to_status}"
        )
        self.job_id = job_id
        self.from_status = from_status
        self.to_status = to_status


class StaleTransition(TransitionError):
    """The job is not in the status the caller believed it was in."""

    def __init__(self, job_id: int, expected: tuple[str, ...], actual: str, to_status: str) -> None:
        wanted = " or ".join(expected)
        super().__init__(
            f"stale transition for job {job_id}: expected status {wanted} to move to "
            f"{to_status}, but the job is {actual}"
        )
        self.job_id = job_id
        self.expected = expected
        self.actual = actual
        self.to_status = to_status


class LeaseLost(TransitionError):
    """The worker's lease on the job expired or was taken over by another worker."""

    def __init__(self, job_id: int, token: str) -> None:
        super().__init__(
            f"lease lost on job {job_id}: token {token} no longer owns the job "
            "(it was rescued or claimed by another worker)"
        )
        self.job_id = job_id
        self.token = token


class MetadataError(JoblineError):
    """Job metadata could not be read or written."""


class MetadataNotFound(MetadataError):
    def __init__(self, job_id: int, key: str) -> None:
        super().__init__(f"job {job_id} has no metadata under key {key!r}")
        self.job_id = job_id
        self.key = key


class MetadataModelMismatch(MetadataError):
    def __init__(self, job_id: int, key: str, model: str, stored_as: str, reason: str) -> None:
        super().__init__(
            f"metadata {key!r} of job {job_id} was stored as {stored_as} and does not validate "
            f"as {model}: {reason}"
        )
        self.job_id = job_id
        self.key = key


class MetadataTooLarge(MetadataError):
    """A metadata write would make a document or a job's metadata larger than its limit."""

    def __init__(self, job_id: int, key: str, limit: int, what: str = "all its documents") -> None:
        super().__init__(
            f"body: metadata {key!r} of job {job_id} is refused: {what} would exceed the limit "
            f"of {limit} bytes"
        )
        self.job_id = job_id
        self.key = key


class TooManyMetadataKeys(MetadataError):
    """A metadata write would give a job more keys than the limit."""

    def __init__(self, job_id: int, key: str, limit: int) -> None:
        super().__init__(
            f"key: metadata {key!r} of job {job_id} is refused: the job would hold more than "
            f"{limit} metadata keys; delete some first"
        )
        self.job_id = job_id
        self.key = key


class JobTypeError(ConfigurationError):
    """A job type's import path or declaration is wrong."""


class ProcessingError(JoblineError):
    """The scientific processing failed.

    ``transient`` errors are the world's fault (storage, broker, a container asking for a retry):
    the job goes to ``external_error`` and is retried. Others go to ``internal_error``.
    """

    def __init__(self, message: str, *, transient: bool = False, subtype: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.subtype = subtype


class StorageError(ProcessingError):
    """Reading from or writing to input/output storage failed."""

    def __init__(self, message: str, *, transient: bool = True, subtype: str = "storage") -> None:
        super().__init__(message, transient=transient, subtype=subtype)


class PublicationError(JoblineError):
    """A publication message could not be delivered to its sink."""


class SinkUnavailable(PublicationError):
    """The sink cannot be reached at all (broker down, file not writable): later messages of the
    same batch would fail the same way, so the sender stops and leaves them pending."""


class JobWaitTimeout(JoblineError, TimeoutError):
    """A job did not reach a terminal status in the time a caller was willing to wait."""

    def __init__(self, job_id: int, status: str, timeout: float) -> None:
        super().__init__(
            f"job {job_id} is still {status} after waiting {timeout:g} s for a terminal status"
        )
        self.job_id = job_id
        self.status = status
        self.timeout = timeout
