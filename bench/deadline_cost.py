"""What deadlines cost at 50,000 idle connections: the old sweep against the timing wheel.

    .venv/bin/python bench/deadline_cost.py [--conns 50000]

Old design (before issue 7): every 0.25 s a sweep called `tick(now)` on every open
connection (compare deadline, compare byte counters). Measured here by running that
same per-connection check over N objects.

New design (net.timers.Wheel): each connection sits in one bucket; a firing touches
only the due entries. Simulated over 600 s of loop time on a hand-driven clock with N
pumping connections idle-checked as net.conn does (every quarter of tcp_idle_timeout,
closing after four quiet checks in a row), tcp_idle_timeout = 300 s, 1% of
connections moving bytes: prints the cost of one firing, the wheel's CPU per second of
loop time, and the old sweep's.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from snirelay.net.timers import Wheel

IDLE = 300.0
SWEEP_INTERVAL = 0.25


class OldConn:
    """The old Connection.tick(): a deadline check and the idle counters."""

    __slots__ = ("deadline", "nbytes", "idle_bytes", "idle_since")

    def __init__(self) -> None:
        self.deadline = 0.0
        self.nbytes = 0
        self.idle_bytes = -1
        self.idle_since = 0.0

    def tick(self, now: float) -> None:
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            return
        if self.nbytes != self.idle_bytes:
            self.idle_bytes = self.nbytes
            self.idle_since = now
        elif now - self.idle_since >= IDLE:
            pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timer: tuple[float, Any] | None = None

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb: Any) -> Any:
        self.timer = (when, cb)
        clock = self

        class H:
            def cancel(self) -> None:
                clock.timer = None

        return H()


class NewConn:
    """net.conn's idle check, on the wheel."""

    __slots__ = ("due", "slot", "wheel", "clock", "nbytes", "idle_bytes", "quiet", "busy")

    def __init__(self, wheel: Wheel, clock: Clock, busy: bool) -> None:
        self.due = self.slot = 0
        self.wheel, self.clock, self.busy = wheel, clock, busy
        self.nbytes = self.idle_bytes = self.quiet = 0
        wheel.after(self, IDLE / 4)

    def on_deadline(self) -> None:
        if self.busy:
            self.nbytes += 1
        if self.nbytes != self.idle_bytes:
            self.idle_bytes = self.nbytes
            self.quiet = 0
        else:
            self.quiet += 1
            if self.quiet >= 4:
                self.quiet = 0  # (a real one closes; keep it armed to stay at N)
        self.wheel.after(self, IDLE / 4)

    def abort(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=50_000)
    args = ap.parse_args()
    n = args.conns

    old = [OldConn() for _ in range(n)]
    conns = set(old)
    t0 = time.perf_counter()
    rounds = 20
    for r in range(rounds):
        for c in list(conns):
            c.tick(r * SWEEP_INTERVAL)
    sweep = (time.perf_counter() - t0) / rounds
    print(
        f"old sweep over {n:,} connections: {sweep * 1e3:.2f} ms per sweep, "
        f"{sweep / SWEEP_INTERVAL * 1e3:.1f} ms of CPU per second"
    )

    clock = Clock()
    wheel = Wheel(clock, resolution=0.1)  # type: ignore[arg-type]
    rnd = random.Random(7)
    items = []
    for _ in range(n):  # connections arrive over the first 10 s
        clock.now += 10.0 / n
        items.append(NewConn(wheel, clock, busy=rnd.random() < 0.01))
    firings: list[float] = []
    horizon = clock.now + 600.0
    while clock.timer is not None and clock.timer[0] <= horizon:
        when, cb = clock.timer
        clock.now = when
        t = time.perf_counter()
        cb()
        firings.append(time.perf_counter() - t)
    total = sum(firings)
    print(
        f"wheel with {n:,} connections over 600 s of loop time: {len(firings):,} firings, "
        f"{total / len(firings) * 1e6:.1f} µs per firing (mean), "
        f"{max(firings) * 1e3:.2f} ms the largest, "
        f"{total / 600 * 1e3:.3f} ms of CPU per second"
    )
    t = time.perf_counter()
    for i in range(10_000):  # a connection's life: a deadline armed, then cancelled
        item = items[i]
        wheel.arm(item, clock.now + 5.0 + (i % 50) * 0.1)
        wheel.cancel(item)
    arm = (time.perf_counter() - t) / 10_000
    print(f"arming and cancelling a deadline: {arm * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
