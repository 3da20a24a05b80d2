"""net.poller and net.loop: the relay's core (readiness, timers, deferred calls) run inside
asyncio's selector, on a real loop and sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from helpers.wait import wait_until_async
from snirelay.net.loop import Loop, new_loop


class Recorder:
    def __init__(self, sock: socket.socket, *, explode: bool = False) -> None:
        self.sock = sock
        self.explode = explode
        self.events: list[str] = []
        self.aborted = False

    def on_readable(self) -> None:
        self.events.append("r")
        if self.explode:
            raise RuntimeError("a bug in a callback")
        try:
            self.sock.recv(65536)
        except OSError as exc:
            self.events.append(type(exc).__name__)

    def on_writable(self) -> None:
        self.events.append("w")

    def abort(self) -> None:
        self.aborted = True


def run_until(loop: Loop, predicate: Callable[[], object]) -> None:
    """Run the loop until `predicate()` holds (AssertionError after 5 s)."""
    loop.run_until_complete(wait_until_async(predicate, 5))


@pytest.fixture
def loop() -> Iterator[Loop]:
    lp = new_loop()
    yield lp
    lp.close()


def test_reader_writer_and_set(loop: Loop) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        poller = loop.poller
        rec = Recorder(a)
        poller.add_writer(a.fileno(), rec)
        run_until(loop, lambda: "w" in rec.events)  # an idle socket is writable
        poller.set(a.fileno(), rec, None)  # one call: read, stop writing
        rec.events.clear()
        b.sendall(b"x")
        run_until(loop, lambda: rec.events)
        assert rec.events == ["r"]  # no writer any more (it would fire at once)
        poller.remove_reader(a.fileno())
        assert a.fileno() not in poller.readers and a.fileno() not in poller.writers


def test_reset_runs_the_reader_even_with_data_pending(loop: Loop) -> None:
    """The uvloop trap: data then RST must reach the callback, which sees the error."""
    lst = socket.create_server(("127.0.0.1", 0))
    with lst:
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        with s:
            s.setblocking(False)
            c.sendall(b"data" * 1000)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # RST
            poller = loop.poller
            rec = Recorder(s)
            poller.add_reader(s.fileno(), rec)
            run_until(loop, lambda: "ConnectionResetError" in rec.events)
            poller.remove_reader(s.fileno())


def test_a_raising_callback_aborts_its_watcher_only(loop: Loop) -> None:
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    with a, b, c, d:
        for s in (a, c):
            s.setblocking(False)
        poller = loop.poller
        bad, good = Recorder(a, explode=True), Recorder(c)
        poller.add_reader(a.fileno(), bad)
        poller.add_reader(c.fileno(), good)
        b.sendall(b"x")
        d.sendall(b"y")
        run_until(loop, lambda: bad.aborted and "r" in good.events)
        assert not good.aborted  # the other connection was still served
        poller.forget(a.fileno())
        poller.remove_reader(c.fileno())


def test_a_failed_epoll_ctl_is_logged_and_aborts_only_that_watcher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = new_loop()
    poller = loop.poller
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        bad, good = Recorder(a), Recorder(c)
        poller.add_reader(c.fileno(), good)
        fd = a.fileno()
        a.close()  # a descriptor closed under the poller: epoll_ctl fails with EBADF
        with caplog.at_level("ERROR", logger="snirelay"):
            poller.add_reader(fd, bad)
        assert bad.aborted and not good.aborted
        assert "epoll_ctl add on descriptor" in caplog.text and "Bad file descriptor" in caplog.text
        assert fd not in poller.readers  # forgotten, not left half-registered
        d.send(b"x")
        run_until(loop, lambda: good.events)
        assert good.events == ["r"]  # the rest keeps being served
    finally:
        for s in (b, c, d):
            s.close()
        loop.close()


def test_timers_fire_in_order_and_a_cancelled_one_never(loop: Loop) -> None:
    core = loop.poller
    fired: list[str] = []
    now = core.time()
    core.call_at(now + 0.03, lambda: fired.append("late"))
    core.call_at(now + 0.01, lambda: fired.append("early"))
    core.call_later(0.02, lambda: fired.append("cancelled")).cancel()
    run_until(loop, lambda: "late" in fired)
    assert fired == ["early", "late"]
    assert core.time() >= now + 0.03  # never early


def test_a_raising_timer_or_deferred_call_is_logged_and_the_rest_run(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    core = loop.poller
    seen: list[str] = []

    def bad() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level("ERROR", logger="snirelay"):
        core.call_soon(bad)
        core.call_soon(lambda: seen.append("soon"))
        core.call_later(0, bad)
        core.call_later(0, lambda: seen.append("timer"))
        run_until(loop, lambda: len(seen) == 2)
    assert sorted(seen) == ["soon", "timer"]
    assert "internal error in a deferred callback" in caplog.text
    assert "internal error in a timer callback" in caplog.text


def test_asyncio_runs_beside_the_core(loop: Loop) -> None:
    """asyncio's own descriptors, timers and thread-safe calls are served while the
    core serves its watchers: the selector returns to asyncio when asyncio has work."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        for s in (a, c):
            s.setblocking(False)
        rec = Recorder(c)
        loop.poller.add_reader(c.fileno(), rec)  # the core's watcher
        got: list[bytes] = []
        loop.add_reader(a.fileno(), lambda: got.append(a.recv(10)))  # asyncio's

        async def main() -> float:
            d.sendall(b"core")
            b.sendall(b"asyncio")
            t0 = loop.time()
            await asyncio.sleep(0.05)  # an asyncio timer, while the core waits
            slept = loop.time() - t0
            await wait_until_async(lambda: got and rec.events, 5)
            return slept

        slept = loop.run_until_complete(main())
        assert 0.05 <= slept < 1, slept
        assert got == [b"asyncio"] and rec.events == ["r"]
        loop.remove_reader(a.fileno())
        loop.poller.remove_reader(c.fileno())


@pytest.mark.parametrize("how", ["future", "task", "call_soon", "call_later"])
def test_asyncio_work_from_a_core_callback_runs_at_once(loop: Loop, how: str) -> None:
    """Code the core calls may hand work to asyncio directly: the selector's wait ends
    (no asyncio timer or descriptor is pending that would end it otherwise)."""
    done = loop.create_future()

    async def finish() -> None:
        done.set_result(None)

    def from_the_core() -> None:
        if how == "future":
            done.set_result(None)
        elif how == "task":
            loop.create_task(finish())
        elif how == "call_soon":
            loop.call_soon(done.set_result, None)
        else:
            loop.call_later(0.01, done.set_result, None)

    t0 = loop.time()
    loop.poller.call_later(0.01, from_the_core)
    loop.run_until_complete(asyncio.wait_for(done, 5))
    assert loop.time() - t0 < 1


def test_the_selector_refuses_a_descriptor_the_core_watches(loop: Loop) -> None:
    a, b = socket.socketpair()
    with a, b:
        loop.poller.add_reader(a.fileno(), Recorder(a))
        with pytest.raises(KeyError, match="watched by the relay's core"):
            loop.add_reader(a.fileno(), lambda: None)
        loop.poller.remove_reader(a.fileno())
