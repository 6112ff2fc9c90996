"""Status notices delivered into the event loop: what long-polls and event streams await."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType

from db.notify import Notice, NoticeHub


class Wakeup:
    """An event set (from the hub's thread) whenever a matching notice arrives.

    Subscribe before reading the database, then :meth:`wait`: a change committed in between has
    already set the event, so nothing is missed.
    """

    def __init__(self, hub: NoticeHub, matches: Callable[[Notice], bool]) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._matches = matches
        self._unsubscribe = hub.subscribe(self._on_notice)

    def __enter__(self) -> Wakeup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._unsubscribe()

    def _on_notice(self, notice: Notice) -> None:
        if self._matches(notice):
            # The loop may be closing while the hub's thread still publishes.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """True when a matching notice arrived (now or since the last wait), False on timeout."""
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
        except TimeoutError:
            return False
        self._event.clear()
        return True
