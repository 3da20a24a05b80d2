"""The accept loop: a raw non-blocking listening socket watched with `add_reader`.

Each readiness callback accepts up to `BATCH` connections. When the process (EMFILE)
or the system (ENFILE) runs out of descriptors, or memory is short, the listener stops
watching, logs once, and retries after a back-off that doubles up to one second; the
first successful accept resets it. The loop never stops for good (realm's does).
"""

from __future__ import annotations

import errno
import socket

from snirelay.net.conn import Connection
from snirelay.net.runtime import Context, EndpointRT
from snirelay.net.sides import RawSide
from snirelay.observe.log import LOG

BATCH = 64
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
MAX_BACKOFF = 1.0


class Listener:
    __slots__ = ("ctx", "ep", "sock", "fd", "backoff", "paused", "name")

    def __init__(self, ctx: Context, ep: EndpointRT, sock: socket.socket) -> None:
        self.ctx = ctx
        self.ep = ep
        self.sock = sock
        self.fd = sock.fileno()
        self.backoff = 0.0
        self.paused = False
        self.name = str(ep.cfg.listen)

    def start(self) -> None:
        self.ctx.loop.add_reader(self.fd, self._on_accept)

    def close(self) -> None:
        if not self.paused:
            self.ctx.loop.remove_reader(self.fd)
        self.paused = True  # a pending resume timer becomes a no-op
        self.sock.close()

    def _on_accept(self) -> None:
        # socket._accept() gives the descriptor, so the connection's client side is
        # made directly as a RawSide (socket.accept() would build a socket to discard)
        accept = self.sock._accept  # type: ignore[attr-defined]
        family = self.sock.family
        ctx, ep = self.ctx, self.ep
        keep_addr = ctx.keep_addr
        for _ in range(BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    self._pause(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    continue
                LOG.error("%s: accept failed: %s", self.name, exc)
                return
            if self.backoff:
                LOG.warning("%s: accepting again", self.name)
                self.backoff = 0.0
            side = RawSide(family, socket.SOCK_STREAM, 0, fd)
            side.setblocking(False)
            # The peer address is kept only when something reads it (the log
            # record, iphash): it is the largest object of an idle connection.
            conn = Connection(ctx, ep, side, addr if keep_addr else None)
            try:
                conn.start()
            except Exception:  # one connection never takes the listener down
                LOG.exception("%s: connection %d failed to start; closing it", self.name, conn.id)
                conn.close("internal-error", reset=True)

    def _pause(self, exc: OSError) -> None:
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 or 0.05)
        LOG.warning(
            "%s: cannot accept: %s; pausing %.2fs (raise -n/--nofile or the hard limit)",
            self.name,
            exc.strerror,
            self.backoff,
        )
        self.ctx.loop.remove_reader(self.fd)
        self.paused = True
        self.ctx.loop.call_later(self.backoff, self._resume)

    def _resume(self) -> None:
        if self.sock.fileno() < 0 or not self.paused:
            return
        self.paused = False
        self.ctx.loop.add_reader(self.fd, self._on_accept)
