"""``python -m bench`` runs as the README says and writes its table as JSON. Nothing is timed
here: whether a target passes depends on the machine, so only the run's shape is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_SERVER_URL

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]


def run_bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_quick_run_prints_the_table_and_writes_the_json(
    pg_database_url: str, tmp_path: Path
) -> None:
    """The database benchmarks at their quick sizes on the test server (``pg_database_url`` only
    makes sure it answers; the suite makes and drops its own scratch database)."""
    output = tmp_path / "latest.json"
    env = {**os.environ, "JOBLINE_DATABASE_URL": PG_SERVER_URL}
    chosen = ("insert", "lifecycle", "query")
    done = run_bench(
        "--quick", *(f"--only={name}" for name in chosen), f"--output={output}", env=env
    )

    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a target missed on this machine
    document = json.loads(output.read_text())
    assert document["mode"] == "quick"
    names = [result["name"] for result in document["results"]]
    assert {"insert", "re-insert", "lifecycle", "transition latency p99"} <= set(names)
    assert {"query: counts by type x status", "query: first page of a status"} <= set(names)
    for result in document["results"]:
        assert result["value"] > 0, result
        assert result["name"] in done.stdout
    assert document["all_passed"] == (done.returncode == 0)
    machine = document["machine"]
    assert machine["cores"] == os.cpu_count()
    assert {"postgresql", "prefect", "python"} <= set(machine)


def test_a_database_url_that_is_not_postgresql_is_refused_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "JOBLINE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    done = run_bench("--quick", f"--output={tmp_path / 'out.json'}", env=env)
    assert done.returncode == 2
    assert "JOBLINE_DATABASE_URL" in done.stderr
    assert not (tmp_path / "out.json").exists()
