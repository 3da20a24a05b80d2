"""The accept loop of one endpoint, a service (`snirelay.services.Service`).

A raw non-blocking listening socket; the listener is its watcher in the relay's core
(net.poller), so accepting costs what a connection's events cost. `start()` logs the
address the socket actually bound ("listening on 127.0.0.1:41234 (endpoints[0], tcp)",
so a configured port 0 can be read back) and starts watching.

Each readiness callback accepts up to `BATCH` connections. When the process (EMFILE)
or the system (ENFILE) runs out of descriptors, or memory is short, the listener stops
watching, logs once, and retries after a back-off that doubles up to one second; the
first successful accept resets it. The loop never stops for good (realm's does).

Stopping: `stop()` closes the listening socket (new connections are refused, and a
pending resume becomes a no-op). `drain(deadline)` then waits, looking every
`DRAIN_POLL` seconds, until no live connection of the shared `Context` belongs to this
listener's endpoint; at the deadline, or when the drain is cancelled (a second
SIGTERM), it closes the ones left with a reset (SO_LINGER 0), close reason
`drain-timeout` or `shutdown`, so a client sees a cut transfer as an error, not as a
clean end.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from snirelay.config.model import Addr
from snirelay.net.conn import Connection
from snirelay.net.runtime import Context, EndpointRT
from snirelay.net.sides import RawSide
from snirelay.observe.log import LOG
from snirelay.services import DRAIN_TIMEOUT, SHUTDOWN

BATCH = 64
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
MAX_BACKOFF = 1.0
DRAIN_POLL = 0.05  # seconds between looks at the connections left while draining


def bound_address(sock: socket.socket) -> str:
    """The address a socket is bound to, as written in the config: "127.0.0.1:41234",
    "[::1]:443"."""
    name = sock.getsockname()
    return str(Addr(name[0], name[1]))


class Listener:
    """The TCP listener of one endpoint; `sock` is bound and listening already."""

    __slots__ = (
        "ctx",
        "ep",
        "served",
        "sock",
        "fd",
        "family",
        "backoff",
        "paused",
        "address",
        "place",
    )

    kind = "tcp"

    def __init__(self, ctx: Context, ep: EndpointRT, sock: socket.socket) -> None:
        self.ctx = ctx
        self.ep = ep  # what new connections get; a reload may replace it (switch_to)
        self.served: tuple[EndpointRT, ...] = (ep,)  # and what running ones may still have
        self.sock = sock
        self.fd = sock.fileno()
        self.family = int(sock.family)  # socket.family builds an enum on every read
        self.backoff = 0.0
        self.paused = False
        self.address = bound_address(sock)
        self.place = ep.cfg.place  # log lines name the listener by its bound address

    def start(self) -> None:
        self.ctx.poller.add_reader(self.fd, self)
        LOG.info("listening on %s (%s, %s)", self.address, self.place, self.kind)

    def switch_to(self, ep: EndpointRT) -> None:
        """A reload: new connections get `ep`; running ones keep what they have (and
        only the runtimes some connection still uses are kept: no TLS contexts pile up
        over many reloads)."""
        used = {id(c.ep) for c in self.ctx.conns}
        self.served = (*(e for e in self.served if id(e) in used and e is not ep), ep)
        self.ep = ep
        self.place = ep.cfg.place

    def stop(self) -> None:
        if not self.paused:
            self.ctx.poller.remove_reader(self.fd)
        self.paused = True  # a pending resume timer becomes a no-op
        self.sock.close()

    async def drain(self, deadline: float) -> int:
        """Wait for this listener's connections to end, up to `deadline`; cut the rest.
        Returns how many were cut."""
        loop = self.ctx.loop
        try:
            while self._left() and loop.time() < deadline:
                await asyncio.sleep(min(DRAIN_POLL, max(0.0, deadline - loop.time())))
        except asyncio.CancelledError:
            self._cut(SHUTDOWN)
            raise
        return self._cut(DRAIN_TIMEOUT)

    def _left(self) -> list[Connection]:
        served = self.served
        return [c for c in self.ctx.conns if c.ep in served]

    def _cut(self, reason: str) -> int:
        left = self._left()
        if not left:
            return 0
        LOG.warning(
            "%s: cutting %d connection(s) with a reset (%s)", self.address, len(left), reason
        )
        for conn in left:
            conn.close(reason, reset=True)
        return len(left)

    def on_writable(self) -> None:  # the listening socket is only ever read
        pass

    def abort(self) -> None:
        """Accepting raised (a bug; the poller logged it): keep listening. Each
        connection's start is guarded on its own, so no connection is left half-made."""

    def on_readable(self) -> None:
        # socket._accept() gives the descriptor, so the connection's client side is
        # made directly as a RawSide (socket.accept() would build a socket to discard)
        accept = self.sock._accept  # type: ignore[attr-defined]
        family = self.family
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
                LOG.error("%s: accept failed: %s", self.address, exc)
                return
            if self.backoff:
                LOG.warning("%s: accepting again", self.address)
                self.backoff = 0.0
            side = RawSide(family, socket.SOCK_STREAM, 0, fd)
            side.setblocking(False)
            # The peer address is kept only when something reads it (the log
            # record, iphash): it is the largest object of an idle connection.
            conn = Connection(ctx, ep, side, addr if keep_addr else None)
            try:
                conn.start()
            except Exception:  # one connection never takes the listener down
                LOG.exception(
                    "%s: connection %d failed to start; closing it", self.address, conn.id
                )
                conn.close("internal-error", reset=True)

    def _pause(self, exc: OSError) -> None:
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 or 0.05)
        LOG.warning(
            "%s: cannot accept: %s; pausing %.2fs (raise -n/--nofile or the hard limit)",
            self.address,
            exc.strerror,
            self.backoff,
        )
        self.ctx.poller.remove_reader(self.fd)
        self.paused = True
        self.ctx.poller.call_later(self.backoff, self._resume)

    def _resume(self) -> None:
        if self.sock.fileno() < 0 or not self.paused:
            return
        self.paused = False
        self.ctx.poller.add_reader(self.fd, self)
