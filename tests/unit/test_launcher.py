"""The launcher's settings and planning, without services: flavor pools from the environment,
escalation steps, and one flow run per job on its flavor's pool."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from db.launcher import Candidate, LaunchedJob, Limits, TypePolicy, choose, escalated
from jobline.settings import DEFAULT_POOL, Settings
from tasks.launcher import PROCESS_JOB, plan

DEMO = "jobtypes.demo:SnowCover"


def test_flavor_pools_come_from_json_and_default_to_jobline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "JOBLINE_FLAVOR_POOLS",
        '{"large": {"pool": "jobline-large", "queue": "q", "job_variables": {"mem_limit": "8g"}}}',
    )
    settings = Settings()
    large = settings.pool_for("large")
    assert (large.pool, large.queue, large.job_variables) == (
        "jobline-large",
        "q",
        {"mem_limit": "8g"},
    )
    assert settings.pool_for("small").pool == DEFAULT_POOL


def test_bad_launcher_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match="launcher_escalation_seconds"):
        Settings(launcher_escalation_seconds={"ten minutes": 10})
    with pytest.raises(ValidationError, match="flavor_pools"):
        Settings(flavor_pools={"large": {"pool": ""}})
    with pytest.raises(ValidationError, match="launcher_max_running_weight"):
        Settings(launcher_max_running_weight=0)


def test_escalation_takes_the_largest_step_reached() -> None:
    steps = Settings().escalation_steps()
    assert steps == [(600.0, 10.0), (3600.0, 20.0)]
    assert escalated(0, timedelta(minutes=9), steps) == 0
    assert escalated(0, timedelta(minutes=59), steps) == 10
    assert escalated(0, timedelta(hours=1), steps) == 20


def test_choose_skips_a_heavy_job_that_does_not_fit_and_takes_a_light_one() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    ranked = [
        Candidate(1, "heavy", 0, 0, now, False),
        Candidate(2, "light", 0, 0, now, False),
    ]
    policies = {"heavy": TypePolicy("heavy", weight=5), "light": TypePolicy("light")}
    chosen = choose(ranked, policies, Limits(max_running_weight=4, max_launches=10), {})
    assert [c.job_id for c in chosen] == [2]


def test_plan_makes_one_process_job_run_per_job_on_its_flavor_pool() -> None:
    settings = Settings(flavor_pools={"extra_small": {"pool": "jobline-small"}})
    jobs = [
        LaunchedJob(7, DEMO, "S2A_X", "T32TLR", "t:7"),
        LaunchedJob(8, DEMO, "S2B_Y", None, "t:8"),
    ]
    first, second = plan(jobs, settings)
    assert (first.deployment, first.pool.pool, first.parameters) == (
        PROCESS_JOB,
        "jobline-small",
        {"job_id": 7},
    )
    assert first.name == "job 7 S2A_X"
    assert first.tags == ["job_type:snow_cover", "flavor:extra_small", "tile:T32TLR"]
    assert second.tags == ["job_type:snow_cover", "flavor:extra_small"]
