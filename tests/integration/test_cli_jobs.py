"""``jobline jobs``: exit codes, ``--json`` output and tables, on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from cli.main import main
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings, get_settings
from jobtypes.base import Configuration
from tests.integration.api_server import HAPPY_PATH

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    """Run ``jobline ARGS`` in this process on the test database: (exit code, stdout, stderr)."""
    monkeypatch.setenv("JOBLINE_DATABASE_URL", pg_settings.database_url)
    monkeypatch.setenv("JOBLINE_DATA_DIR", str(pg_settings.data_dir))
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["jobline", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return int(exited.value.code or 0), captured.out, captured.err

    yield run
    get_settings.cache_clear()


def new_job(store: JobStore, product_id: str = "P1") -> int:
    job = NewJob(job_type="jobtypes.demo:SnowCover", product_id=product_id, tile_id="T32TLR")
    return store.insert_jobs([job]).inserted_ids[0]


def drive(store: JobStore, job_id: int, path: tuple[str, ...], pause: float = 0.0) -> None:
    current = store.get_job(job_id, touch=False).status
    for status in path:
        time.sleep(pause)
        store.transition(job_id, status, expected_from=current)
        current = status


def test_wait_exits_0_for_a_done_job_and_1_for_a_cancelled_one(
    cli: Cli, pg_store: JobStore
) -> None:
    done, cancelled = new_job(pg_store, "DONE"), new_job(pg_store, "CANCELLED")
    drive(pg_store, done, HAPPY_PATH)
    drive(pg_store, cancelled, ("cancelled",))
    assert cli("jobs", "wait", str(done))[0] == 0
    code, out, _ = cli("jobs", "wait", str(cancelled), "--json")
    assert code == 1
    body = json.loads(out)
    assert (body["job"]["status"], body["terminal"], body["timed_out"]) == (
        "cancelled",
        True,
        False,
    )


def test_wait_blocks_until_another_thread_finishes_the_job(cli: Cli, pg_store: JobStore) -> None:
    job_id = new_job(pg_store)
    worker = threading.Thread(target=drive, args=(pg_store, job_id, HAPPY_PATH, 0.02))
    worker.start()
    code, out, _ = cli("jobs", "wait", str(job_id), "--timeout", "30")
    worker.join(10)
    assert code == 0
    assert "done" in out


def test_wait_exits_3_on_timeout(cli: Cli, pg_store: JobStore) -> None:
    job_id = new_job(pg_store)
    code, out, err = cli("jobs", "wait", str(job_id), "--timeout", "0.2", "--json")
    assert code == 3
    assert json.loads(out)["timed_out"] is True
    assert f"job {job_id} is still initialized" in err


def test_json_outputs_parse(cli: Cli, pg_store: JobStore) -> None:
    job_id = new_job(pg_store)
    drive(pg_store, job_id, ("configured",))
    pg_store.set_metadata(job_id, "configure", Configuration(ready=False, reason="older tile"))

    listed = json.loads(cli("jobs", "list", "--json")[1])
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    shown = json.loads(cli("jobs", "show", str(job_id), "--json")[1])
    assert (shown["status"], shown["tile_id"]) == ("configured", "T32TLR")
    history = json.loads(cli("jobs", "history", str(job_id), "--json")[1])
    assert [h["to_status"] for h in history] == ["initialized", "configured"]
    documents = json.loads(cli("jobs", "metadata", str(job_id), "--json")[1])
    assert documents[0]["document"]["reason"] == "older tile"
    one = json.loads(cli("jobs", "metadata", str(job_id), "configure", "--json")[1])
    assert one["model"] == "jobtypes.base.Configuration"


def test_tables_for_people(cli: Cli, pg_store: JobStore) -> None:
    job_id = new_job(pg_store, "S2A_PRODUCT")
    code, out, _ = cli("jobs", "list", "--phase", "queued")
    assert code == 0
    assert "S2A_PRODUCT" in out and "initialized" in out
    assert "S2A_PRODUCT" not in cli("jobs", "list", "--status", "done")[1]
    assert "product_id" in cli("jobs", "show", str(job_id))[1]


def test_retry_and_cancel(cli: Cli, pg_store: JobStore) -> None:
    job_id = new_job(pg_store)
    drive(pg_store, job_id, ("configured", "ready", "queued", "internal_error"))
    code, out, _ = cli("jobs", "retry", str(job_id), "--json")
    assert (code, json.loads(out)["status"]) == (0, "ready")
    code, out, _ = cli("jobs", "cancel", str(job_id), "--message", "not needed")
    assert code == 0 and "cancelled" in out
    assert pg_store.history(job_id)[-1].message == "not needed"
    code, _, err = cli("jobs", "retry", str(job_id))
    assert code == 2 and "only a failed job" in err


def test_not_found_and_usage_errors_exit_2(cli: Cli, pg_store: JobStore) -> None:
    code, out, err = cli("jobs", "show", "424242", "--json")
    assert (code, out) == (2, "")
    assert "job 424242 does not exist" in err
    assert cli("jobs", "list", "--phase", "sleeping")[0] == 2
    assert cli("jobs", "wait", "not-a-number")[0] == 2


def test_the_installed_command_exits_2_for_an_unknown_job(pg_settings: Settings) -> None:
    env = {**os.environ, "JOBLINE_DATABASE_URL": pg_settings.database_url}
    result = subprocess.run(
        ["jobline", "jobs", "wait", "424242", "--timeout", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert "job 424242 does not exist" in result.stderr
