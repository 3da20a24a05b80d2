"""TLS handshake load: several processes, each doing full handshakes in a loop.

How it works: ``run()`` spawns ``procs`` processes; each one, until its deadline,
connects, performs a full TLS handshake with a server name (no session reuse, so
every connection is a full handshake), sends a one-line HTTP request, reads the
reply to EOF and closes. Names alternate so SNI routing is exercised on every
route. Returns completed handshakes and errors. Verification is off under load (the
integrity check verifies against the run's CA before any timing).
"""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import time
from collections.abc import Mapping

from common import LOOPBACK


def fetch(port: int, name: str, ctx: ssl.SSLContext, timeout: float = 5.0) -> bytes:
    """One full TLS connection to ``port`` with SNI ``name``; returns the reply body."""
    with (
        socket.create_connection((LOOPBACK, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        for _ in range(64):  # bounded: the reply is tiny
            data = tls.recv(4096)
            if not data:
                break
            chunks.append(data)
    reply = b"".join(chunks)
    return reply.partition(b"\r\n\r\n")[2]


def load_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _worker(ports: Mapping[str, int], duration: float, offset: int, out: object) -> None:
    ctx = load_context()
    names = list(ports)
    done = errors = 0
    deadline = time.monotonic() + duration
    i = offset
    while time.monotonic() < deadline:
        name = names[i % len(names)]
        i += 1
        try:
            fetch(ports[name], name, ctx)
            done += 1
        except (OSError, ssl.SSLError):
            errors += 1
            time.sleep(0.001)
    out.put((done, errors))  # type: ignore[attr-defined]


def run(ports: Mapping[str, int], duration: float, procs: int) -> tuple[int, int, float]:
    """(handshakes, errors, elapsed seconds) for ``procs`` processes over ``duration``."""
    mp = multiprocessing.get_context("spawn")
    q = mp.Queue()
    workers = [mp.Process(target=_worker, args=(dict(ports), duration, k, q)) for k in range(procs)]
    for w in workers:
        w.start()
    # the spawn start-up is excluded: each worker times itself from its own start
    done = errors = 0
    for _ in workers:
        d, e = q.get(timeout=duration + 60)
        done += d
        errors += e
    for w in workers:
        w.join(10)
        if w.is_alive():
            w.kill()
    return done, errors, duration
