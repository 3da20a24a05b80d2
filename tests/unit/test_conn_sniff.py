"""net.conn sniffing, in process: a dribbled ClientHello is parsed a few times, not per byte.

The parser's NeedData.at_least says how many bytes it needs before it can decide; the
connection must not parse again before that many are buffered (otherwise a client
sending one byte at a time costs a parse per byte: quadratic up to sniff_max_bytes).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from helpers.wait import wait_until
from snirelay.config.model import Addr, Config, Endpoint, Route, Upstream
from snirelay.net import conn
from snirelay.server import Server, new_loop
from snirelay.wire.sniff import sniff

HELLO = (
    Path(__file__).resolve().parent.parent / "vectors" / "clienthello" / "curl_sni_http2.bin"
).read_bytes()


def test_dribbled_hello_is_not_parsed_per_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = sniff  # what conn calls (conn imports it from wire.sniff)

    def counting(data: bytes, limit: int = 65536) -> object:
        calls.append(len(data))
        return real(data, limit)

    monkeypatch.setattr(conn, "sniff", counting)

    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(10)
    got: list[bytes] = []

    def serve_backend() -> None:
        c, _ = backend.accept()
        with c:
            c.settimeout(10)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            got.append(data)

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
    server.bind()
    port = server.listeners[0].sock.getsockname()[1]
    relay = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), daemon=True)
    relay.start()
    backend_thread = threading.Thread(target=serve_backend, daemon=True)
    backend_thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in HELLO:
                s.send(bytes([b]))
                time.sleep(0.0002)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
        backend_thread.join(10)
    finally:
        stopping = wait_until(lambda: server.stopping, 10)
        loop.call_soon_threadsafe(stopping.set)
        relay.join(10)
        loop.close()
        backend.close()
    assert got == [HELLO]  # routed and replayed byte-exact
    assert 1 <= len(calls) <= 8, calls  # a handful of parses for 517 bytes, not one per byte
