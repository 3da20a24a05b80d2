"""Connection and process lifecycle: drain on SIGTERM, idle timeout, resets, refusals.

- SIGTERM while a transfer runs (the backend holds it mid-way until the test has seen
  the listener close): the listener closes (new connections are refused), the running
  transfer finishes intact, then the relay exits 0.
- `network.tcp_idle_timeout = 1`: a silent connection, and a half-closed one, are
  closed after about a second with close=idle-timeout.
- A client that sends and then resets (SO_LINGER 0): the relay closes the backend side
  and logs the connection promptly, with no help from the idle timeout (the uvloop
  trap described in docs/performance.md). The same for a backend that resets.
- A backend that refuses: the client is closed at once, the relay keeps serving.
- `drain_timeout` passes with a transfer still running: the client sees a reset (not
  a clean EOF it could take for a complete transfer), the record says drain-timeout;
  curl reading a close-delimited HTTP/1.0 body fails with exit 56.
- A second SIGTERM/SIGINT while draining: the relay cuts what is left (reset,
  close=shutdown) and exits at once instead of waiting out `drain_timeout`.
- SIGHUP: the config is read again (here: the same), the relay keeps serving.
- `listen = "127.0.0.1:0"`: the bound port is logged and served.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers.peers import (
    EchoServer,
    HeldServer,
    Hold,
    SilentServer,
    StreamServer,
    TcpServer,
    connect,
    duplex,
    read_http_head,
    recv_all,
)
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until

pytestmark = pytest.mark.integration


def idle_config(port: int, remote: str, idle: float) -> str:
    return f"""
[log]
level = "info"
output = "stderr"

[network]
tcp_idle_timeout = {idle}

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{remote}"
"""


def drain_config(port: int, remote: str, drain: float) -> str:
    return f"""
drain_timeout = {drain}

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{remote}"
"""


def slow_server() -> HeldServer:
    """A backend whose transfer is still running: 64 KiB sent, the rest held."""
    return HeldServer()


def rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, float]:
    """Read until the peer closes; return ("eof"|"reset", seconds waited)."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
        return "eof", time.monotonic() - t0
    except ConnectionResetError:
        return "reset", time.monotonic() - t0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_running_transfer(tmp_path: Path, sig: int) -> None:
    total = 1 << 20  # held after 64 KiB until the listener is seen closed
    with StreamServer(total, "concurrent", hold=Hold(64 << 10)) as srv:
        port = free_port()
        with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path) as relay:
            relay.start()
            sock = connect(port, timeout=20)
            try:
                drain_one(relay, sock, port, sig, srv, total)
            finally:
                sock.close()


def drain_one(
    relay: RelayProcess, sock: socket.socket, port: int, sig: int, srv: StreamServer, total: int
) -> None:
    first = sock.recv(1024)  # the transfer is running
    assert first
    assert relay.proc is not None
    relay.proc.send_signal(sig)

    # the listener goes away: new connections are refused
    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, 5, lambda: relay.log)
    assert relay.running, "relay exited before the transfer finished\n" + relay.log
    assert srv.hold is not None
    srv.hold.release()  # the transfer goes on

    # the running transfer finishes intact
    res = duplex(sock, 0, "concurrent")
    assert res.error is None, res.error
    assert len(first) + res.received == total
    # probes accepted before the listener closed reach the backend too, and may finish first
    # (with an error, as their client is gone): wait for ours, the one that ended cleanly
    wait_until(
        lambda: any(r.sent == total and r.error is None for r in srv.results),
        20,
        lambda: str(srv.results),
    )

    assert relay.wait(timeout=15) == 0, relay.log
    drained = [r for r in relay.records() if r["bytes_down"] == total]
    assert drained and drained[0]["close"] == "eof", relay.records()
    # the log sums it up (probes accepted before the listener closed count as drained)
    summary = re.search(r"stopping: (\d+) connection\(s\) drained, 0 cut", relay.log)
    assert summary and int(summary.group(1)) >= 1, relay.log


def test_signal_with_no_connections_exits_promptly(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path) as relay:
            relay.start()
            t0 = time.monotonic()
            assert relay.stop(signal.SIGTERM, timeout=10) == 0, relay.log
            assert time.monotonic() - t0 < 5, relay.log


def test_idle_timeout_closes_silent_connection(tmp_path: Path) -> None:
    with SilentServer() as srv:
        port = free_port()
        with RelayProcess(config=idle_config(port, srv.addr, 1), tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port, timeout=10) as s:
                how, waited = wait_closed(s, timeout=10)
            assert 0.5 <= waited <= 5, (how, waited, relay.log)
            (rec,) = relay.wait_records(1, timeout=5)
            assert rec["close"] == "idle-timeout", rec
            assert relay.running


def test_idle_timeout_reaps_half_closed_connection(tmp_path: Path) -> None:
    """Client sends and half-closes; the backend never answers nor closes."""
    with SilentServer() as srv:
        port = free_port()
        with RelayProcess(config=idle_config(port, srv.addr, 1), tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port, timeout=10) as s:
                s.sendall(b"request")
                s.shutdown(socket.SHUT_WR)
                how, waited = wait_closed(s, timeout=10)
            assert waited <= 5, (how, waited, relay.log)
            (rec,) = relay.wait_records(1, timeout=5)
            assert rec["close"] == "idle-timeout", rec
            assert rec["bytes_up"] == len(b"request"), rec


@pytest.mark.parametrize("size", [0, 100, 4 << 20])
def test_client_reset_closes_backend_side(tmp_path: Path, size: int) -> None:
    """Send then RST, repeatedly: each backend connection must end and each be logged
    within seconds (the idle timeout is left at its 300 s default on purpose)."""
    rounds = 5
    with StreamServer(0, "after_eof", timeout=20) as srv:
        port = free_port()
        with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path) as relay:
            relay.start()
            for _ in range(rounds):
                s = connect(port, timeout=10)
                if size:
                    s.sendall(b"r" * size)
                rst_close(s)
            recs = relay.wait_records(rounds, timeout=10)  # logged promptly, each
            assert len(recs) == rounds
            # every backend connection the relay opened has been closed (EOF or reset)
            wait_until(lambda: len(srv.results) >= srv.connections, 10)
            assert len(srv.results) == srv.connections, (srv.connections, srv.results)
            assert relay.running
            # and the relay still serves
            with connect(port) as s:
                s.sendall(b"still here")
                s.shutdown(socket.SHUT_WR)
                s.settimeout(10)
                s.recv(1)  # StreamServer(0) sends nothing: EOF once it has read all
            last = srv.wait_results(srv.connections, timeout=10)[-1]
            assert last.received == len(b"still here"), last


class ResettingServer(TcpServer):
    """Sends some data, waits until the test has read it (`read`), then resets."""

    def __init__(self) -> None:
        self.read = threading.Event()
        super().__init__()

    def handle(self, sock: socket.socket) -> None:
        sock.sendall(b"partial answer")
        self.read.wait(10)
        rst_close(sock)


def test_backend_reset_closes_client_side(tmp_path: Path) -> None:
    with ResettingServer() as srv:
        port = free_port()
        with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port, timeout=10) as s:
                s.sendall(b"q")
                got = b""
                while len(got) < len(b"partial answer") and (data := s.recv(65536)):
                    got += data
                srv.read.set()  # now the backend resets
                t0 = time.monotonic()
                try:
                    while True:
                        data = s.recv(65536)
                        if not data:
                            break
                        got += data
                except ConnectionResetError:
                    pass
                assert time.monotonic() - t0 < 5
            assert got == b"partial answer"  # read before the backend reset
            (rec,) = relay.wait_records(1, timeout=5)
            assert rec["close"] != "idle-timeout", rec
            assert relay.running


def test_backend_refuses_client_closed_cleanly(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", dead], tmp_path=tmp_path) as relay:
        relay.start()
        for _ in range(3):
            with connect(port, timeout=10) as s:
                how, waited = wait_closed(s, timeout=10)
            assert how == "eof", how  # a FIN, not a reset: nothing was left unread
            assert waited < 5
        recs = relay.wait_records(3, timeout=5)
        assert all(r["close"] == "connect-failed" for r in recs), recs
        assert dead in relay.log
        assert relay.running
        # a client that already sent data is closed too (a reset is acceptable then)
        with connect(port, timeout=10) as s:
            s.sendall(b"hello")
            how, waited = wait_closed(s, timeout=10)
            assert waited < 5
        assert relay.running


def test_drain_deadline_cuts_with_reset(tmp_path: Path) -> None:
    with slow_server() as srv:
        port = free_port()
        with RelayProcess(config=drain_config(port, srv.addr, 1), tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port, timeout=20) as s:
                assert s.recv(1024)  # the transfer runs
                os.kill(relay.pid, signal.SIGTERM)
                how, waited = wait_closed(s, timeout=10)
            assert how == "reset", (how, waited, relay.log)
            assert waited < 5, (waited, relay.log)
            assert relay.wait(timeout=10) == 0, relay.log
            (rec,) = relay.records()
            assert rec["close"] == "drain-timeout", rec
            assert 0 < rec["bytes_down"] < 8 << 20, rec
            assert "stopping: 0 connection(s) drained, 1 cut" in relay.log, relay.log


class SlowHttp10Server(TcpServer):
    """HTTP/1.0 without Content-Length: the body ends when the connection closes, so
    only a reset (not a FIN) tells the client the body was cut. Sends 1 KiB every
    0.05 s until the peer goes away."""

    def handle(self, sock: socket.socket) -> None:
        if read_http_head(sock) is None:
            return
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        with contextlib.suppress(OSError):
            while not self._stop.wait(0.05):
                sock.sendall(b"x" * 1024)


def test_drain_deadline_cut_is_an_error_for_curl(tmp_path: Path) -> None:
    """curl reading a close-delimited body through the relay: the drain cut makes it
    fail (exit 56, "Connection reset"), where a FIN would end it with exit 0."""
    with SlowHttp10Server() as srv:
        port = free_port()
        with RelayProcess(config=drain_config(port, srv.addr, 1), tmp_path=tmp_path) as relay:
            relay.start()
            curl = subprocess.Popen(
                ["curl", "-sS", "-o", "/dev/null", "--max-time", "20", f"http://127.0.0.1:{port}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                wait_until(lambda: srv.connections >= 1, 10, "curl reached the backend")
                os.kill(relay.pid, signal.SIGTERM)
                _, err = curl.communicate(timeout=15)
            finally:
                if curl.poll() is None:
                    curl.kill()
                    curl.wait(5)
            assert curl.returncode == 56, (curl.returncode, err)
            assert "reset" in err.lower(), err
            assert relay.wait(timeout=10) == 0, relay.log
            (rec,) = relay.records()
            assert rec["close"] == "drain-timeout", rec


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_during_drain_exits_at_once(tmp_path: Path, sig: int) -> None:
    with slow_server() as srv:
        port = free_port()
        with RelayProcess(config=drain_config(port, srv.addr, 60), tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port, timeout=20) as s:
                assert s.recv(1024)
                os.kill(relay.pid, sig)
                relay.wait_log("draining for up to 60s", timeout=10)
                assert relay.running
                t0 = time.monotonic()
                os.kill(relay.pid, sig)
                assert relay.wait(timeout=10) == 0, relay.log
                assert time.monotonic() - t0 < 5, relay.log
                how, _ = wait_closed(s, timeout=10)
            assert how == "reset", (how, relay.log)
            (rec,) = relay.records()
            assert rec["close"] == "shutdown", rec


def test_sighup_reloads_and_keeps_serving(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        with RelayProcess(["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path) as relay:
            relay.start()
            for n in (1, 2):
                os.kill(relay.pid, signal.SIGHUP)
                relay.wait_log("reloaded: 1 endpoint(s) switched", count=n, timeout=10)
            assert relay.running, relay.log
            with connect(port, timeout=10) as s:
                s.sendall(b"after hup")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"after hup"
            assert relay.stop(signal.SIGTERM, timeout=10) == 0, relay.log


def test_port_zero_is_logged_and_served(tmp_path: Path) -> None:
    """Two endpoints on port 0: each listener logs the port it got, and serves it."""
    with EchoServer(banner=b"A") as a, EchoServer(banner=b"B") as b:
        config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "{a.addr}"

[[endpoints]]
listen = "127.0.0.1:0"
remote = "{b.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=2)
            assert [(h, place) for h, _, place in relay.listening()] == [
                ("127.0.0.1", "endpoints[0]"),
                ("127.0.0.1", "endpoints[1]"),
            ], relay.log
            for place, banner in (("endpoints[0]", b"A"), ("endpoints[1]", b"B")):
                port = relay.port(place)
                assert port != 0
                with connect(port, timeout=10) as s:
                    s.shutdown(socket.SHUT_WR)
                    assert recv_all(s) == banner
