"""net.timers.Wheel on a fake loop: deadlines fire on time, never early, and the work per
firing is the entries that are due, not everything armed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snirelay.net.timers import Timed, Wheel


class FakeLoop:
    """call_at / time, driven by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Callable[[], None]) -> Any:
        entry = (when, cb)
        self.timers.append(entry)
        loop = self

        class Handle:
            def cancel(self) -> None:
                if entry in loop.timers:
                    loop.timers.remove(entry)

        return Handle()

    def advance(self, to: float) -> None:
        """Run every loop timer due up to `to`, in order."""
        while True:
            due = [t for t in self.timers if t[0] <= to]
            if not due:
                break
            first = min(due, key=lambda t: t[0])
            self.timers.remove(first)
            self.now = max(self.now, first[0])
            first[1]()
        self.now = to


class Item:
    def __init__(self, log: list[tuple[str, float]], name: str, loop: FakeLoop) -> None:
        self.due = 0
        self.slot = 0
        self.log, self.name, self.loop = log, name, loop
        self.aborted = False

    def on_deadline(self) -> None:
        self.log.append((self.name, self.loop.now))

    def abort(self) -> None:
        self.aborted = True


def make() -> tuple[FakeLoop, Wheel, list[tuple[str, float]]]:
    loop = FakeLoop()
    return loop, Wheel(loop, resolution=0.1), []  # type: ignore[arg-type]


def test_fires_within_one_tick_never_early() -> None:
    loop, wheel, log = make()
    a, b = Item(log, "a", loop), Item(log, "b", loop)
    wheel.after(a, 0.55)
    wheel.after(b, 0.2)
    loop.advance(1000.5)
    assert [n for n, _ in log] == ["b"]
    assert 1000.2 <= log[0][1] <= 1000.3
    loop.advance(1001.0)
    assert [n for n, _ in log] == ["b", "a"]
    assert 1000.55 <= log[1][1] <= 1000.65


def test_cancel_and_rearm_remove_the_old_entry_at_once() -> None:
    loop, wheel, log = make()
    a, b = Item(log, "a", loop), Item(log, "b", loop)
    wheel.after(a, 0.3)
    wheel.after(b, 0.3)
    wheel.after(a, 0)  # cancel
    wheel.after(b, 5.0)  # re-arm later
    assert wheel.pending() == 1  # nothing stale kept (a closed connection is not held)
    loop.advance(1001.0)
    assert log == []
    loop.advance(1006.0)
    assert [n for n, _ in log] == ["b"]
    assert wheel.pending() == 0 and not loop.timers  # nothing left, no timer running


def test_one_loop_timer_for_the_whole_wheel() -> None:
    loop, wheel, log = make()
    items = [Item(log, str(i), loop) for i in range(1000)]
    for i, it in enumerate(items):
        wheel.after(it, 300 + i % 7)
    assert len(loop.timers) == 1  # the earliest bucket's
    loop.advance(1299.0)
    assert log == []


def test_work_per_firing_is_the_due_entries() -> None:
    """50,000 items armed far away; one near: firing the near one touches one entry."""
    loop, wheel, log = make()
    far = [Item(log, "far", loop) for _ in range(50_000)]
    for it in far:
        wheel.after(it, 300)
    near = Item(log, "near", loop)
    wheel.after(near, 1)
    touched: list[int] = []

    class CountingBuckets(dict[int, list[Timed | None]]):
        def pop(self, tick: int, *default: Any) -> Any:
            bucket = super().pop(tick, *default)
            touched.append(len(bucket))
            return bucket

    wheel.buckets = CountingBuckets(wheel.buckets)
    loop.advance(1002.0)
    assert [n for n, _ in log] == ["near"] and touched == [1]


def test_a_raising_item_is_aborted_and_the_others_still_run() -> None:
    loop, wheel, log = make()

    class Bad(Item):
        def on_deadline(self) -> None:
            raise RuntimeError("bug")

    bad, good = Bad(log, "bad", loop), Item(log, "good", loop)
    wheel.after(bad, 0.1)
    wheel.after(good, 0.1)
    loop.advance(1001.0)
    assert bad.aborted and [n for n, _ in log] == ["good"]


def test_cancelling_a_due_item_from_another_items_deadline() -> None:
    loop, wheel, log = make()
    b = Item(log, "b", loop)

    class Closer(Item):
        def on_deadline(self) -> None:
            super().on_deadline()
            wheel.cancel(b)  # e.g. one connection's end closes another

    a = Closer(log, "a", loop)
    wheel.after(a, 0.1)
    wheel.after(b, 0.1)
    loop.advance(1001.0)
    assert [n for n, _ in log] == ["a"]
