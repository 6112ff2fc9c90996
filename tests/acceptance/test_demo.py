"""``jobline demo``, the README's main job, run as a user runs it: the real console script."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.prefect_server import free_port
from db.models import JobStatusChange
from db.store import JobStore
from jobline.settings import Settings
from tasks.results import METADATA_KEYS
from tests.acceptance.test_lifecycle import HAPPY_PATH

DEMO_TYPE = "jobtypes.demo:SnowCover"
#: The most a run that Prefect cannot serve may take to stop (seconds): about 3 s of imports
#: and checks on a quiet machine, many more on a loaded one.
STOPS_WITHIN = 60


def fresh_machine_env(home: Path, **extra: str) -> dict[str, str]:
    """No JOBLINE_* variables, no Prefect server, no Docker engine, an empty home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBLINE_", "PREFECT_", "XDG_")) and k != "DOCKER_HOST"
    }
    env.update(HOME=str(home), DOCKER_HOST="unix:///nonexistent/docker.sock", **extra)
    return env


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["jobline", "demo", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_all_done(store: JobStore, expected: int) -> None:
    jobs = store.list_jobs(limit=1000).jobs
    assert len(jobs) == expected
    for job in jobs:
        assert job.job_type == DEMO_TYPE
        assert job.status == "done", (job.product_id, job.status, job.last_error)
        assert [c.to_status for c in store.history(job.id)] == HAPPY_PATH
        assert set(store.list_metadata(job.id)) == set(METADATA_KEYS)
        assert [Path(f["path"]).suffix for f in job.output_files] == [".asc", ".json"]


def history_rows(store: JobStore) -> int:
    with store.session() as session:
        return session.scalar(select(func.count()).select_from(JobStatusChange)) or 0


@pytest.mark.slow
def test_demo_on_a_fresh_machine_then_again(tmp_path: Path, prefect_api_url: str) -> None:
    home = tmp_path / "home"
    first = run_demo(fresh_machine_env(home))
    assert "runner: local" in first.stdout
    assert "embedded server" in first.stdout

    store = JobStore.from_settings(Settings(data_dir=home / ".local/share/jobline"))
    assert_all_done(store, 8)
    rows = history_rows(store)
    runs = {
        j.id: store.get_metadata(j.id, "run-container", METADATA_KEYS["run-container"])
        for j in store.list_jobs().jobs
    }

    # Again on the same folder (on the session's Prefect server, to save a server start).
    second = run_demo(fresh_machine_env(home, PREFECT_API_URL=prefect_api_url))
    assert "inserted 0" in second.stdout and "processed 0" in second.stdout
    assert history_rows(store) == rows, "no job moved"
    for job_id, run in runs.items():
        assert store.get_metadata(job_id, "run-container", type(run)) == run, "no container ran"


@pytest.mark.slow
def test_demo_against_postgresql(
    tmp_path: Path, pg_settings: Settings, prefect_api_url: str
) -> None:
    env = fresh_machine_env(
        tmp_path / "home",
        JOBLINE_DATABASE_URL=pg_settings.resolved_database_url,
        PREFECT_API_URL=prefect_api_url,
    )
    done = run_demo(env, "--products", "4", "--json")
    assert_all_done(JobStore.from_settings(pg_settings), 4)
    document = json.loads(done.stdout)
    assert document["summary"]["jobs"] == document["summary"]["succeeded"] == 4
    assert {job["status"] for job in document["jobs"]} == {"done"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "cause", "setting"),
    [
        # Prefect's home cannot be created: HOME is a file (seen: minutes of retries, 0 jobs).
        ("demo", {"HOME": "file"}, "PREFECT_HOME"),
        ("run", {"HOME": "file"}, "PREFECT_HOME"),
        # The embedded server's database (PostgreSQL, as configured) does not answer.
        (
            "demo",
            {
                "PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://postgres@127.0.0.1:{port}/p"
            },
            "PREFECT_API_DATABASE_CONNECTION_URL",
        ),
        # No embedded server allowed, no server named.
        ("demo", {"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"}, "PREFECT_API_URL"),
        # A server is named, and nothing answers there.
        ("run", {"PREFECT_API_URL": "http://127.0.0.1:{port}/api"}, "PREFECT_API_URL"),
    ],
)
def test_when_prefect_cannot_serve_the_run_it_stops_in_seconds_with_one_line(
    tmp_path: Path, command: str, cause: dict[str, str], setting: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    data_dir = tmp_path / "data"
    port = str(free_port())  # nothing listens there
    extra = {k: v.replace("{port}", port) for k, v in cause.items()}
    if extra.pop("HOME", None) == "file":
        home = tmp_path / "a-file"
        home.write_text("not a directory")
    env = fresh_machine_env(home, JOBLINE_DATA_DIR=str(data_dir), **extra)
    arguments = ["demo"] if command == "demo" else ["run", DEMO_TYPE]
    started = time.monotonic()
    result = subprocess.run(
        ["jobline", *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    seconds = time.monotonic() - started
    print(f"jobline {command} with {cause}: exit {result.returncode} after {seconds:.1f} s")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Prefect"), result.stderr
    assert setting in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not data_dir.exists(), "nothing was written before Prefect was found able"
    assert seconds < STOPS_WITHIN
