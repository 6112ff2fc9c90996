"""The ``docker`` runner: one job attempt in one throw-away container.

The container sees only the job's work dir (``input`` read-only at /work/input, ``output``
writable at /work/output, working directory /work), has no network unless the job type asks
for it, runs as a non-root user without capabilities, and is limited to its worker flavor's CPUs
and memory. Its output is streamed line by line while it runs; it is killed at the job type's
timeout, and it is always removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.types import Mount

from jobline.exceptions import ProcessingError
from jobline.settings import Settings, get_settings
from tasks.runners.base import RunRequest, RunResult, stopped_on
from tasks.runners.flavors import Flavor, flavor_table, resolve_flavor

#: Labels put on every job container; ``jobline.store`` and ``jobline.job_id`` together find a
#: job's leftovers, ``jobline.store`` the orphans of one job store.
STORE_LABEL = "jobline.store"
JOB_ID_LABEL = "jobline.job_id"
JOB_KEY_LABEL = "jobline.job_key"
ATTEMPT_LABEL = "jobline.attempt"
#: Where the work dir's two halves appear inside the container.
CONTAINER_WORK_DIR = "/work"
#: User of the container when jobline itself runs as root (uid:gid of "nobody").
UNPRIVILEGED_USER = "65534:65534"
#: The longest line kept in the log tail (the full line still reaches ``on_line``).
MAX_TAIL_LINE = 1000

_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


def docker_available(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers within ``timeout`` seconds."""
    try:
        client = docker.from_env(timeout=timeout)
    except _ENGINE_ERRORS:
        return False
    try:
        return bool(client.ping())
    except _ENGINE_ERRORS:
        return False
    finally:
        client.close()


def container_name(job_id: int, attempt: int, store_id: str = "") -> str:
    """The name of a job attempt's container (unique per job store, whose id it starts with)."""
    store = f"{store_id[:8]}-" if store_id else ""
    return f"jobline-{store}job-{job_id}-a{attempt}"


def store_filter(store_id: str, job_id: int | None = None) -> dict[str, list[str]]:
    """The engine's label filter for one job store's containers (of one job, if given)."""
    labels = [f"{STORE_LABEL}={store_id}"] if store_id else [JOB_ID_LABEL]
    if job_id is not None:
        labels.append(f"{JOB_ID_LABEL}={job_id}")
    return {"label": labels}


def default_container_user() -> str:
    """The host user (so outputs belong to it), or "nobody" when jobline runs as root."""
    uid = os.getuid()
    return UNPRIVILEGED_USER if uid == 0 else f"{uid}:{os.getgid()}"


def remove_orphan_containers(
    client: docker.DockerClient,
    keep_job_ids: Iterable[int] | Callable[[set[int]], Iterable[int]],
    store_id: str,
) -> list[str]:
    """Remove every container of the job store ``store_id`` whose job is not in
    ``keep_job_ids`` (the jobs in progress); returns the names of the removed containers.
    Containers of other job stores sharing the engine, and unlabelled ones, are left alone.

    ``keep_job_ids`` may be a function of the listed containers' job ids, called after the
    listing: a job that starts its container meanwhile is then not mistaken for an orphan.
    """
    if not store_id:
        raise ValueError("store_id: orphans are only ever looked for within one job store")
    containers = client.containers.list(all=True, filters=store_filter(store_id))
    if callable(keep_job_ids):
        labels = (container.labels.get(JOB_ID_LABEL, "") for container in containers)
        keep_job_ids = keep_job_ids({int(label) for label in labels if label.isdigit()})
    keep = {str(job_id) for job_id in keep_job_ids}
    removed = []
    for container in containers:
        if container.labels.get(JOB_ID_LABEL) not in keep:
            _remove_quietly(container)
            removed.append(container.name)
    return removed


class DockerRunner:
    """Runs a job's image and command in a container on the local Docker engine."""

    name = "docker"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: docker.DockerClient | None = None,
        user: str | None = None,
        log_tail_lines: int = 50,
    ) -> None:
        self.settings = settings or get_settings()
        self.user = user or default_container_user()
        self.log_tail_lines = log_tail_lines
        self._client = client
        self._flavors = flavor_table(self.settings)
        self._engine_cpus: int | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except _ENGINE_ERRORS as error:
                raise ProcessingError(
                    f"the Docker engine does not answer: {error}", transient=True, subtype="docker"
                ) from None
        return self._client

    def run(self, request: RunRequest) -> RunResult:
        """Run one attempt to its end or its timeout; the container is removed in every case."""
        flavor = self.flavor(request.flavor)
        image_id = self.resolve_image(request.image)
        self._prepare_work_dir(request.work_dir)
        self.remove_leftovers(request.job_id, request.store_id)
        container = self._create(request, flavor, image_id)
        try:
            return self._run_container(container, request, flavor, image_id)
        finally:
            _remove_quietly(container)

    # ------------------------------------------------------------------ before the container

    def flavor(self, name: str) -> Flavor:
        """The flavor's limits, CPUs capped at the engine's cores."""
        if self._engine_cpus is None:
            self._engine_cpus = int(
                self._engine_call("read the engine's info", self.client.info)["NCPU"]
            )
        return resolve_flavor(name, self._flavors, self._engine_cpus)

    def resolve_image(self, image: str) -> str:
        """The id of ``image`` on the engine, pulled according to ``image_pull_policy``."""
        policy = self.settings.image_pull_policy
        if policy != "always":
            try:
                return str(self.client.images.get(image).id)
            except docker.errors.ImageNotFound:
                if policy == "never":
                    raise ProcessingError(
                        f"image {image!r} is not on the Docker engine and image_pull_policy is "
                        "'never': build or load it before running the job",
                        subtype="image",
                    ) from None
            except _ENGINE_ERRORS as error:
                raise _engine_error(f"look up image {image!r}", error) from None
        try:
            return str(self.client.images.pull(image).id)
        except docker.errors.APIError as error:
            raise ProcessingError(
                f"image {image!r} is not on the Docker engine and could not be pulled "
                f"(image_pull_policy={policy!r}): {_explain(error)}",
                subtype="image",
            ) from None
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"pull image {image!r}", error) from None

    def remove_leftovers(self, job_id: int, store_id: str = "") -> list[str]:
        """Remove containers left by earlier attempts of the job (a crashed worker's)."""
        leftovers = self._engine_call(
            "list the job's containers",
            lambda: self.client.containers.list(all=True, filters=store_filter(store_id, job_id)),
        )
        for container in leftovers:
            _remove_quietly(container)
        return [container.name for container in leftovers]

    def _prepare_work_dir(self, work_dir: Path) -> None:
        input_dir, output_dir = work_dir / "input", work_dir / "output"
        input_dir.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.user.split(":")[0] != str(os.getuid()):
            # Another uid runs inside: it must read the inputs and write into output/.
            output_dir.chmod(0o777)
            _make_world_readable(input_dir)

    def _create(self, request: RunRequest, flavor: Flavor, image_id: str) -> Container:
        work = request.work_dir.resolve()
        options: dict[str, Any] = {
            "command": request.command or None,
            "name": container_name(request.job_id, request.attempt, request.store_id),
            "labels": {
                STORE_LABEL: request.store_id,
                JOB_ID_LABEL: str(request.job_id),
                JOB_KEY_LABEL: request.job_key,
                ATTEMPT_LABEL: str(request.attempt),
            },
            "environment": dict(request.environment),
            "working_dir": CONTAINER_WORK_DIR,
            "user": self.user,
            "mounts": [
                Mount(f"{CONTAINER_WORK_DIR}/input", str(work / "input"), "bind", read_only=True),
                Mount(f"{CONTAINER_WORK_DIR}/output", str(work / "output"), "bind"),
            ],
            "nano_cpus": int(flavor.cpus * 1e9),
            "mem_limit": flavor.memory_bytes,
            # Swap equal to memory: no swap, so exceeding the flavor is an OOM kill, not a crawl.
            "memswap_limit": flavor.memory_bytes,
            "privileged": False,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if not request.network:
            options["network_mode"] = "none"
        try:
            return self.client.containers.create(image_id, **options)
        except docker.errors.APIError as error:
            raise ProcessingError(
                f"the container of job {request.job_id} ({request.image}) could not be created: "
                f"{_explain(error)}",
                subtype="container",
            ) from None
        except _ENGINE_ERRORS as error:
            raise _engine_error(f"create the container of job {request.job_id}", error) from None

    # ---------------------------------------------------------------- while it runs, after it

    def _run_container(
        self, container: Container, request: RunRequest, flavor: Flavor, image_id: str
    ) -> RunResult:
        tail: deque[str] = deque(maxlen=self.log_tail_lines)
        killer = _DeadlineKiller(container, request.timeout)
        started = time.monotonic()
        # Attached before the start, as `docker run` does: a followed log stream can end before
        # the engine has logged the last write of a container that just exited.
        output = self._engine_call(
            "attach to the container",
            lambda: container.attach(stream=True, logs=True, stdout=True, stderr=True),
        )
        try:
            self._start(container, request)
            killer.start()
            with stopped_on(request.cancel, lambda: _kill_quietly(container)) as cancelled:
                for line in _lines(output):
                    if request.on_line is not None:
                        request.on_line(line)
                    tail.append(line[:MAX_TAIL_LINE])
                exit_code = self._engine_call(
                    "wait for the container", lambda: container.wait(timeout=60)
                )["StatusCode"]
        finally:
            killer.stop()
            output.close()
        duration = time.monotonic() - started
        self._engine_call("inspect the container", container.reload)
        oom_killed = bool(container.attrs.get("State", {}).get("OOMKilled"))
        if killer.killed:
            tail.append(f"timed out after {request.timeout:g} s: the container was killed")
        if cancelled.is_set():
            tail.append("stopped: the worker lost the job's lease; the container was killed")
        if oom_killed:
            tail.append(
                f"killed: out of memory (flavor {request.flavor}: {flavor.memory_mib:g} MiB)"
            )
        return RunResult(
            runner=self.name,
            image=request.image,
            image_id=image_id,
            command=list(request.command),
            exit_code=int(exit_code),
            duration_seconds=round(duration, 3),
            timed_out=killer.killed,
            oom_killed=oom_killed,
            log_tail=list(tail),
            flavor=request.flavor,
            limits={
                "cpus": flavor.cpus,
                "memory_mib": flavor.memory_mib,
                "memory_bytes": flavor.memory_bytes,
                "network": "default" if request.network else "none",
                "user": self.user,
            },
        )

    def _start(self, container: Container, request: RunRequest) -> None:
        try:
            container.start()
        except docker.errors.APIError as error:
            raise ProcessingError(
                f"the container of job {request.job_id} ({request.image}, command "
                f"{request.command}) could not be started: {_explain(error)}",
                subtype="container",
            ) from None

    def _engine_call(self, action: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except _ENGINE_ERRORS as error:
            raise _engine_error(action, error) from None


class _DeadlineKiller:
    """Kills the container when the timeout passes; ``killed`` says whether it did."""

    def __init__(self, container: Container, timeout: float) -> None:
        self._container = container
        self._timer = threading.Timer(timeout, self._kill)
        self._timer.daemon = True
        self.killed = False

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        # Joining makes ``killed`` final: a kill in flight finishes before the result is built.
        self._timer.cancel()
        if self._timer.is_alive():
            self._timer.join()

    def _kill(self) -> None:
        try:
            self._container.kill()
        except _ENGINE_ERRORS:
            return  # it stopped on its own just before the deadline
        self.killed = True


def _lines(output: Iterable[bytes]) -> Iterator[str]:
    """The container's stdout and stderr, line by line, until it stops."""
    pending = b""
    try:
        for chunk in output:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                yield raw.rstrip(b"\r").decode("utf-8", errors="replace")
    except _ENGINE_ERRORS as error:
        raise _engine_error("follow the container's output", error) from None
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")


def _kill_quietly(container: Container) -> None:
    with contextlib.suppress(*_ENGINE_ERRORS):  # it may have stopped on its own meanwhile
        container.kill()


def _remove_quietly(container: Container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        if "already in progress" not in str(error):
            raise


def _make_world_readable(directory: Path) -> None:
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o555 if path.is_dir() or mode & 0o100 else 0o444
        if mode & extra != extra:
            path.chmod(mode | extra)


def _explain(error: docker.errors.APIError) -> str:
    return str(error.explanation or error)


def _engine_error(action: str, error: BaseException) -> ProcessingError:
    return ProcessingError(
        f"could not {action}: the Docker engine failed: {error}", transient=True, subtype="docker"
    )
