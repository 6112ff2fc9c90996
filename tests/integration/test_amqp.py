"""Publication through the real RabbitMQ on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from db import outbox
from db.statuses import Status
from db.store import JobStore
from jobline.settings import Settings
from tasks.publication import AmqpSink, deliver_pending, sink_for
from tests.conftest import missing_service
from tests.integration.test_outbox import messages, processed_job

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
BROKER_URL = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/%2F"


@dataclass
class Broker:
    """A fresh exchange and a queue bound to it, on the real broker."""

    channel: Any
    exchange: str
    routing_key: str
    queue: str

    def drain(self) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message waiting on the queue."""
        received = []
        while True:
            method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
            if method is None:
                return received
            received.append((properties, body))


@pytest.fixture
def broker() -> Iterator[Broker]:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            pass
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    except (OSError, pika.exceptions.AMQPError) as error:
        missing_service(f"RabbitMQ at {BROKER_HOST}:{BROKER_PORT} is not reachable: {error}")
    channel = connection.channel()
    suffix = uuid.uuid4().hex[:10]
    exchange, routing_key = f"jobline.test.{suffix}", "product.published"
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(f"jobline.test.{suffix}", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="product.*")
    yield Broker(channel, exchange, routing_key, queue)
    channel.exchange_delete(exchange)
    connection.close()


def settings_for(broker: Broker, tmp_path: Any, url: str = BROKER_URL) -> Settings:
    return Settings(
        data_dir=tmp_path,
        publication_sink=url,
        amqp_exchange=broker.exchange,
        amqp_routing_key=broker.routing_key,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_each_message_arrives_once_with_its_id(
    broker: Broker, store: JobStore, tmp_path: Any
) -> None:
    settings = settings_for(broker, tmp_path)
    jobs = [processed_job(store, f"P{n}") for n in range(3)]
    for n, job_id in enumerate(jobs):
        outbox.start_publication(store, job_id, messages(f"P{n}"))
    expected = {r.message_id: r.body for j in jobs for r in outbox.publications_of(store, j)}

    with sink_for(settings.resolved_publication_sink, settings) as sink:
        report = deliver_pending(store, sink)

    assert (report.sent, report.failed, sorted(report.finished_jobs)) == (6, 0, jobs)
    received = broker.drain()
    assert sorted(p.message_id for p, _ in received) == sorted(expected)
    for properties, body in received:
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert json.loads(body) == expected[properties.message_id]
    assert all(store.get_job(j).status == Status.DONE for j in jobs)


def test_a_broker_that_is_down_leaves_rows_pending_then_they_go_out_once(
    broker: Broker, store: JobStore, tmp_path: Any
) -> None:
    job_id = processed_job(store)
    outbox.start_publication(store, job_id, messages("P1", 3))
    wrong = settings_for(broker, tmp_path, f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")

    started = time.monotonic()
    with sink_for(wrong.resolved_publication_sink, wrong) as sink:
        report = deliver_pending(store, sink)
    assert time.monotonic() - started < 10, "a broker that is down must fail fast"

    assert (report.sent, report.failed, report.skipped) == (0, 1, 2)
    assert "cannot publish to 127.0.0.1" in report.errors[0]
    assert "guest:guest" not in report.errors[0]
    assert {r.status for r in outbox.publications_of(store, job_id)} == {"pending"}
    assert store.get_job(job_id).status == Status.START_PUBLICATION
    assert broker.drain() == []

    right = settings_for(broker, tmp_path)
    with sink_for(right.resolved_publication_sink, right) as sink:
        report = deliver_pending(store, sink)
        assert deliver_pending(store, sink).sent == 0

    assert (report.sent, report.failed, report.finished_jobs) == (3, 0, [job_id])
    received = broker.drain()
    assert len(received) == 3 and len({p.message_id for p, _ in received}) == 3
    assert store.get_job(job_id).status == Status.DONE


def test_a_message_no_queue_receives_stays_pending(
    broker: Broker, store: JobStore, tmp_path: Any
) -> None:
    job_id = processed_job(store)
    outbox.start_publication(store, job_id, messages("P1", 1))
    sink = AmqpSink(BROKER_URL, broker.exchange, "nobody.listens")

    with sink:
        report = deliver_pending(store, sink)

    assert (report.sent, report.failed) == (0, 1)
    assert "no queue is bound" in report.errors[0]
    (row,) = outbox.publications_of(store, job_id)
    assert row.status == "pending" and "no queue is bound" in (row.last_error or "")
