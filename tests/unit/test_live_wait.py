"""Waiting in the live feed stays cancellable: stopping a server's feed cannot hang.

On Python 3.11 ``asyncio.wait_for`` returns normally when a cancellation arrives in the same
loop iteration as its awaitable completes; a feed woken by a status notice while the server shut
down then ran on, and the server's shutdown (and a test's teardown) waited for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from api.live import _wait


async def outcome_of_a_cancel_as_the_event_is_set(
    wait: Callable[[asyncio.Event], Awaitable[object]],
) -> str:
    event = asyncio.Event()

    async def waiter() -> str:
        await wait(event)
        return "returned"

    task = asyncio.create_task(waiter())
    for _ in range(3):  # let the waiter reach its wait
        await asyncio.sleep(0)
    event.set()
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


def test_a_cancel_that_arrives_as_the_event_is_set_is_not_lost() -> None:
    assert asyncio.run(outcome_of_a_cancel_as_the_event_is_set(lambda e: _wait(e, 10))) == (
        "cancelled"
    )


@pytest.mark.parametrize(("set_it", "expected"), [(True, True), (False, False)])
def test_wait_says_whether_the_event_came_before_the_timeout(set_it: bool, expected: bool) -> None:
    async def scenario() -> bool:
        event = asyncio.Event()
        if set_it:
            asyncio.get_running_loop().call_later(0.01, event.set)
        return await _wait(event, 0.2)

    assert asyncio.run(scenario()) is expected
