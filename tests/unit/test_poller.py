"""net.poller: readiness dispatch from the nested epoll set, on a real loop and sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from helpers.wait import wait_until_async
from snirelay.net.poller import Poller
from snirelay.server import new_loop


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


def run_until(loop: asyncio.AbstractEventLoop, predicate: Callable[[], object]) -> None:
    """Run the loop until `predicate()` holds (AssertionError after 5 s)."""
    loop.run_until_complete(wait_until_async(predicate, 5))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = new_loop()
    yield lp
    lp.close()


def test_reader_writer_and_set(loop: asyncio.AbstractEventLoop) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        poller = Poller(loop)
        rec = Recorder(a)
        poller.add_writer(a.fileno(), rec)
        run_until(loop, lambda: "w" in rec.events)  # an idle socket is writable
        poller.set(a.fileno(), rec, None)  # one call: read, stop writing
        rec.events.clear()
        b.sendall(b"x")
        run_until(loop, lambda: rec.events)
        assert rec.events == ["r"]  # no writer any more (it would fire at once)
        poller.remove_reader(a.fileno())
        assert poller.registered() == 0
        poller.close()


def test_reset_runs_the_reader_even_with_data_pending(loop: asyncio.AbstractEventLoop) -> None:
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
            poller = Poller(loop)
            rec = Recorder(s)
            poller.add_reader(s.fileno(), rec)
            run_until(loop, lambda: "ConnectionResetError" in rec.events)
            poller.remove_reader(s.fileno())
            poller.close()


def test_a_raising_callback_aborts_its_watcher_only(loop: asyncio.AbstractEventLoop) -> None:
    (a, b), (c, d) = socket.socketpair(), socket.socketpair()
    with a, b, c, d:
        for s in (a, c):
            s.setblocking(False)
        poller = Poller(loop)
        bad, good = Recorder(a, explode=True), Recorder(c)
        poller.add_reader(a.fileno(), bad)
        poller.add_reader(c.fileno(), good)
        b.sendall(b"x")
        d.sendall(b"y")
        run_until(loop, lambda: bad.aborted and "r" in good.events)
        assert not good.aborted  # the other connection was still served
        poller.forget(a.fileno())
        poller.remove_reader(c.fileno())
        poller.close()


def test_a_failed_epoll_ctl_is_logged_and_aborts_only_that_watcher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = new_loop()
    poller = Poller(loop)
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
        poller.close()
        loop.close()
