"""Small threaded loopback peers for tests: echo, and a sink/source that hashes.

How it works: `TcpServer` listens on 127.0.0.1 (or ::1) port 0 and runs one thread
per accepted connection with `handle(sock)`; every socket has a timeout, the accept
loop polls a stop flag, and `close()` shuts the listener and every open connection
and joins the threads with a deadline.

Data is a deterministic pseudo-random stream: one 4 MiB block from `os.urandom`,
made once per process, sent over and over with a counter stamped into the first
8 bytes of each round so no two blocks are equal. Both ends hash what they send and
what they receive with sha256, so a test compares `a.sent_sha == b.received_sha`.

`duplex(sock, n, mode)` is the one transfer routine for clients and servers:

- ``"concurrent"``: start sending `n` bytes at once (then ``shutdown(SHUT_WR)``)
  while reading until EOF;
- ``"after_eof"``: read until the peer half-closes, then send `n` bytes and
  half-close ourselves.

A `Hold(at)` stops a sender after `at` bytes until the test calls `release()` (or
the hold's timeout passes, an error): a transfer that is known to be still running
while the test does something, without guessing how long "slow" must be.

`StreamServer(send_bytes, mode)` runs `duplex` per connection and keeps each
connection's `StreamResult`; `EchoServer(banner=...)` echoes until EOF, optionally
greeting with a banner first so a client can tell which backend it reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

BLOCK_SIZE = 4 << 20
RECV_SIZE = 1 << 20
SEND_CHUNK = 1 << 20

Mode = Literal["concurrent", "after_eof"]

_block: bytes | None = None
_block_lock = threading.Lock()


def data_block() -> bytes:
    """The 4 MiB random block every stream is built from (made once per process)."""
    global _block
    with _block_lock:
        if _block is None:
            _block = os.urandom(BLOCK_SIZE)
        return _block


def stream_sha256(nbytes: int) -> str:
    """The sha256 of the first `nbytes` of the deterministic stream (what `send_stream` sends)."""
    h = hashlib.sha256()
    for view in _ChunkIter(nbytes, bytearray(data_block())):
        h.update(view)
    return h.hexdigest()


class _ChunkIter:
    """Yields memoryviews over `buf` (a private copy of the block), restamping the
    round counter every BLOCK_SIZE bytes. A view is valid until the next one."""

    def __init__(self, nbytes: int, buf: bytearray) -> None:
        self.left = nbytes
        self.buf = buf
        self.view = memoryview(buf)
        self.pos = BLOCK_SIZE  # forces a stamp on the first call
        self.round = -1

    def __iter__(self) -> _ChunkIter:
        return self

    def __next__(self) -> memoryview:
        if self.left <= 0:
            raise StopIteration
        if self.pos >= BLOCK_SIZE:
            self.round += 1
            struct.pack_into("!Q", self.buf, 0, self.round)
            self.pos = 0
        n = min(SEND_CHUNK, BLOCK_SIZE - self.pos, self.left)
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        self.left -= n
        return chunk


def connect(port: int, host: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    """A connected TCP socket with `timeout` set on every operation."""
    return socket.create_connection((host, port), timeout=timeout)


class Hold:
    """A sender pauses after `at` bytes until `release()`; `reached` is set when it got
    there. Waiting longer than `timeout` raises TimeoutError in the sender."""

    def __init__(self, at: int, timeout: float = 30) -> None:
        self.at = at
        self.timeout = timeout
        self.reached = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def wait(self) -> None:
        self.reached.set()
        if not self._released.wait(self.timeout):
            raise TimeoutError(f"sender held at {self.at} bytes: not released in {self.timeout}s")


def send_stream(sock: socket.socket, nbytes: int, *, hold: Hold | None = None) -> str:
    """Send `nbytes` of the deterministic stream; return its sha256. With `hold`,
    stop after `hold.at` bytes until it is released."""
    h = hashlib.sha256()
    sent = 0
    for chunk in _ChunkIter(nbytes, bytearray(data_block())):
        h.update(chunk)
        if hold is not None and sent <= hold.at < sent + len(chunk):
            cut = hold.at - sent
            sock.sendall(chunk[:cut])
            hold.wait()
            sock.sendall(chunk[cut:])
        else:
            sock.sendall(chunk)
        sent += len(chunk)
    return h.hexdigest()


def recv_stream(sock: socket.socket, limit: int | None = None) -> tuple[int, str]:
    """Read until EOF (or `limit` bytes); return (count, sha256)."""
    h = hashlib.sha256()
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    total = 0
    while limit is None or total < limit:
        want = RECV_SIZE if limit is None else min(RECV_SIZE, limit - total)
        n = sock.recv_into(view, want)
        if n == 0:
            break
        h.update(view[:n])
        total += n
    return total, h.hexdigest()


def recv_all(sock: socket.socket, limit: int = 1 << 24) -> bytes:
    """Read until EOF and return the bytes (for small replies)."""
    parts: list[bytes] = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts)


@dataclass
class StreamResult:
    sent: int = 0
    sent_sha: str = ""
    received: int = 0
    received_sha: str = ""
    error: BaseException | None = None
    elapsed: float = 0.0


def duplex(
    sock: socket.socket,
    send_bytes: int,
    mode: Mode = "concurrent",
    *,
    hold: Hold | None = None,
) -> StreamResult:
    """Send `send_bytes` and receive until EOF, half-closing after sending (see module doc).

    Errors are caught and stored in `.error` (the first one wins); the socket is
    left open for the caller to close.
    """
    res = StreamResult()
    t0 = time.monotonic()

    def do_send() -> None:
        try:
            res.sent_sha = send_stream(sock, send_bytes, hold=hold)
            res.sent = send_bytes
            sock.shutdown(socket.SHUT_WR)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            if res.error is None:
                res.error = e

    def do_recv() -> None:
        try:
            res.received, res.received_sha = recv_stream(sock)
        except BaseException as e:  # noqa: BLE001
            if res.error is None:
                res.error = e

    if mode == "concurrent":
        writer = threading.Thread(target=do_send, name="duplex-send", daemon=True)
        writer.start()
        do_recv()
        timeout = sock.gettimeout()
        writer.join(None if timeout is None else timeout * 2 + 60)
        if writer.is_alive() and res.error is None:
            res.error = TimeoutError("sender thread did not finish")
    else:
        do_recv()
        if res.error is None:
            do_send()
    res.elapsed = time.monotonic() - t0
    return res


class TcpServer:
    """Threaded TCP server on loopback, port 0; subclasses implement `handle`."""

    def __init__(self, host: str = "127.0.0.1", *, timeout: float = 60, backlog: int = 512):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.timeout = timeout
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(backlog)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.connections = 0  # accepted so far
        self.clients: list[tuple[str, int]] = []  # peer address of each accepted connection
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="peer-accept", daemon=True)
        self._acceptor.start()

    @property
    def addr(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.wait(0.01):  # e.g. EMFILE: back off, unless stopping
                    return
                continue
            sock.settimeout(self.timeout)
            with self._lock:
                self.connections += 1
                self.clients.append((peer[0], peer[1]))
                self._open.add(sock)
            t = threading.Thread(target=self._run, args=(sock,), name="peer-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handle(sock)
        except BaseException as e:  # noqa: BLE001 - kept for the test to inspect
            with self._lock:
                self.errors.append(e)
        finally:
            with self._lock:
                self._open.discard(sock)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()
        with self._lock:
            open_socks = list(self._open)
        for s in open_socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EchoServer(TcpServer):
    """Echoes every byte back; half-closes after the client's EOF. With `banner`,
    sends it first (so the client learns which backend it reached)."""

    def __init__(self, host: str = "127.0.0.1", *, banner: bytes = b"", timeout: float = 60):
        self.banner = banner
        super().__init__(host, timeout=timeout)

    def handle(self, sock: socket.socket) -> None:
        if self.banner:
            sock.sendall(self.banner)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class StreamServer(TcpServer):
    """Sink and source: runs `duplex(sock, send_bytes, mode)` per connection and
    appends its `StreamResult` to `results` (see `wait_results`). With `hold`, every
    connection's sender pauses at `hold.at` bytes until `hold.release()`."""

    def __init__(
        self,
        send_bytes: int = 0,
        mode: Mode = "after_eof",
        host: str = "127.0.0.1",
        *,
        timeout: float = 60,
        hold: Hold | None = None,
    ):
        self.send_bytes = send_bytes
        self.mode: Mode = mode
        self.hold = hold
        self.results: list[StreamResult] = []
        self._done = threading.Condition()
        super().__init__(host, timeout=timeout)

    def handle(self, sock: socket.socket) -> None:
        res = duplex(sock, self.send_bytes, self.mode, hold=self.hold)
        with self._done:
            self.results.append(res)
            self._done.notify_all()

    def wait_results(self, count: int = 1, timeout: float = 60) -> list[StreamResult]:
        """Wait until `count` connections finished; return the results (AssertionError if not)."""
        with self._done:
            ok = self._done.wait_for(lambda: len(self.results) >= count, timeout)
            if not ok:
                raise AssertionError(
                    f"{len(self.results)} of {count} server connections finished in {timeout}s"
                )
            return list(self.results)


class SilentServer(TcpServer):
    """Accepts and holds connections: never writes and never closes first. It reads
    and discards; after the peer's EOF it keeps its side open until the server is
    closed, the peer resets, or `timeout` passes."""

    def handle(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            return
        self._stop.wait(self.timeout)


class HeldServer(StreamServer):
    """A transfer that is still running: streams 64 KiB of 8 MiB, then holds the rest
    until the server is closed (for drain and signal tests)."""

    def __init__(self) -> None:
        super().__init__(8 << 20, "concurrent", hold=Hold(64 << 10, timeout=60))

    def close(self) -> None:
        assert self.hold is not None
        self.hold.release()  # the held sender finds its connection gone and ends
        super().close()


def read_http_head(sock: socket.socket) -> bytes | None:
    """Read an HTTP request head (up to the blank line); None if the peer closes first."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        head += chunk
    return head
