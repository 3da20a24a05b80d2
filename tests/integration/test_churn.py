"""Churn: many clients misbehaving at once leave the relay serving, with nothing leaked.

300 connections from 12 threads, each doing one of: a clean echo with half-close, a
reset in the middle of a transfer, a close without reading the answer, a connect that
sends nothing and closes, a reset right after connecting. Afterwards the relay must hold
no more sockets than before (every connection's two sockets closed, whatever happened
to it), log one record per connection, and still echo.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from helpers.peers import EchoServer, connect, recv_all
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until

CONNECTIONS = 300


def sockets_of(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def one_client(port: int, seed: int) -> str:
    rnd = random.Random(seed)
    kind = rnd.choice(["echo", "reset-mid", "no-read", "silent", "reset-now"])
    s = connect(port, timeout=10)
    payload = rnd.randbytes(rnd.randint(1, 300_000))
    if kind == "echo":
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == payload
        s.close()
    elif kind == "reset-mid":
        s.sendall(payload)
        s.recv(1000)
        rst(s)
    elif kind == "no-read":
        s.sendall(payload[:10_000])
        s.close()
    elif kind == "silent":
        s.close()
    else:
        rst(s)
    return kind


def test_misbehaving_clients_leave_nothing_behind(tmp_path: Path) -> None:
    with EchoServer(timeout=20) as srv:
        port = free_port()
        with RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "--log-format", "json"],
            tmp_path=tmp_path,
        ) as relay:
            relay.start()
            before = sockets_of(relay.pid)
            with ThreadPoolExecutor(12) as pool:
                kinds = list(pool.map(lambda i: one_client(port, i), range(CONNECTIONS)))
            assert len(set(kinds)) == 5, kinds  # every behaviour was exercised
            recs = relay.wait_records(CONNECTIONS, timeout=30)
            assert len(recs) == CONNECTIONS
            assert len({r["id"] for r in recs}) == CONNECTIONS
            wait_until(lambda: sockets_of(relay.pid) <= before, 10, lambda: relay.log[-2000:])
            assert sockets_of(relay.pid) == before, relay.log[-2000:]
            assert "internal error" not in relay.log
            with connect(port, timeout=10) as s:
                s.sendall(b"after the storm")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"after the storm"
            assert relay.stop() == 0


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_slow_reader_is_backpressure_not_memory(tmp_path: Path) -> None:
    """A fast backend and a client that reads slowly: the relay stops reading the backend
    instead of buffering; its memory stays flat and every byte arrives in order."""
    size = 48 << 20
    block = random.Random(7).randbytes(1 << 20)
    lst = socket.create_server(("127.0.0.1", 0))
    lst.settimeout(10)

    def serve() -> None:
        conn, _ = lst.accept()
        with conn:
            for _ in range(size // len(block)):
                conn.sendall(block)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(20)
            recv_all(conn)

    with lst, ThreadPoolExecutor(1) as pool:
        port = free_port()
        with RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", f"127.0.0.1:{lst.getsockname()[1]}"],
            tmp_path=tmp_path,
        ) as relay:
            relay.start()
            start_rss = rss_kb(relay.pid)
            done = pool.submit(serve)
            with connect(port, timeout=20) as s:
                got = bytearray()
                peak = start_rss
                t_end = time.monotonic() + 2
                while time.monotonic() < t_end:  # slow: 64 KiB every 10 ms
                    got += s.recv(65536)
                    time.sleep(0.01)
                    peak = max(peak, rss_kb(relay.pid))
                while chunk := s.recv(1 << 20):
                    got += chunk
                s.shutdown(socket.SHUT_WR)
            done.result(timeout=20)
            assert len(got) == size
            assert all(got[i : i + len(block)] == block for i in range(0, size, len(block))), (
                "bytes arrived out of order or altered"
            )
            assert peak - start_rss < 4096, (start_rss, peak)  # KiB: no buffering in Python
            (rec,) = relay.wait_records(1)
            assert rec["bytes_down"] == size and rec["close"] == "eof", rec


def garbage_client(port: int, seed: int) -> None:
    """Random first bytes, often TLS-shaped (0x16 0x03 ...) with random lengths."""
    rnd = random.Random(seed)
    head = rnd.choice(
        [b"", b"\x16\x03\x01", b"\x16\x03\x03\x00", b"\x80", b"GET / HTTP/1.1\r\nHost: "]
    )
    data = head + rnd.randbytes(rnd.randint(0, 3000))
    s = connect(port, timeout=10)
    try:
        s.sendall(data)
        if rnd.random() < 0.5:
            rst(s)
            return
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        recv_all(s)
    except OSError:
        pass  # the relay may close a malformed connection before we finish sending
    s.close()


def test_garbage_first_bytes_on_a_routed_endpoint(tmp_path: Path) -> None:
    """Random and TLS-shaped garbage: each connection ends with a record, none hangs,
    nothing leaks, and the relay still routes a real request afterwards."""
    with EchoServer(timeout=20) as srv:
        port = free_port()
        config = f"""
[network]
sniff_timeout = 2

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "{srv.addr}"
"""
        with RelayProcess(["--log-format", "json"], config=config, tmp_path=tmp_path) as relay:
            relay.start()
            before = sockets_of(relay.pid)
            with ThreadPoolExecutor(12) as pool:
                list(pool.map(lambda i: garbage_client(port, i), range(200)))
            recs = relay.wait_records(200, timeout=30)
            closes = {r["close"] for r in recs}
            assert closes <= {
                "eof",
                "reset",
                "broken-pipe",
                "malformed",
                "too-large",
                "sniff-timeout",
                "client-eof-before-hello",
            }, closes
            wait_until(lambda: sockets_of(relay.pid) <= before, 10, lambda: relay.log[-2000:])
            assert sockets_of(relay.pid) == before
            assert "internal error" not in relay.log
            with connect(port, timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: emby.example.com\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s).startswith(b"GET / HTTP/1.1")
            rec = relay.wait_records(201)[-1]
            assert rec["route"] == "endpoints[0].routes[0]", rec
