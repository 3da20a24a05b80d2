"""Waiting on a condition with a deadline, instead of sleeping a fixed time.

How it works: `wait_until(predicate, timeout)` calls `predicate()` until it returns a
true value and returns that value. Between calls it sleeps a short, growing interval
(1 ms doubling up to `interval`, 50 ms by default), so a condition that holds soon is
seen within a millisecond or two and a slow one costs at most 20 calls a second. Once `timeout` seconds have passed
without success it raises AssertionError with `what` (a string, or a callable called
only then, e.g. ``lambda: relay.log``) and the last value or exception seen, so a
failing test says what it was waiting for.

`ignore` names exceptions that mean "not yet" (e.g. ConnectionRefusedError while a
server starts); any other exception from the predicate propagates at once.

`poll(predicate, timeout)` is the same wait without the AssertionError: it returns the
last value (false on timeout), for callers that must clean up before they assert.

`await wait_until_async(...)` is the same inside an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_PAUSE = 0.001


def _message(what: str | Callable[[], str], timeout: float, last: object) -> str:
    text = what() if callable(what) else what
    return f"not true within {timeout:g}s (last: {last!r})" + (f": {text}" if text else "")


def poll(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T | None:
    """Call `predicate` until it returns a true value or `timeout` passes; return the
    last value (None if the last call raised one of `ignore`)."""
    got, _ = _poll(predicate, timeout, interval, ignore)
    return got


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str] = "",
    *,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns a true value (returned) or `timeout` passes
    (AssertionError saying `what` and the last value or exception)."""
    got, exc = _poll(predicate, timeout, interval, ignore)
    if got:
        return got
    err = AssertionError(_message(what, timeout, exc if exc is not None else got))
    raise err from exc


def _poll(
    predicate: Callable[[], T | None],
    timeout: float,
    interval: float,
    ignore: tuple[type[BaseException], ...],
) -> tuple[T | None, BaseException | None]:
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        got: T | None = None
        exc: BaseException | None = None
        try:
            got = predicate()
        except ignore as e:
            exc = e
        if got:
            return got, None
        left = deadline - time.monotonic()
        if left <= 0:
            return got, exc
        time.sleep(min(pause, left))
        pause = min(pause * 2, interval)


async def wait_until_async(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str] = "",
    *,
    interval: float = 0.05,
) -> T:
    """`wait_until` for coroutines: the loop runs on while we wait."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = FIRST_PAUSE
    while True:
        got = predicate()
        if got:
            return got
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(_message(what, timeout, got))
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, interval)
