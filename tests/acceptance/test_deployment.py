"""The Prefect deployments of prefect.yaml, deployed and run by a real worker on the pool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from db.store import JobStore
from jobline.settings import Settings
from jobtypes.demo import SnowCover, write_sample_products
from tests.acceptance.test_lifecycle import HAPPY_PATH

REPO = Path(__file__).resolve().parents[2]


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_deploy_all_and_worker_runs_the_pipeline(
    tmp_path: Path, pg_settings: Settings, prefect_api_url: str
) -> None:
    data_dir = tmp_path / "worker-data"
    settings = pg_settings.model_copy(update={"data_dir": data_dir, "runner": "local"})
    write_sample_products(Path(SnowCover(settings).input_url.removeprefix("file://")), count=2)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JOBLINE_")},
        "PREFECT_API_URL": prefect_api_url,
        "JOBLINE_DATABASE_URL": settings.resolved_database_url,
        "JOBLINE_DATA_DIR": str(data_dir),
        "JOBLINE_RUNNER": "local",
        "PWD": str(REPO),
    }
    prefect(env, "work-pool", "create", "jobline", "--type", "process", "--overwrite")
    deployed = prefect(env, "deploy", "--all")
    for name in ("run-pipeline/snow-cover", "process-job/process-job", "discover-jobs/discover"):
        assert name in deployed

    started = prefect(env, "deployment", "run", "run-pipeline/snow-cover")
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
    assert flow_run_id, started
    prefect(env, "worker", "start", "--pool", "jobline", "--run-once", timeout=600)

    state = prefect(env, "flow-run", "inspect", flow_run_id.group(1))
    assert "COMPLETED" in state.upper(), state[-2000:]
    store = JobStore.from_settings(settings)
    jobs = store.list_jobs().jobs
    assert len(jobs) == 2
    for job in jobs:
        history = store.history(job.id)
        assert [c.to_status for c in history] == HAPPY_PATH
        assert {c.flow_run_id for c in history} == {flow_run_id.group(1)}
