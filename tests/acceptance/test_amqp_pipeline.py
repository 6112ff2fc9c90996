"""Publication to the real RabbitMQ from the pipeline, with the broker unreachable at first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from db import outbox
from db.store import JobStore
from jobline.settings import Settings
from tests.acceptance.test_lifecycle import HAPPY_PATH, jobs_by_product, statuses
from tests.integration.test_amqp import BROKER_URL, Broker, free_port
from tests.integration.test_amqp import broker as broker  # the fixture
from tests.support.jobtypes import write_partner_module, write_products


@pytest.mark.slow
def test_jobs_wait_for_the_broker_then_publish_once(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    broker: Broker,
    tmp_path: Path,
) -> None:
    from flows.pipeline import run_pipeline
    from flows.process import process_jobs

    inputs = tmp_path / "input"
    job_type = write_partner_module(tmp_path / "src", inputs, tmp_path / "output")
    write_products(inputs, ["ok-1", "ok-2", "ok-3"])
    on_broker = pg_settings.model_copy(
        update={"amqp_exchange": broker.exchange, "amqp_routing_key": broker.routing_key}
    )
    wrong_port = BROKER_URL.replace(":5672/", f":{free_port()}/")
    settings = jobline_env(on_broker.model_copy(update={"publication_sink": wrong_port}))

    run_pipeline(job_type=job_type)

    store = JobStore.from_settings(settings)
    jobs = jobs_by_product(store, job_type)
    assert {job.status for job in jobs.values()} == {"start_publication"}
    assert broker.drain() == []

    jobline_env(on_broker.model_copy(update={"publication_sink": BROKER_URL}))
    process_jobs(job_type=job_type)
    process_jobs(job_type=job_type)  # a second sender finds nothing left to send

    received = broker.drain()
    expected = {
        row.message_id: row.product_id
        for job in jobs.values()
        for row in outbox.publications_of(store, job.id)
    }
    assert sorted(p.message_id for p, _ in received) == sorted(expected), "each exactly once"
    for properties, body in received:
        assert json.loads(body)["id"] == expected[properties.message_id]
        assert properties.delivery_mode == 2
    for job in jobs_by_product(store, job_type).values():
        assert job.status == "done"
        assert statuses(store, job.id)[-3:] == HAPPY_PATH[-3:]
