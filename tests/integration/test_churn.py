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
            deadline = time.monotonic() + 10
            while sockets_of(relay.pid) > before and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sockets_of(relay.pid) == before, relay.log[-2000:]
            assert "internal error" not in relay.log
            with connect(port, timeout=10) as s:
                s.sendall(b"after the storm")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"after the storm"
            assert relay.stop() == 0
