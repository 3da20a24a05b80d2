"""Deadlines for many connections at the cost of the ones that are due.

How it works
------------
A hashed timing wheel. Time is cut into ticks of `resolution` seconds; `arm(item,
when)` appends the item to the bucket (a list) of the tick that contains `when`
(rounded up) and stores that tick in `item.due` and its index in the bucket in
`item.slot`. `cancel(item)` (and re-arming, which cancels first) empties that place at
once, in O(1): a closed connection is never kept alive by the wheel until its old
deadline comes round, and what is left behind is one empty list slot (8 bytes) until
the tick. (A dict per bucket would remove the entry too, at ~30-50 bytes per armed
connection instead of 8: memory per idle connection is one of the relay's targets.)

One loop timer serves the whole wheel: it is set for the earliest bucket that exists
(a heap of bucket ticks, one entry per bucket, pushed when the bucket is created) and
fires only when a bucket is due. Work per firing is
the number of items due, never a walk over every connection: 50,000 idle connections
whose next deadline is minutes away cost nothing until then.

Deadlines fire at most `resolution` late (and at most 5% of a tick early, where the
loop's millisecond timer rounding would otherwise make the wheel spin).

Error handling: an item whose `on_deadline()` raises is logged and its `abort()` is
called (it closes that connection); the other due items still run.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Protocol

from snirelay.observe.log import LOG

RESOLUTION = 0.1  # seconds per tick


class Timed(Protocol):
    """What the wheel holds: `due` is the tick it is armed for (0 = not armed), `slot`
    its index in that tick's bucket (meaningful only while armed)."""

    due: int
    slot: int

    def on_deadline(self) -> None: ...
    def abort(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the wheel runs on: the relay's core (net.poller.Poller) or a test's fake."""

    def time(self) -> float: ...
    def call_at(self, when: float, cb: Callable[[], object], /) -> Cancellable: ...


class Wheel:
    __slots__ = ("clock", "call_at", "res", "buckets", "ticks", "handle", "handle_tick", "last")

    def __init__(
        self,
        loop: Clock,
        resolution: float = RESOLUTION,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.clock = clock or loop.time
        self.call_at = loop.call_at
        self.res = resolution
        self.buckets: dict[int, list[Timed | None]] = {}
        self.ticks: list[int] = []  # heap of the buckets' ticks, one entry per bucket
        self.handle: Cancellable | None = None
        self.handle_tick = 0  # the tick the loop timer is set for (0 = none)
        self.last = 0  # the tick last armed: its int object is shared by the items armed for it

    def arm(self, item: Timed, when: float) -> None:
        """Call `item.on_deadline()` at `when` (loop time), at most one tick late; an
        earlier deadline of the item is replaced."""
        tick = math.ceil(when / self.res)
        if tick == self.last:
            tick = self.last  # one int object per tick, not one per armed connection
        else:
            self.last = tick
        if item.due:
            if item.due == tick:
                return
            self.cancel(item)
        item.due = tick
        bucket = self.buckets.get(tick)
        if bucket is not None:
            item.slot = len(bucket)
            bucket.append(item)
            return
        item.slot = 0
        self.buckets[tick] = [item]
        heapq.heappush(self.ticks, tick)
        if not self.handle_tick or tick < self.handle_tick:
            self._schedule(tick)

    def after(self, item: Timed, delay: float) -> None:
        """`arm` at `delay` seconds from now; a delay <= 0 means no deadline."""
        if delay > 0:
            self.arm(item, self.clock() + delay)
        elif item.due:
            self.cancel(item)

    def cancel(self, item: Timed) -> None:
        """Forget the item's deadline (nothing if it has none)."""
        due = item.due
        if not due:
            return
        item.due = 0
        bucket = self.buckets.get(due)
        if bucket is not None:
            bucket[item.slot] = None  # the bucket keeps its length until its tick

    def _schedule(self, tick: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.handle_tick = tick
        self.handle = self.call_at(tick * self.res, self._fire)

    def pending(self) -> int:
        """Items armed (for tests and diagnostics)."""
        return sum(1 for b in self.buckets.values() for item in b if item is not None)

    def _fire(self) -> None:
        self.handle = None
        self.handle_tick = 0
        # a loop timer may fire a hair early (millisecond rounding): count it as on time
        now_tick = math.floor(self.clock() / self.res + 0.05)
        ticks, buckets = self.ticks, self.buckets
        while ticks and ticks[0] <= now_tick:
            tick = heapq.heappop(ticks)
            for item in buckets.pop(tick):
                if item is None or item.due != tick:
                    continue  # cancelled (perhaps by an earlier item's deadline in this run)
                item.due = 0
                try:
                    item.on_deadline()
                except Exception:
                    LOG.exception("internal error at a deadline; closing its connection")
                    item.abort()
        if ticks:
            self._schedule(ticks[0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.handle_tick = 0
        self.buckets.clear()
        self.ticks.clear()
