"""The runner interface. A runner executes one job's processing in its work dir and reports how
it ended; it never touches the job store (the tasks record what it reports)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field

#: Exit code with which a processing asks for a retry (a transient failure).
RETRY_EXIT_CODE = 2


@dataclass(frozen=True)
class RunRequest:
    """Everything a runner needs to execute one attempt of one job.

    ``work_dir`` holds ``input/`` (staged inputs, mounted read-only at /work/input in a container)
    and ``output/`` (mounted writable at /work/output); the working directory is ``work_dir``
    (``/work`` in a container), so commands can use the relative paths ``input`` and ``output``.
    """

    job_id: int
    job_key: str
    attempt: int
    image: str
    command: list[str]
    work_dir: Path
    environment: dict[str, str] = field(default_factory=dict)
    timeout: float = 3600.0
    flavor: str = "small"
    network: bool = False
    #: Receives each line the processing prints, as it prints it (e.g. into the Prefect log).
    on_line: Callable[[str], None] | None = None
    #: Set when the worker lost the job's lease: the runner stops the processing at once.
    cancel: threading.Event | None = None
    #: The job store's identity (:meth:`db.store.JobStore.store_id`): a job id is only unique
    #: within one store, so containers are named and found by both.
    store_id: str = ""


@contextmanager
def stopped_on(
    cancel: threading.Event | None, stop: Callable[[], None]
) -> Iterator[threading.Event]:
    """While the block runs, call ``stop`` (from a watcher thread) as soon as ``cancel`` is set;
    yields an event telling whether it did."""
    stopped = threading.Event()
    if cancel is None:
        yield stopped
        return
    finished = threading.Event()

    def watch() -> None:
        # Wait on ``finished`` (set the moment the block ends, so the join below returns at
        # once) and look at ``cancel`` every 0.2 s.
        while not finished.wait(0.2):
            if cancel.is_set():
                stop()
                stopped.set()
                return

    watcher = threading.Thread(target=watch, name="jobline-run-cancel", daemon=True)
    watcher.start()
    try:
        yield stopped
    finally:
        finished.set()
        watcher.join()


class RunResult(BaseModel):
    """How one attempt ended; stored as the run-container task's job metadata."""

    runner: str
    image: str = ""
    image_id: str | None = None
    command: list[str]
    exit_code: int
    duration_seconds: float
    timed_out: bool = False
    oom_killed: bool = False
    log_tail: list[str] = Field(default_factory=list)
    flavor: str = ""
    limits: dict[str, float | int | str] = Field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    @property
    def asks_retry(self) -> bool:
        return self.exit_code == RETRY_EXIT_CODE and not self.timed_out and not self.oom_killed


class Runner(Protocol):
    name: str

    def run(self, request: RunRequest) -> RunResult:
        """Run the processing to its end (or its timeout) and report; raise
        :class:`jobline.exceptions.ProcessingError` when it could not be started at all."""
        ...
