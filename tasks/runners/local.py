"""The ``local`` runner: the job type's host command as a subprocess in the job's work dir.

Used by the demo when no Docker engine answers, and by tests. It gives no isolation: the command
runs with jobline's own user and sees the host, so production runs use the docker runner.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque

from jobline.exceptions import ProcessingError
from tasks.runners.base import RunRequest, RunResult, stopped_on

LOG_TAIL_LINES = 50
#: Variables the subprocess inherits from jobline's environment; everything else comes from
#: the job, as it would in a container.
INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR")


class LocalRunner:
    name = "local"

    def run(self, request: RunRequest) -> RunResult:
        """Run the command to its end or its timeout; the whole process group is killed then."""
        environment = {k: os.environ[k] for k in INHERITED if k in os.environ}
        environment.update(request.environment)
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                request.command,
                cwd=request.work_dir,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group, so a timeout kills children too
            )
        except OSError as error:
            raise ProcessingError(
                f"cannot start {request.command[0]!r} for job {request.job_id}: {error}"
            ) from None
        timed_out = threading.Event()
        timer = threading.Timer(request.timeout, _kill_group, (process, timed_out))
        timer.start()
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        try:
            assert process.stdout is not None
            with stopped_on(request.cancel, lambda: _kill_group(process, None)) as cancelled:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    tail.append(line)
                    if request.on_line is not None:
                        request.on_line(line)
                exit_code = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                _kill_group(process, None)
                process.wait()
        if timed_out.is_set():
            tail.append(f"timed out after {request.timeout:g} s: killed")
        if cancelled.is_set():
            tail.append("stopped: the worker lost the job's lease")
        return RunResult(
            runner=self.name,
            command=request.command,
            exit_code=exit_code,
            duration_seconds=round(time.monotonic() - started, 3),
            timed_out=timed_out.is_set(),
            log_tail=list(tail),
            flavor=request.flavor,
        )


def _kill_group(process: subprocess.Popen[str], flag: threading.Event | None) -> None:
    if flag is not None:
        flag.set()
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)
