"""The publication outbox (db.outbox) and its sender (tasks.publication), on both backends."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db import outbox
from db.records import NewJob
from db.statuses import Status
from db.store import JobStore
from jobline.exceptions import (
    ConfigurationError,
    PublicationError,
    SinkUnavailable,
    StaleTransition,
)
from jobline.settings import Settings
from tasks.publication import AmqpSink, FileSink, Sink, deliver_pending, sink_for

#: The legal path of a job from insertion to ``processed`` (REFERENCE.md).
TO_PROCESSED = [
    ("queued", "started"),
    ("started", "pre_processing"),
    ("pre_processing", "processing"),
    ("processing", "post_processing"),
    ("post_processing", "processed"),
]


def processed_job(store: JobStore, product_id: str = "P1", queue: str = "outbox") -> int:
    """Insert a job and walk it through the legal transitions to ``processed``."""
    (job_id,) = store.insert_jobs(
        [NewJob(job_type="tests:Outbox", product_id=product_id, queue=queue)]
    ).inserted_ids
    walk_to_processed(store, job_id, queue)
    return job_id


def walk_to_processed(store: JobStore, job_id: int, queue: str = "outbox") -> None:
    """An ``initialized`` job through the legal transitions to ``processed``."""
    store.transition(job_id, Status.CONFIGURED, expected_from=Status.INITIALIZED)
    store.transition(job_id, Status.READY, expected_from=Status.CONFIGURED)
    (claimed,) = store.claim(queue, 1, "test-worker")
    for origin, target in TO_PROCESSED:
        store.transition(job_id, target, expected_from=origin, lease_token=claimed.lease_token)


def messages(job: str, count: int = 2) -> list[tuple[str, dict[str, Any]]]:
    return [(f"FSC_{job}_{n}", {"id": f"FSC_{job}_{n}", "n": n}) for n in range(count)]


class RecordingSink(Sink):
    """Keeps what it was sent; fails the messages whose product id is in ``refuse``."""

    def __init__(self, refuse: set[str] = frozenset(), unavailable: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse
        self.unavailable = unavailable
        self._lock = threading.Lock()

    def send(self, message_id: str, body: dict[str, Any]) -> None:
        if self.unavailable:
            raise SinkUnavailable("broker down")
        if body["id"] in self.refuse:
            raise PublicationError(f"refused {body['id']}")
        with self._lock:
            self.sent.append((message_id, body))


# -------------------------------------------------------------------------- start_publication


def test_start_publication_queues_rows_and_moves_the_job_in_one_go(store: JobStore) -> None:
    job_id = processed_job(store)
    job = store.get_job(job_id)

    ids = outbox.start_publication(store, job_id, messages("P1"))

    assert ids == [outbox.message_id_for(job.job_key, f"FSC_P1_{n}") for n in range(2)]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert store.get_job(job_id).status == Status.START_PUBLICATION
    rows = outbox.publications_of(store, job_id)
    assert [(r.product_id, r.message_id, r.status, r.attempts) for r in rows] == [
        (f"FSC_P1_{n}", ids[n], "pending", 0) for n in range(2)
    ]
    assert rows[0].body == {"id": "FSC_P1_0", "n": 0}


def test_start_publication_is_idempotent(store: JobStore) -> None:
    job_id = processed_job(store)
    first = outbox.start_publication(store, job_id, messages("P1"))

    again = outbox.start_publication(store, job_id, messages("P1") + messages("P1"))

    assert again == first
    assert len(outbox.publications_of(store, job_id)) == 2
    history = [c.to_status for c in store.history(job_id)]
    assert history.count("start_publication") == 1


def test_start_publication_from_a_wrong_status_writes_nothing(store: JobStore) -> None:
    (job_id,) = store.insert_jobs([NewJob(job_type="tests:Outbox", product_id="P")]).inserted_ids

    with pytest.raises(StaleTransition, match="initialized"):
        outbox.start_publication(store, job_id, messages("P"))

    assert outbox.publications_of(store, job_id) == []
    assert store.get_job(job_id).status == Status.INITIALIZED


def test_a_job_run_again_after_it_expired_publishes_new_messages(store: JobStore) -> None:
    """Each run's products are new messages for consumers that dedupe on the id; the first run
    keeps the ids of (job key, product id)."""
    job_id = processed_job(store, "again")
    key = store.get_job(job_id).job_key
    sink = RecordingSink()
    runs: list[list[str]] = []
    for run in range(3):
        if run:
            store.transition(job_id, Status.EXPIRED, expected_from=Status.DONE)
            revived = store.insert_jobs([NewJob("tests:Outbox", "again", queue="outbox")])
            assert revived.inserted_ids == [job_id]
            walk_to_processed(store, job_id)
        runs.append(outbox.start_publication(store, job_id, messages("again")))
        assert deliver_pending(store, sink).finished_jobs == [job_id]
        assert store.get_job(job_id).status == Status.DONE

    assert runs[0] == [outbox.message_id_for(key, f"FSC_again_{n}") for n in range(2)]
    assert runs[2] == [outbox.message_id_for(key, f"FSC_again_{n}", 2) for n in range(2)]
    assert len({message_id for ids in runs for message_id in ids}) == 6
    assert [message_id for message_id, _ in sink.sent] == [i for ids in runs for i in ids]
    assert all(row.status == "sent" for row in outbox.publications_of(store, job_id))


# ------------------------------------------------------------------------- claims and marks


def test_claimed_rows_are_not_claimed_twice_until_the_lease_expires(store: JobStore) -> None:
    now = [datetime(2026, 1, 10, tzinfo=UTC)]
    clocked = JobStore(store.engine, clock=lambda: now[0])
    job_id = processed_job(clocked)
    outbox.start_publication(clocked, job_id, messages("P1", 3))

    first = outbox.pending(clocked, 2, lease=timedelta(seconds=60))
    second = outbox.pending(clocked, 10, lease=timedelta(seconds=60))
    assert [r.product_id for r in first] == ["FSC_P1_0", "FSC_P1_1"]
    assert [r.product_id for r in second] == ["FSC_P1_2"]
    assert outbox.pending(clocked, 10) == []

    now[0] += timedelta(seconds=61)  # the first sender died: its rows are free again
    assert [r.id for r in outbox.pending(clocked, 10)] == [r.id for r in first + second]


def test_finish_published_waits_for_every_row(store: JobStore) -> None:
    job_id = processed_job(store)
    outbox.start_publication(store, job_id, messages("P1"))
    first, second = outbox.pending(store, 10)

    assert outbox.mark_sent(store, [first.id]) == 1
    assert outbox.finish_published(store, job_id) is False
    assert store.get_job(job_id).status == Status.START_PUBLICATION

    outbox.mark_failed(store, second.id, "broker said no")
    (retry,) = outbox.pending(store, 10)
    assert (retry.id, retry.attempts, retry.last_error) == (second.id, 1, "broker said no")
    outbox.mark_sent(store, [retry.id])
    assert outbox.mark_sent(store, [retry.id]) == 0  # already sent

    assert outbox.finish_published(store, job_id) is True
    job = store.get_job(job_id)
    assert job.status == Status.DONE and job.output_publication_date is not None
    assert [c.to_status for c in store.history(job_id)][-3:] == [
        "start_publication",
        "published",
        "done",
    ]
    # Safe to call again: the job's publication is finished.
    assert outbox.finish_published(store, job_id) is True
    rows = outbox.publications_of(store, job_id)
    assert all(r.status == "sent" and r.sent_at is not None for r in rows)
    assert [r.attempts for r in rows] == [1, 2]


# ---------------------------------------------------------------------------- the sender


def test_deliver_pending_to_a_file_sink(store: JobStore, tmp_path: Path) -> None:
    jobs = [processed_job(store, f"P{n}") for n in range(3)]
    for n, job_id in enumerate(jobs):
        outbox.start_publication(store, job_id, messages(f"P{n}"))
    sink_file = tmp_path / "pub" / "publications.jsonl"

    report = deliver_pending(store, FileSink(sink_file))

    assert (report.sent, report.failed, report.skipped) == (6, 0, 0)
    assert sorted(report.finished_jobs) == jobs
    lines = [json.loads(line) for line in sink_file.read_text().splitlines()]
    assert sorted(line["message_id"] for line in lines) == sorted(
        r.message_id for job_id in jobs for r in outbox.publications_of(store, job_id)
    )
    assert {line["body"]["id"] for line in lines} == {
        f"FSC_P{j}_{n}" for j in range(3) for n in (0, 1)
    }
    assert all(store.get_job(j).status == Status.DONE for j in jobs)
    assert deliver_pending(store, FileSink(sink_file)).sent == 0


def test_a_refused_message_stays_pending_and_goes_out_later(store: JobStore) -> None:
    job_id = processed_job(store)
    outbox.start_publication(store, job_id, messages("P1", 3))

    report = deliver_pending(store, RecordingSink(refuse={"FSC_P1_1"}), job_id=job_id)

    assert (report.sent, report.failed) == (2, 1)
    assert "refused FSC_P1_1" in report.errors[0]
    assert store.get_job(job_id).status == Status.START_PUBLICATION
    later = RecordingSink()
    report = deliver_pending(store, later, job_id=job_id)
    assert (report.sent, report.failed, report.finished_jobs) == (1, 0, [job_id])
    assert [body["id"] for _, body in later.sent] == ["FSC_P1_1"]
    assert store.get_job(job_id).status == Status.DONE


def test_an_unavailable_sink_stops_the_batch_and_gives_rows_back(store: JobStore) -> None:
    job_id = processed_job(store)
    outbox.start_publication(store, job_id, messages("P1", 4))

    report = deliver_pending(store, RecordingSink(unavailable=True))

    assert (report.sent, report.failed, report.skipped) == (0, 1, 3)
    rows = outbox.publications_of(store, job_id)
    assert [r.attempts for r in rows] == [1, 0, 0, 0]
    assert all(r.status == "pending" and r.lease_expires_at is None for r in rows)
    assert deliver_pending(store, RecordingSink()).sent == 4


def test_the_sender_finishes_jobs_left_behind_by_a_crash(store: JobStore) -> None:
    job_id = processed_job(store, "P1")
    empty = processed_job(store, "P2")
    outbox.start_publication(store, job_id, messages("P1"))
    outbox.start_publication(store, empty, [])
    # A sender confirmed and marked every row, then died before finish_published.
    outbox.mark_sent(store, [r.id for r in outbox.pending(store, 10)])

    report = deliver_pending(store, RecordingSink())

    assert report.sent == 0 and sorted(report.finished_jobs) == [job_id, empty]
    assert store.get_job(job_id).status == store.get_job(empty).status == Status.DONE


def test_concurrent_senders_send_each_message_once(store: JobStore) -> None:
    jobs = [processed_job(store, f"P{n}") for n in range(10)]
    for n, job_id in enumerate(jobs):
        outbox.start_publication(store, job_id, messages(f"P{n}", 10))
    sink = RecordingSink()
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            while deliver_pending(store, sink, limit=7).sent:
                pass
        except Exception as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    counts = Counter(message_id for message_id, _ in sink.sent)
    assert len(counts) == 100 and set(counts.values()) == {1}
    assert all(store.get_job(j).status == Status.DONE for j in jobs)


# ---------------------------------------------------------------------------------- sinks


def test_sink_for_names_the_sink(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, amqp_exchange="ex", amqp_routing_key="rk")
    file_sink = sink_for(settings.resolved_publication_sink, settings)
    assert isinstance(file_sink, FileSink)
    assert file_sink.path == tmp_path / "publications.jsonl"
    amqp = sink_for("amqp://guest:guest@127.0.0.1:5672/%2F", settings)
    assert isinstance(amqp, AmqpSink)
    assert (amqp.exchange, amqp.routing_key) == ("ex", "rk")
    with pytest.raises(ConfigurationError, match="kafka://broker"):
        sink_for("kafka://broker", settings)


def test_an_unwritable_file_sink_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(SinkUnavailable, match="cannot append"):
        FileSink(tmp_path / "taken" / "publications.jsonl").send("m1", {"id": "x"})
