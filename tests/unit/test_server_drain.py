"""Server.drain in process: the drain deadline and the hurried stop, on loopback.

A `Server` runs its event loop in a thread; a backend accepts and holds connections
without a byte. The test sets the server's `stopping` (what SIGTERM does) and, for the
hurried case, `hurry` too (a second SIGTERM), then checks what the client sees
(a reset, not an EOF), the close reason in the record, and that `serve()` returned
in time with no connection left open.

The hurried case sets both events in one callback, before the drain has started (two
signals in a row): the drains are cancelled at their first wait and cut at once.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snirelay.config.model import Addr, Config, Endpoint, Upstream
from snirelay.net.loop import new_loop
from snirelay.observe.log import CONN_LOG, LOG
from snirelay.server import Server


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            self.records.append(fields)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    handler = _Records()
    level = LOG.level
    CONN_LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        CONN_LOG.removeHandler(handler)
        LOG.setLevel(level)


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _run(drain_timeout: float, hurry: bool) -> tuple[str, float, int]:
    """One connection through a Server, then stop it; returns (what the client saw,
    seconds serve() took to return after the stop, connections left)."""
    backend = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold() -> None:
        backend.settimeout(10)
        c, _ = backend.accept()
        held.append(c)  # never writes, never closes first

    up = Upstream(remotes=(Addr("127.0.0.1", backend.getsockname()[1]),))
    config = Config(
        endpoints=(Endpoint(place="endpoints[0]", listen=Addr("127.0.0.1", 0), upstream=up),),
        drain_timeout=drain_timeout,
    )
    loop = new_loop()
    server = Server(config, loop)
    server.bind()
    port = server.listeners[0].sock.getsockname()[1]
    relay = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    relay.start()
    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            holder.join(10)
            _wait(lambda: len(server.ctx.conns) == 1 and held, 10, "connection through")

            def stop() -> None:
                assert server.stopping is not None and server.hurry is not None
                server.stopping.set()
                if hurry:
                    server.hurry.set()

            t0 = time.monotonic()
            loop.call_soon_threadsafe(stop)
            relay.join(drain_timeout + 10)
            took = time.monotonic() - t0
            try:
                seen = "eof" if s.recv(1024) == b"" else "data"
            except ConnectionResetError:
                seen = "reset"
        return seen, took, len(server.ctx.conns)
    finally:
        if not relay.is_alive():
            loop.close()
        for c in held:
            c.close()
        backend.close()


def test_drain_deadline_cuts_with_reset(records: list[dict[str, Any]]) -> None:
    seen, took, left = _run(drain_timeout=0.3, hurry=False)
    assert seen == "reset"
    assert 0.25 <= took < 5, took
    assert left == 0
    assert [r["close"] for r in records] == ["drain-timeout"], records


def test_hurry_before_the_drain_runs_cuts_at_once(records: list[dict[str, Any]]) -> None:
    seen, took, left = _run(drain_timeout=60, hurry=True)
    assert seen == "reset"
    assert took < 5, took
    assert left == 0
    assert [r["close"] for r in records] == ["shutdown"], records
