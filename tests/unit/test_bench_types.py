"""The benchmarks' flow run processes can load the benchmark job types (the registry refuses a
job type that settings do not register: the concurrency benchmark once failed at its first job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.types import JOB_TYPES, Noop, Sleeper, child_env
from jobline.exceptions import JobTypeError
from jobline.settings import Settings
from jobtypes.base import load_job_type


def test_a_benchmark_flow_run_loads_every_benchmark_job_type(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = child_env(
        f"sqlite:///{tmp_path / 'bench.db'}", tmp_path / "data", "http://127.0.0.1:9/api"
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()

    loaded = [type(load_job_type(path, settings)) for path in JOB_TYPES]

    assert loaded == [Noop, Sleeper]
    assert settings.data_dir == tmp_path / "data"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:9/api"


def test_without_the_benchmark_environment_the_registry_refuses_them(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", job_types=[])
    with pytest.raises(JobTypeError, match="not a registered job type"):
        load_job_type(JOB_TYPES[1], settings)
