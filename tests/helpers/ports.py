"""Loopback port helpers: runs of consecutive free ports and echo servers that say
which port they are (for port-range and multi-backend tests)."""

from __future__ import annotations

import contextlib
import errno
import random
import socket
import threading
from collections.abc import Iterator


class PortEchoes:
    """Echo servers on the given fixed ports of 127.0.0.1; each greets with
    ``b"<port>\\n"`` first. One accept thread per port, one thread per connection."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.ports = [s.getsockname()[1] for s in socks]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for s in socks:
            s.listen(128)
            s.settimeout(0.1)
            t = threading.Thread(target=self._accept, args=(s,), daemon=True)
            t.start()
            self._threads.append(t)

    def _accept(self, lsock: socket.socket) -> None:
        port = lsock.getsockname()[1]
        while not self._stop.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c, port), daemon=True)
            t.start()
            self._threads.append(t)

    @staticmethod
    def _serve(c: socket.socket, port: int) -> None:
        with c:
            c.settimeout(10)
            try:
                c.sendall(f"{port}\n".encode())
                while data := c.recv(65536):
                    c.sendall(data)
                c.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(5)
        for s in self.socks:
            s.close()


def bind_consecutive(n: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """`n` sockets bound to n consecutive ports (not listening yet).

    Tried below the ephemeral range (32768+), where outbound connections of a busy
    machine take every other port."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000)
        socks: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, p))
            return socks
        except OSError as exc:
            for s in socks:
                s.close()
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError(f"no {n} consecutive free ports found")


def free_consecutive(n: int) -> int:
    """The first of `n` consecutive ports that were free a moment ago."""
    socks = bind_consecutive(n)
    base = int(socks[0].getsockname()[1])
    for s in socks:
        s.close()
    return base


@contextlib.contextmanager
def port_echoes(n: int) -> Iterator[PortEchoes]:
    srv = PortEchoes(bind_consecutive(n))
    try:
        yield srv
    finally:
        srv.close()
