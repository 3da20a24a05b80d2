"""What one wake of the event loop costs, in user-space instructions (callgrind).

    .venv/bin/python bench/loop_cost.py [--events N]

How it works: a socket pair plays ping-pong in one process: each readiness event reads
the 10 bytes that arrived and sends them back, so every wake of the loop has exactly
one ready socket and one callback (the shape of a relayed TLS handshake, whose flights
wake the relay one at a time). Each loop design runs the ping-pong under `valgrind
--tool=callgrind` twice, with N and 3N events; the difference in instructions over 2N
is the cost of one wake, callback and its recv and send included. Designs:

- `core`: snirelay's loop (net.loop: the relay's epoll core inside asyncio's selector);
- `asyncio`: the stock asyncio loop's `add_reader` (selectors, a Handle per wake);
- `uvloop-nested`: an epoll set of its own watched by uvloop's `add_reader`, drained on
  each wake (what snirelay did before net.loop; needs `pip install uvloop`).

Needs valgrind (Debian package). Takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DESIGNS = ("core", "asyncio", "uvloop-nested")


class Ping:
    """Reads what arrived and sends it back, until `left` events have run."""

    __slots__ = ("sock", "left", "done")

    def __init__(self, sock: socket.socket, left: list[int], done: Callable[[], None]) -> None:
        self.sock, self.left, self.done = sock, left, done

    def on_readable(self) -> None:
        data = self.sock.recv(100)
        self.left[0] -= 1
        if self.left[0] <= 0:
            self.done()
            return
        self.sock.send(data)

    def on_writable(self) -> None:
        pass

    def abort(self) -> None:
        raise SystemExit("a callback failed")


def play(design: str, events: int) -> None:
    """Run the ping-pong for `events` wakes with one loop design."""
    import asyncio

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    left = [events]
    if design == "core":
        sys.path.insert(0, str(REPO / "src"))
        from snirelay.net.loop import Loop

        loop: asyncio.AbstractEventLoop = Loop()
        fut = loop.create_future()
        finish = lambda: fut.done() or fut.set_result(None)  # noqa: E731
        for s in (a, b):
            loop.poller.add_reader(s.fileno(), Ping(s, left, finish))  # type: ignore[attr-defined]
    elif design == "asyncio":
        loop = asyncio.new_event_loop()
        fut = loop.create_future()
        finish = lambda: fut.done() or fut.set_result(None)  # noqa: E731
        for s in (a, b):
            loop.add_reader(s.fileno(), Ping(s, left, finish).on_readable)
    else:
        import uvloop

        loop = uvloop.new_event_loop()
        fut = loop.create_future()
        finish = lambda: fut.done() or fut.set_result(None)  # noqa: E731
        ep = select.epoll()
        watchers = {s.fileno(): Ping(s, left, finish) for s in (a, b)}
        for fd in watchers:
            ep.register(fd, select.EPOLLIN)

        def dispatch() -> None:
            for fd, _ in ep.poll(0, 128):
                watchers[fd].on_readable()

        loop.add_reader(ep.fileno(), dispatch)
    a.send(b"x" * 10)
    loop.run_until_complete(fut)
    loop.close()


def count(design: str, events: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        res = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--play", design, "--events", str(events)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        m = re.search(r"Collected : (\d+)", res.stderr)
        if res.returncode != 0 or not m:
            raise SystemExit(f"{design}: valgrind failed: {res.stderr[-500:]}")
        return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(prog="bench/loop_cost.py", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=10000, help="wakes in the short run")
    p.add_argument("--play", choices=DESIGNS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.play:
        play(a.play, a.events)
        return 0
    if not shutil.which("valgrind"):
        print("valgrind not installed (apt install valgrind)")
        return 1
    print(f"user-space instructions per wake (callgrind, {a.events} vs {3 * a.events} wakes):")
    for design in DESIGNS:
        if design == "uvloop-nested":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print(f"  {design:14s} skipped: uvloop not installed (pip install uvloop)")
                continue
        short, long = count(design, a.events), count(design, 3 * a.events)
        print(f"  {design:14s} {(long - short) / (2 * a.events):8,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
