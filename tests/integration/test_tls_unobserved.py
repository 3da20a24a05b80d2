"""A listener that only terminates TLS, with nobody observing its connections.

With the connection log off and no admin API, no observer reads what a ClientHello
says, so such a listener does not parse it: OpenSSL reads the hello from the socket
(runtime.must_sniff). These tests run that path (the relay's log is off, so each
test finds the relay by its port) and the observed one side by side where both
apply: every byte both ways with half-close, the handshake deadline, and a client
whose handshake fails costing no backend connection (the client's handshake comes
before the backend's connection when the relay does not re-originate).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers.relay import RelayProcess
from integration.servers import pick_port
from integration.test_features import wait_accepting
from integration.test_tls import _expected, client_hello, drive_client, relay_cert

pytestmark = pytest.mark.integration


def _config(port: int, backend: int, cert: Path, key: Path, *, observed: bool) -> str:
    level = "info" if observed else "off"
    return f"""
[log]
level = "{level}"
output = "stderr"
[network]
tls_handshake_timeout = 0.5
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:{backend}"
listen_transport = "tls;cert={cert};key={key}"
"""


def _relay(tmp_path: Path, backend: int, *, observed: bool) -> tuple[RelayProcess, int]:
    _, cert, key = relay_cert(tmp_path)
    port = pick_port()
    relay = RelayProcess(
        config=_config(port, backend, cert, key, observed=observed),
        tmp_path=tmp_path,
        log_flags=False,
    )
    return relay, port


def test_every_byte_both_ways_with_half_close_unobserved(tmp_path: Path) -> None:
    """16 MiB each way, sha256-checked, the client's close_notify and FIN first: the
    backend's answer still flows after it."""
    ca, _, _ = relay_cert(tmp_path)
    size = 16 << 20
    up_data, down_data = os.urandom(1 << 20), os.urandom(1 << 20)
    backend = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, str] = {}

    def serve() -> None:
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(60)
            h = hashlib.sha256()
            while chunk := conn.recv(1 << 16):
                h.update(chunk)
            seen["up"] = h.hexdigest()
            for _ in range(size // len(down_data)):
                conn.sendall(down_data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    relay, port = _relay(tmp_path, backend.getsockname()[1], observed=False)
    with backend, relay:
        relay.spawn()
        wait_accepting(port)
        down = drive_client(port, ca, up_data, size)
        t.join(60)
        assert seen["up"] == _expected(up_data, size)
        assert down == _expected(down_data, size)


def test_a_stalled_handshake_is_closed_at_its_deadline_unobserved(tmp_path: Path) -> None:
    """The hello, then nothing: closed at tls_handshake_timeout (0.5 s), not later."""
    backend = socket.create_server(("127.0.0.1", 0))
    relay, port = _relay(tmp_path, backend.getsockname()[1], observed=False)
    with backend, relay:
        relay.spawn()
        wait_accepting(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(client_hello())
            t0 = time.monotonic()
            got = b""
            try:
                while data := c.recv(65536):  # the server's flight, then the close
                    got += data
            except ConnectionResetError:
                pass  # closed at the deadline with a reset
            took = time.monotonic() - t0
        assert got[:1] == b"\x16", got[:16]  # it did answer the hello
        assert 0.4 <= took < 5, took


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "unobserved"])
def test_a_failed_client_handshake_costs_no_backend_connection(
    tmp_path: Path, observed: bool
) -> None:
    """Plain HTTP to a listener that terminates TLS: refused, and the backend never
    hears of it (observed, the record says why)."""
    backend = socket.create_server(("127.0.0.1", 0))
    backend.setblocking(False)
    relay, port = _relay(tmp_path, backend.getsockname()[1], observed=observed)
    with backend, relay:
        relay.spawn()
        wait_accepting(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n")
            try:
                assert c.recv(100) == b""  # closed
            except ConnectionResetError:
                pass
        if observed:
            [rec] = relay.wait_records(2)[1:]  # the first: wait_accepting's probe
            assert rec["close"] == "tls-client: http request" and rec["backend"] is None, rec
        else:
            relay.stop()  # everything it would do is done
        with pytest.raises(BlockingIOError):
            backend.accept()  # the backend never heard of it
