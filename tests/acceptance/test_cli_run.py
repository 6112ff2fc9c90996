"""``jobline run`` as a script runs it: exit codes, ``--json`` on stdout, a table that fits 80
columns without cutting product ids."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from cli.pipeline_cmds import jobs_table
from db.records import NewJob
from db.store import JobStore
from jobline.settings import Settings
from tests.support.jobtypes import write_partner_module, write_products


def jobline_run(env: dict[str, str], job_type: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["jobline", "run", job_type, "--runner", "local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_exit_codes_for_all_done_nothing_to_do_and_some_failed(
    tmp_path: Path, pg_settings: Settings, prefect_api_url: str
) -> None:
    """~35 s: three runs of the real console script."""
    inputs, source = tmp_path / "input", tmp_path / "src"
    job_type = write_partner_module(source, inputs, tmp_path / "output")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")},
        "JOBLINE_DATABASE_URL": pg_settings.resolved_database_url,
        "JOBLINE_DATA_DIR": str(tmp_path / "data"),
        "JOBLINE_RETRY_BASE_SECONDS": "0",
        "PREFECT_API_URL": prefect_api_url,
        "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
    }
    write_products(inputs, ["ok-1", "flaky-1"])

    all_done = jobline_run(env, job_type, "--json")
    assert all_done.returncode == 0, all_done.stderr[-3000:]
    document = json.loads(all_done.stdout)
    summary = document["summary"]
    assert (summary["jobs"], summary["attempts"], summary["succeeded"]) == (2, 3, 2)
    assert sorted(job["product_id"] for job in document["jobs"]) == ["flaky-1", "ok-1"]
    assert "runner: local" in all_done.stderr, "messages for people go to stderr with --json"

    nothing = jobline_run(env, job_type)
    assert nothing.returncode == 0, nothing.stderr[-3000:]
    assert "processed 0 jobs in 0 attempts" in nothing.stdout

    write_products(inputs, ["broken-1", "retry-1", "ok-2"])
    some_failed = jobline_run(env, job_type)
    assert some_failed.returncode == 1, some_failed.stdout + some_failed.stderr[-3000:]
    assert "processed 3 jobs in 5 attempts: 1 done, 2 failed or cancelled" in some_failed.stdout
    assert "broken-1" in some_failed.stdout and "internal_error" in some_failed.stdout


def test_the_jobs_table_fits_80_columns_without_cutting_product_ids(
    sqlite_settings: Settings,
) -> None:
    store = JobStore.from_settings(sqlite_settings)
    products = [
        "S2A_MSIL1C_20260110T103421_N0510_R108_T32TLR_20260110T123456",
        "S2A_MSIL1C_20260110T103421_N0510_R108_T32TLR_20260110T123457",
    ]
    ids = store.insert_jobs(
        [
            NewJob("x:Y", p, tile_id="T32TLR", input_publication_date=datetime.now(UTC))
            for p in products
        ]
    ).inserted_ids
    store.transition(ids[1], "internal_error", expected_from="initialized", message="broken")
    console = Console(width=80, record=True, color_system=None)

    console.print(jobs_table(store, "x:Y"))

    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows: dict[str, list[str]] = {}
    current = None
    for line in lines:
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) < 8:
            continue  # a border
        if cells[1].isdigit():
            current = cells[1]
        if current is not None:
            rows.setdefault(current, []).append(cells[2])
    assert {job_id: "".join(parts) for job_id, parts in rows.items()} == {
        str(ids[0]): products[0],
        str(ids[1]): products[1],
    }
    assert "internal_error" in text and "initialized" in text, "statuses are never cut"
