"""Each phase has a deadline, and the record names the phase a connection ended in.

The issue's reproduction for the replay phase: an endpoint with routes and a
`sniff_max_bytes` of some MiB, a client that sends that much, and a backend that
accepts and never reads. Before the phases had deadlines the connection stayed open
forever (no timeout applied while the sniffed bytes were replayed); now it is cut at
`network.replay_timeout` with a reset and `close=replay-timeout phase=replay`.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from helpers.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration

MIB = 1 << 20


class NeverReads:
    """Accepts and holds connections without reading a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            c, _ = self.sock.accept()
        except OSError:
            return
        self.held.append(c)
        self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_replay_to_a_backend_that_never_reads_ends_at_its_deadline(tmp_path: Path) -> None:
    backend = NeverReads()
    port = free_port()
    size = 8 * MIB
    config = f"""
[network]
sniff_max_bytes = {size}
replay_timeout = 1

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:9"

[[endpoints.routes]]
when = "not_tls"
remote = "127.0.0.1:{backend.port}"
"""
    try:
        with RelayProcess(config=config, tmp_path=tmp_path, args=["--log-format", "json"]) as relay:
            relay.start()
            c = socket.create_connection(("127.0.0.1", port), timeout=20)
            # an HTTP request head that never ends: the relay buffers it up to
            # sniff_max_bytes, then hands it to the not_tls route ("too-large")
            head = b"GET / HTTP/1.1\r\nX-Filler: " + b"a" * size
            t0 = time.monotonic()
            sender = threading.Thread(target=_send_quietly, args=(c, head), daemon=True)
            sender.start()
            assert backend.accepted.wait(20), "the relay never connected the backend"
            (rec,) = relay.wait_records(1, timeout=20)
            elapsed = time.monotonic() - t0
            assert rec["close"] == "replay-timeout" and rec["phase"] == "replay", rec
            assert rec["route"] == "endpoints[0].routes[0]"
            assert "left" in rec["hint"]
            assert elapsed < 15, elapsed
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                c.settimeout(10)
                while c.recv(65536):
                    pass
            c.close()
            sender.join(10)
    finally:
        backend.close()


def _send_quietly(c: socket.socket, data: bytes) -> None:
    try:
        c.sendall(data)
    except OSError:
        pass  # the relay cut the connection: the test checks how


def test_the_record_names_the_phase(tmp_path: Path) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there
    config = f"""
[network]
sniff_timeout = 0.5

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:{dead}"

[[endpoints.routes]]
server_names = ["emby.example.com"]
remote = "127.0.0.1:{dead}"
"""
    with RelayProcess(config=config, tmp_path=tmp_path, args=["--log-format", "json"]) as relay:
        relay.start()
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)  # says nothing
        http = socket.create_connection(("127.0.0.1", port), timeout=10)
        http.sendall(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")  # to the dead default
        recs = relay.wait_records(2, timeout=15)
        by_close = {r["close"]: r for r in recs}
        assert by_close["sniff-timeout"]["phase"] == "sniff"
        assert by_close["connect-failed"]["phase"] == "connect"
        assert by_close["connect-failed"]["failed_remotes"]
        silent.close()
        http.close()
