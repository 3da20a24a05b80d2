"""A blocking TLS end over a real socket, with the socket methods the stream tests use.

`TlsEnd` wraps a connected socket in an `ssl.SSLObject` over memory BIOs (not
`SSLSocket`, whose `unwrap()` waits for the peer's close_notify and so cannot
half-close). It offers `sendall`, `send` (non-blocking when the socket is: one record
per call, its ciphertext kept until the socket takes it), `recv` (b"" at the peer's
close_notify or a TCP EOF; a reset raises ConnectionResetError), `shutdown(SHUT_WR)`
(close_notify, then a TCP FIN, written from a thread so that it never blocks, as a
FIN is queued by the kernel; the peer may go on sending), `setsockopt`,
`setblocking` and `close`. One thread may send while another receives: the SSL object
is used under a lock, never held across a blocking socket call.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

RECORD = 16 * 1024


class TlsEnd:
    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, *, server_hostname: str | None = None
    ) -> None:
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = server_hostname is None
        self.obj = ctx.wrap_bio(
            self.inc, self.out, server_side=server, server_hostname=server_hostname
        )
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()  # ciphertext goes out in the order it was made
        self.backlog = b""
        self.closer: threading.Thread | None = None

    def handshake(self) -> None:
        while True:
            try:
                with self.lock:
                    self.obj.do_handshake()
                self._flush_blocking()
                return
            except ssl.SSLWantReadError:
                self._flush_blocking()
                self._feed()

    def _feed(self) -> bool:
        data = self.sock.recv(1 << 18)
        with self.lock:
            if data:
                self.inc.write(data)
            else:
                self.inc.write_eof()
        return bool(data)

    def _take_out(self) -> bytes:
        with self.lock:
            return self.out.read()

    def _flush_blocking(self) -> None:
        with self.send_lock:
            data = self.backlog + self._take_out()
            self.backlog = b""
            if data:
                self.sock.sendall(data)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 4 * RECORD):
            with self.lock:
                self.obj.write(view[i : i + 4 * RECORD])
            self._flush_blocking()

    def send(self, data: bytes | memoryview) -> int:
        """Non-blocking use: BlockingIOError while earlier ciphertext is still queued."""
        with self.send_lock:
            if self.backlog:
                k = self.sock.send(self.backlog)  # BlockingIOError: still full
                self.backlog = self.backlog[k:]
                if self.backlog:
                    raise BlockingIOError("TLS backlog")
            with self.lock:
                n = self.obj.write(data[:RECORD])
                cipher = self.out.read()
            try:
                k = self.sock.send(cipher)
            except BlockingIOError:
                k = 0
            self.backlog = cipher[k:]
            return n

    def recv(self, n: int) -> bytes:
        while True:
            with self.lock:
                try:
                    return self.obj.read(n)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
            if not self._feed():
                with self.lock:
                    try:
                        return self.obj.read(n)
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ssl.SSLWantReadError):
                        return b""

    def shutdown(self, how: int) -> None:
        """close_notify and a FIN, queued as the kernel queues a FIN: what is still to
        be written goes out from a thread, so this never blocks on a peer that does not
        read yet."""
        assert how == socket.SHUT_WR
        # unwrap() calls SSL_shutdown twice and the second call fails on (and drops)
        # application data already buffered (see net/tls.py): wait until a receiving
        # thread has drained what it fed in (bounded)
        deadline = time.monotonic() + 10
        while True:
            with self.lock:
                if not self.inc.pending and not self.obj.pending():
                    try:
                        self.obj.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("buffered TLS data was never read: cannot close_notify")
            time.sleep(0.001)
        self.closer = threading.Thread(target=self._finish, daemon=True)
        self.closer.start()

    def _finish(self) -> None:
        try:
            self._flush_blocking()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is gone: its reads say so

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        if self.closer is not None:
            self.closer.join(10)
        self.sock.close()
