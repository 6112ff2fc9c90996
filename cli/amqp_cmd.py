"""``jobline amqp declare|bind``: set up the broker for consumers before jobline first publishes.

jobline publishes to one durable topic exchange (``JOBLINE_AMQP_EXCHANGE``) with one routing key
(``JOBLINE_AMQP_ROUTING_KEY``), and declares the exchange itself whenever it connects; these
commands let a consumer create it, and a bound queue, before the first run, so no message is
returned for lack of a queue. The broker is the one ``JOBLINE_PUBLICATION_SINK`` names. Exit
codes: 0 done, 2 bad input or the sink is not AMQP, 4 the broker could not be reached or refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from jobline.exceptions import ConfigurationError, PublicationError
from jobline.settings import get_settings
from tasks.publication import EXCHANGE_TYPE, bind_queue, declare_exchange

amqp_app = typer.Typer(
    no_args_is_help=True, help="Declare jobline's exchange and bind queues on the AMQP broker."
)
console = Console()
errors = Console(stderr=True)
EXIT_USAGE, EXIT_BROKER = 2, 4
T = TypeVar("T")


def _queue_name(value: str) -> str:
    if not 1 <= len(value.encode()) <= 255 or not value.isprintable():
        raise typer.BadParameter("a queue name has 1 to 255 printable characters")
    if value.startswith("amq."):
        raise typer.BadParameter("names starting with 'amq.' are reserved by the broker")
    return value


@amqp_app.command("declare")
def declare() -> None:
    """Declare the publication exchange (durable, type topic); idempotent."""
    settings = get_settings()
    where = _on_broker(lambda: declare_exchange(settings))
    console.print(
        f"exchange [bold]{settings.amqp_exchange}[/] ({EXCHANGE_TYPE}, durable) on {where}; "
        f"jobline publishes with routing key {settings.amqp_routing_key!r}"
    )


@amqp_app.command("bind")
def bind(
    queue: Annotated[
        str, typer.Argument(help="The queue to declare and bind.", callback=_queue_name)
    ],
    binding_key: Annotated[
        str | None,
        typer.Option(help="Binding key (topic pattern); default: jobline's routing key."),
    ] = None,
    durable: Annotated[
        bool, typer.Option("--durable/--transient", help="Whether the queue survives restarts.")
    ] = True,
) -> None:
    """Declare the exchange and QUEUE and bind them, so QUEUE gets every publication message."""
    settings = get_settings()
    binding = _on_broker(lambda: bind_queue(settings, queue, binding_key, durable=durable))
    console.print(
        f"queue [bold]{binding.queue}[/] bound to exchange [bold]{binding.exchange}[/] with "
        f"{binding.binding_key!r} on {binding.broker} ({binding.messages_waiting} messages waiting)"
    )


def _on_broker(action: Callable[[], T]) -> T:
    """Run ``action``; a wrong setting or an unreachable broker ends the command with a code."""
    try:
        return action()
    except ConfigurationError as error:
        errors.print(f"[red]error:[/] {error}")
        raise typer.Exit(EXIT_USAGE) from None
    except PublicationError as error:
        errors.print(f"[red]error:[/] {error}")
        raise typer.Exit(EXIT_BROKER) from None
