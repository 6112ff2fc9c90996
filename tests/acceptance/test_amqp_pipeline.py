"""Publication to the real RabbitMQ from the pipeline, with the broker unreachable at first."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
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


@pytest.fixture
def fresh_names() -> Iterator[tuple[str, str]]:
    """An exchange and a queue nobody declared yet; deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    exchange, queue = f"jobline.test.fresh.{suffix}", f"jobline.test.consumer.{suffix}"
    yield exchange, queue
    try:
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    except pika.exceptions.AMQPError:
        return
    channel = connection.channel()
    channel.queue_delete(queue)
    channel.exchange_delete(exchange)
    connection.close()


@pytest.mark.slow
def test_a_consumer_binds_before_the_first_run_and_gets_its_first_message(
    pg_settings: Settings,
    prefect_api_url: str,
    jobline_env: Callable[[Settings], Settings],
    broker: Broker,  # only checks that the broker answers
    fresh_names: tuple[str, str],
    tmp_path: Path,
) -> None:
    """~10 s. The exchange does not exist before: bind_queue declares it and the queue."""
    from typer.testing import CliRunner

    from cli.main import app
    from flows.pipeline import run_pipeline
    from tasks.publication import bind_queue, declare_exchange

    exchange, queue = fresh_names
    settings = jobline_env(
        pg_settings.model_copy(update={"publication_sink": BROKER_URL, "amqp_exchange": exchange})
    )
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    probe = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
        probe.exchange_declare(exchange, passive=True)

    declare_exchange(settings)
    binding = bind_queue(settings, queue)
    again = CliRunner().invoke(app, ["amqp", "bind", queue])  # what the README shows
    assert again.exit_code == 0, again.output
    assert f"queue {queue} bound to exchange {exchange}" in " ".join(again.output.split())
    assert (binding.exchange, binding.binding_key, binding.messages_waiting) == (
        exchange, "product.published", 0,
    )  # fmt: skip
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True, passive=True)

    inputs = tmp_path / "input"
    job_type = write_partner_module(tmp_path / "src", inputs, tmp_path / "output")
    write_products(inputs, ["ok-1"])
    run_pipeline(job_type=job_type)

    method, properties, body = channel.basic_get(queue, auto_ack=True)
    connection.close()
    assert method is not None, "the first message of the run reached the consumer's queue"
    store = JobStore.from_settings(settings)
    job = jobs_by_product(store, job_type)["ok-1"]
    assert job.status == "done"
    [row] = outbox.publications_of(store, job.id)
    assert properties.message_id == row.message_id
    assert json.loads(body)["properties"]["input_product_id"] == "ok-1"


def test_amqp_commands_refuse_a_file_sink_and_bad_queue_names(
    sqlite_settings: Settings, jobline_env: Callable[[Settings], Settings]
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    jobline_env(sqlite_settings)
    runner = CliRunner()
    not_amqp = runner.invoke(app, ["amqp", "declare"])
    assert not_amqp.exit_code == 2 and "not an amqp:// URL" in not_amqp.output
    reserved = runner.invoke(app, ["amqp", "bind", "amq.mine"])
    assert reserved.exit_code == 2 and "reserved" in reserved.output
