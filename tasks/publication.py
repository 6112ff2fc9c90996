"""Publication sinks and the sender that drains the outbox (plain functions, no Prefect).

A sink delivers one message and returns only once the destination has it: :class:`FileSink`
appends a JSON line and syncs the file; :class:`AmqpSink` publishes a persistent message and
waits for the broker's confirm. :func:`deliver_pending` claims pending outbox rows
(:mod:`db.outbox`), sends each, marks it sent right after the sink confirmed it, and finishes the
jobs whose rows are all sent.

Delivery is at least once: a crash between the sink's confirmation and the row being marked sent
sends that message again later, with the same ``message_id``; consumers dedupe on it (a file
cannot dedupe cheaply, and neither can a broker).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import pika
import pika.exceptions

from db import outbox
from db.records import RunIds
from db.store import JobStore
from jobline.exceptions import ConfigurationError, PublicationError, SinkUnavailable
from jobline.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds to connect to, and wait on, a broker: a broker that is down must fail fast.
AMQP_TIMEOUT = 3.0
#: The type of jobline's exchange (declared durable): consumers bind with patterns such as
#: ``product.*`` or ``#``.
EXCHANGE_TYPE = "topic"


class Sink(ABC):
    """Where publication messages go. ``send`` returns once the destination has the message and
    raises :class:`PublicationError` (:class:`SinkUnavailable` when nothing can get through).
    A sink is a context manager that closes its connections on exit."""

    @abstractmethod
    def send(self, message_id: str, body: dict[str, Any]) -> None: ...

    def close(self) -> None:  # noqa: B027 - most sinks hold no connection
        """Release connections; the sink reconnects if used again."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class FileSink(Sink):
    """Appends one JSON line per message (``message_id``, ``sent_at``, ``body``) and syncs it.

    Several processes may append at once: each line is one ``write`` under an exclusive lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def send(self, message_id: str, body: dict[str, Any]) -> None:
        """Append the message; it is on disk when this returns."""
        record = {"message_id": message_id, "sent_at": datetime.now(UTC).isoformat(), "body": body}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as error:
            raise SinkUnavailable(
                f"cannot append to publication file {self.path}: {error}"
            ) from error


class AmqpSink(Sink):
    """Publishes to an AMQP 0-9-1 broker (RabbitMQ) with pika's blocking connection.

    Messages are persistent (``delivery_mode=2``), JSON, carry ``message_id``, and are published
    with publisher confirms and ``mandatory``: a message no queue receives is returned by the
    broker and reported as failed, so it stays pending until a queue is bound. The exchange is
    declared durable, type topic. Connecting is lazy, with short timeouts (:data:`AMQP_TIMEOUT`,
    unless the URL sets ``socket_timeout``/``stack_timeout``/``connection_attempts``).
    """

    def __init__(
        self, url: str, exchange: str, routing_key: str, *, mandatory: bool = True
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    @property
    def where(self) -> str:
        """The broker and exchange, without credentials, for messages."""
        parts = urlsplit(self.url)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        return f"{parts.hostname}:{port} exchange {self.exchange!r}"

    def send(self, message_id: str, body: dict[str, Any]) -> None:
        """Publish one message and wait for the broker's confirm."""
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message_id,
        )
        payload = json.dumps(body, separators=(",", ":"), default=str).encode()
        try:
            channel = self._open_channel()
            channel.basic_publish(
                self.exchange,
                self.routing_key,
                payload,
                properties=properties,
                mandatory=self.mandatory,
            )
        except pika.exceptions.UnroutableError:
            raise PublicationError(
                f"message {message_id} was returned by {self.where}: no queue is bound for "
                f"routing key {self.routing_key!r}"
            ) from None
        except pika.exceptions.NackError:
            raise PublicationError(
                f"message {message_id} was refused (nack) by {self.where}"
            ) from None
        except (pika.exceptions.AMQPError, OSError) as error:
            self.close()
            raise SinkUnavailable(
                f"cannot publish to {self.where}: {type(error).__name__}: {error}"
            ) from error

    def close(self) -> None:
        """Close the connection (the next send reconnects)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError) as error:
                logger.debug("closing the AMQP connection to %s: %s", self.where, error)

    def _open_channel(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = pika.BlockingConnection(self._parameters())
        channel = self._connection.channel()
        if self.exchange:
            declare_exchange_on(channel, self.exchange)
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _parameters(self) -> pika.URLParameters:
        return amqp_parameters(self.url)


def amqp_parameters(url: str) -> pika.URLParameters:
    """Connection parameters of an ``amqp://`` URL, with short timeouts unless it sets its own."""
    parameters = pika.URLParameters(url)
    given = parse_qs(urlsplit(url).query)
    if "socket_timeout" not in given:
        parameters.socket_timeout = AMQP_TIMEOUT
    if "stack_timeout" not in given:
        parameters.stack_timeout = 2 * AMQP_TIMEOUT
    if "connection_attempts" not in given:
        parameters.connection_attempts = 1
    if "blocked_connection_timeout" not in given:
        parameters.blocked_connection_timeout = 10 * AMQP_TIMEOUT
    return parameters


def declare_exchange_on(channel: Any, exchange: str) -> None:
    """Declare jobline's exchange: durable, of type :data:`EXCHANGE_TYPE` (idempotent)."""
    channel.exchange_declare(exchange, exchange_type=EXCHANGE_TYPE, durable=True)


@dataclass
class Binding:
    """What :func:`bind_queue` set up on the broker."""

    broker: str
    exchange: str
    queue: str
    binding_key: str
    messages_waiting: int


def declare_exchange(settings: Settings) -> str:
    """Declare the publication exchange on the broker of ``JOBLINE_PUBLICATION_SINK`` (so
    consumers can bind to it before jobline first publishes); returns where, for messages."""
    with _broker_channel(settings) as (where, channel):
        declare_exchange_on(channel, settings.amqp_exchange)
    return where


def bind_queue(
    settings: Settings, queue: str, binding_key: str | None = None, *, durable: bool = True
) -> Binding:
    """Declare the exchange and the queue ``queue`` (durable unless told), and bind the queue
    with ``binding_key`` (default: the routing key jobline publishes with). What a consumer runs
    once before the first run; running it again changes nothing."""
    key = binding_key if binding_key is not None else settings.amqp_routing_key
    with _broker_channel(settings) as (where, channel):
        declare_exchange_on(channel, settings.amqp_exchange)
        declared = channel.queue_declare(queue, durable=durable)
        channel.queue_bind(queue, settings.amqp_exchange, routing_key=key)
    return Binding(where, settings.amqp_exchange, queue, key, declared.method.message_count)


@contextmanager
def _broker_channel(settings: Settings) -> Iterator[tuple[str, Any]]:
    url = settings.resolved_publication_sink
    if urlsplit(url).scheme not in ("amqp", "amqps"):
        raise ConfigurationError(
            f"publication_sink {_without_password(url)!r} is not an amqp:// URL: "
            "set JOBLINE_PUBLICATION_SINK=amqp://user:pass@host:5672/%2F"
        )
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 5672}"
    try:
        connection = pika.BlockingConnection(amqp_parameters(url))
    except (pika.exceptions.AMQPError, OSError) as error:
        raise SinkUnavailable(f"cannot connect to the broker at {where}: {error!r}") from error
    try:
        yield where, connection.channel()
    except pika.exceptions.ChannelClosedByBroker as error:
        raise PublicationError(f"the broker at {where} refused: {error.reply_text}") from None
    finally:
        if connection.is_open:
            connection.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def sink_for(url: str, settings: Settings) -> Sink:
    """The sink a ``JOBLINE_PUBLICATION_SINK`` URL names: ``file://…`` or ``amqp(s)://…``."""
    scheme = urlsplit(url).scheme
    if scheme == "file":
        return FileSink(Path(unquote(urlsplit(url).path)))
    if scheme in ("amqp", "amqps"):
        return AmqpSink(url, settings.amqp_exchange, settings.amqp_routing_key)
    raise ConfigurationError(
        f"publication_sink {url!r}: use file:///path/publications.jsonl or amqp://user:pass@host/"
    )


@dataclass
class DeliveryReport:
    """What one :func:`deliver_pending` call did."""

    sent: int = 0
    failed: int = 0
    #: Claimed but not tried: the sink was unavailable, so they were given back.
    skipped: int = 0
    finished_jobs: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def deliver_pending(
    store: JobStore,
    sink: Sink,
    *,
    job_id: int | None = None,
    limit: int = 500,
    run: RunIds | None = None,
) -> DeliveryReport:
    """Send up to ``limit`` pending messages (only ``job_id``'s if given), oldest first.

    Each row is marked sent as soon as the sink confirmed it. A failed message stays pending
    with its error; when the sink is unavailable the rest of the batch is given back untried.
    Failures are reported, not raised. Then every job in ``start_publication`` with no pending
    row left is moved to ``done``.
    """
    report = DeliveryReport()
    rows = outbox.pending(store, limit, job_id)
    tried = 0
    try:
        for row in rows:
            tried += 1
            try:
                sink.send(row.message_id, row.body)
            except PublicationError as error:
                outbox.mark_failed(store, row.id, str(error))
                report.failed += 1
                report.errors.append(str(error))
                if isinstance(error, SinkUnavailable):
                    break
                continue
            outbox.mark_sent(store, [row.id])
            report.sent += 1
    finally:
        # Whatever stopped the loop, claimed rows not tried are free for the next sender now.
        untried = [row.id for row in rows[tried:]]
        outbox.release(store, untried)
        report.skipped = len(untried)
    for finished in outbox.publishing_jobs_without_pending(store, job_id):
        if outbox.finish_published(store, finished, run=run):
            report.finished_jobs.append(finished)
    if report.failed:
        logger.warning(
            "publication: %d sent, %d failed, %d left for later: %s",
            report.sent,
            report.failed,
            report.skipped,
            report.errors[0],
        )
    return report
