"""The observer interface: each connection's events reach an observer, in order, with the
record at the end (the log record is one such observer; metrics and the admin API's live
list will be others). In process: a Server with a test observer added to its context."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from snirelay.config.model import Addr, Config, Endpoint, Route, Upstream
from snirelay.net.conn import Connection
from snirelay.net.loop import new_loop
from snirelay.server import Server

pytestmark = pytest.mark.integration

HELLO = (
    Path(__file__).resolve().parent.parent / "vectors" / "clienthello" / "curl_sni_http2.bin"
).read_bytes()


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int, Any]] = []
        self.done = threading.Event()

    def accepted(self, conn: Connection) -> None:
        self.seen.append(("accepted", conn.id, None))

    def sniffed(self, conn: Connection) -> None:
        self.seen.append(("sniffed", conn.id, conn.seen.name if conn.seen else None))

    def routed(self, conn: Connection) -> None:
        self.seen.append(("routed", conn.id, conn.route))

    def connected(self, conn: Connection) -> None:
        self.seen.append(("connected", conn.id, None))

    def closed(self, conn: Connection, record: dict[str, Any]) -> None:
        self.seen.append(("closed", conn.id, (record["close"], record["sni"], record["phase"])))
        self.done.set()


class OnlyClosed:
    """An observer of one event: the others cost it nothing."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def closed(self, conn: Connection, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_events_in_order_with_the_record_last() -> None:
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(10)
    up = Upstream(remotes=(Addr("127.0.0.1", backend.getsockname()[1]),))
    route = Route(place="endpoints[0].routes[0]", upstream=up, server_names=("emby.example.com",))
    config = Config(
        endpoints=(
            Endpoint(
                place="endpoints[0]", listen=Addr("127.0.0.1", 0), upstream=up, routes=(route,)
            ),
        )
    )
    loop = new_loop()
    server = Server(config, loop)
    events, only = Events(), OnlyClosed()
    server.ctx.add(events)
    server.ctx.add(only)
    assert server.ctx.on_accepted and not any(
        getattr(cb, "__self__", None) is only for cb in server.ctx.on_accepted
    )
    server.bind()
    port = server.listeners[0].sock.getsockname()[1]
    ready = threading.Event()
    loop.call_soon(ready.set)
    relay = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    relay.start()
    try:
        assert ready.wait(10)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(HELLO)
            b, _ = backend.accept()
            with b:
                b.settimeout(10)
                got = b""
                while len(got) < len(HELLO):
                    got += b.recv(65536)
                assert got == HELLO
            assert c.recv(1) == b""  # the backend closed: the relay passes the FIN on
        assert events.done.wait(10)
    finally:
        stopping = server.stopping
        if stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        relay.join(10)
        loop.close()
        backend.close()
    names = [e[0] for e in events.seen]
    assert names == ["accepted", "sniffed", "routed", "connected", "closed"], events.seen
    assert events.seen[1][2] == "emby.example.com"
    assert events.seen[2][2] == "endpoints[0].routes[0]"
    assert events.seen[-1][2] == ("eof", "emby.example.com", "pump")
    assert len({e[1] for e in events.seen}) == 1  # one connection
    assert [r["close"] for r in only.records] == ["eof"]
