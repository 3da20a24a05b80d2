"""The phases of one relayed TCP connection before the pump, each a small unit.

How it works
------------
The path of a connection (net.conn drives it; docs/discussion/connection-phases.md
draws it)::

    accept -> [PROXY header in] -> [sniff] -> decide -> [pre-connect hook]
           -> connect (failover) -> [handshakes, per side] -> [replay sniffed bytes]
           -> pump -> closed (one record)

A phase object is the poller's watcher for the sockets it waits on and the target of
the connection's deadline (`on_deadline`) while it runs; it ends by handing over to the
next phase through the connection (`conn.decided`, `conn.connected`, `conn.replayed`).
Each phase has one deadline from the config:

=========  ============================  =========================================
phase      deadline                      on expiry
=========  ============================  =========================================
proxy      network.accept_proxy_timeout  close "proxy-timeout"
sniff      network.sniff_timeout         decide on what arrived (timeout rules)
hook       network.sniff_timeout         close "hook-timeout"
           (the endpoint's, again)
connect    network.tcp_timeout, each     the next address / remote (failover)
           remote (resolution + connect)
handshake  network.tls_handshake_timeout close "tls-handshake-timeout"
           (TLS, WebSocket upgrade)      (or "ws-handshake-timeout")
replay     network.replay_timeout        close "replay-timeout"
pump       network.tcp_idle_timeout      close "idle-timeout"
=========  ============================  =========================================

Phases that a connection does not need cost nothing: no routes, no sniff phase; no
`pre_conn_hook`, no hook phase (one attribute check); raw sides, no handshake phase;
nothing sniffed, no replay phase.

Few wakes and few `epoll_ctl` calls, by design: the sniff phase first reads at accept
(routed listeners set TCP_DEFER_ACCEPT, so the ClientHello is usually there already)
and registers the client only if nothing came; the connect phase writes the sniffed
bytes right after a non-blocking `connect()` (on a fast path the connection is already
up) and checks whether a plain connection is up before waiting for writability; so a
routed passthrough connection on a fast path registers each socket once, for the pump.

Error handling: a phase never raises into the loop for an expected failure: it closes
the connection with a reason naming what failed (the record's `phase` says where).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snirelay.net.resolve import SockTarget
from snirelay.net.sides import DONE, WANT_READ
from snirelay.net.sockopt import outbound_socket
from snirelay.observe.log import LOG
from snirelay.routing import SniffTimeout
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.proxy import parse_proxy_header
from snirelay.wire.sniff import Sniffer

if TYPE_CHECKING:
    from snirelay.net.conn import Connection
    from snirelay.net.hook import Hook
    from snirelay.net.sides import RawSide

_FIRST = (0,)  # the balancer order of an upstream with one remote


def fmt_addr(sa: Any) -> str:
    host, port = sa[0], sa[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def close_reason(exc: OSError) -> str:
    """The record's `close` field for a socket error."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    return f"error: {exc}"


class Phase:
    """What every phase is to the poller and the wheel; a no-op by default."""

    __slots__ = ("conn",)
    name = "?"

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def on_readable(self) -> None:
        pass

    def on_writable(self) -> None:
        pass

    def on_deadline(self) -> None:
        pass

    def release(self) -> None:
        """The connection closes while this phase runs: free what only it holds."""

    def abort(self) -> None:
        """A callback of this phase raised (a bug): close the connection, keep serving."""
        self.conn.close("internal-error", reset=True)


class _ClientRead(Phase):
    """A phase that reads the client's first bytes until it has what it needs, with a
    deadline: it reads at once (the bytes are often there already), and only if that
    was not enough arms the deadline and watches the socket. `feed(data)` is the
    phase's own; `eof()` says what the client closing now means."""

    __slots__ = ("watching",)

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.watching = False

    def start(self, timeout: float) -> None:
        conn = self.conn
        self.on_readable()
        if conn.phase is self:  # not done yet (nor closed): wait, with a deadline
            conn.ctx.wheel.after(conn, timeout)
            conn.ctx.poller.add_reader(conn.client.fd, self)
            self.watching = True

    def on_readable(self) -> None:
        conn = self.conn
        try:
            data = conn.client.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            conn.close(close_reason(exc))
            return
        if not data:
            self.eof()
            return
        self.feed(data)

    def feed(self, data: bytes) -> bool:
        raise NotImplementedError

    def eof(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        if self.watching:
            self.conn.ctx.poller.remove_reader(self.conn.client.fd)
            self.watching = False


class ProxyIn(_ClientRead):
    """`accept_proxy`: read the client's whole PROXY v1/v2 header (wire.proxy) before
    anything else; what follows it is the client's stream (handed on to the sniff
    phase, or replayed to the backend). No header, a bad one, or none within
    `accept_proxy_timeout` closes the connection with the reason."""

    __slots__ = ("buf",)
    name = "proxy"

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.buf = b""

    def feed(self, data: bytes) -> bool:
        conn = self.conn
        self.buf += data
        try:
            res = parse_proxy_header(self.buf)
        except ProtocolError as exc:
            conn.close("proxy-header", f"not a valid PROXY header: {exc}")
            return True
        if isinstance(res, NeedData):
            return False
        self.release()
        conn.ctx.wheel.cancel(conn)
        conn.proxied(res, self.buf[res.size :])
        return True

    def eof(self) -> None:
        self.conn.close("proxy-header", "the client closed before its PROXY header")

    def on_deadline(self) -> None:
        tmo = self.conn.ep.cfg.upstream.network.accept_proxy_timeout
        self.conn.close("proxy-timeout", f"no whole PROXY header within {tmo:g}s")


class Sniff(_ClientRead):
    """Read the client's first bytes until the route can be decided."""

    __slots__ = ("sniffer",)
    name = "sniff"

    def __init__(self, conn: Connection, max_bytes: int) -> None:
        super().__init__(conn)
        self.sniffer = Sniffer(max_bytes)

    def start(self, timeout: float, initial: bytes = b"") -> None:
        """`initial`: bytes of the client's stream already read (after a PROXY header);
        the hello is often there already too (TCP_DEFER_ACCEPT)."""
        if initial and self.feed(initial):
            return
        super().start(timeout)

    def eof(self) -> None:
        self.conn.close("client-eof-before-hello")

    def feed(self, data: bytes) -> bool:
        """Feed the sniffer; True when that decided."""
        try:
            res = self.sniffer.feed(data)
        except ProtocolError as exc:
            self._done(exc)
            return True
        if isinstance(res, NeedData):
            return False
        self._done(res)
        return True

    def on_deadline(self) -> None:
        self._done(SniffTimeout(len(self.sniffer.data)))

    def _done(self, seen: Any) -> None:
        self.release()
        self.conn.decided(seen, self.sniffer.data)  # the sniffer is done with its buffer


class PreConnHook(_ClientRead):
    """`pre_conn_hook` (net.hook): hold the client's first `first_len` bytes, ask the
    hook which remote (or none), and go on with that one remote only. It starts from
    the bytes already read (the connection's `prefix`, or `tls_in` for an upstream
    that terminates), reads until it has `first_len` within the endpoint's
    `network.sniff_timeout`, and consumes nothing: every byte read goes on to the
    backend (or the client's TLS / WebSocket side) as before."""

    __slots__ = ("hook", "buf")
    name = "hook"

    def __init__(self, conn: Connection, hook: Hook) -> None:
        super().__init__(conn)
        self.hook = hook
        self.buf = bytearray()

    def start(self, timeout: float) -> None:
        conn = self.conn
        held = conn.tls_in if conn.upstream.terminates else conn.prefix
        if len(held) >= self.hook.first_len:  # the usual case: sniffed, or a length of 0
            self._decide(held)
            return
        self.buf += held
        super().start(timeout)

    def feed(self, data: bytes) -> bool:
        self.buf += data
        if len(self.buf) < self.hook.first_len:
            return False
        self.release()
        self.conn.ctx.wheel.cancel(self.conn)
        self._decide(self.buf)
        return True

    def _decide(self, data: bytes | bytearray) -> None:
        """Call the hook with exactly `first_len` bytes and apply its answer."""
        conn = self.conn
        hook = self.hook
        top = len(conn.upstream.cfg.remotes) - 1  # len(extra_remotes): realm's max_remote_idx
        k = hook.decide(top, bytes(data[: hook.first_len]))
        if 0 <= k <= top:
            conn.hooked(k, data)
            return
        where = conn.upstream.where
        if k < 0:
            LOG.info("conn %d: the pre-connect hook refused it (answer %d, %s)", conn.id, k, where)
            conn.close("hook-refused", f"the pre-connect hook answered {k}: refused")
            return
        LOG.warning(
            "conn %d: the pre-connect hook answered %d, outside 0..%d (%s: remote and %d"
            " extra_remotes): refused",
            conn.id, k, top, where, top,
        )  # fmt: skip
        conn.close("hook-refused", f"the pre-connect hook answered {k}, outside 0..{top}")

    def eof(self) -> None:
        n = self.hook.first_len
        self.conn.close(
            "hook-eof",
            f"the client closed after {len(self.buf)} of the {n} bytes the pre-connect hook reads",
        )

    def on_deadline(self) -> None:
        n = self.hook.first_len
        tmo = self.conn.ep.cfg.upstream.network.sniff_timeout
        self.conn.close(
            "hook-timeout",
            f"the client sent {len(self.buf)} of the {n} bytes the pre-connect hook reads"
            f" within {tmo:g}s (sniff_timeout)",
        )


class Connect(Phase):
    """Balancer order -> resolve -> connect each address in turn, failing over."""

    __slots__ = ("order", "oi", "cur", "targets", "ti", "sock", "sa", "last_error", "gen", "t")
    name = "connect"

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.order: Sequence[int] = _FIRST
        self.oi = 0
        self.cur = 0
        self.targets: list[SockTarget] = []
        self.ti = 0
        self.sock: RawSide | None = None  # the socket whose connect is in progress
        self.sa: Any = None
        self.last_error = ""
        self.gen = 0  # tells a late name-resolution answer from the current one
        self.t = 0.0  # when the current remote's try began (kept when observed)

    def start(self) -> None:
        conn = self.conn
        up = conn.upstream
        if len(up.cfg.remotes) > 1:
            if conn.pick >= 0:  # the pre-connect hook chose: that remote only
                self.order = (conn.pick,)
            else:
                ip = conn.caddr[0] if conn.caddr is not None else ""
                self.order = up.balancer.order(ip, conn.ctx.loop.time())
        self._next_remote()

    def _next_remote(self) -> None:
        conn = self.conn
        if self.oi >= len(self.order):
            conn.close("connect-failed", "no remote accepted the connection")
            return
        self.cur = self.order[self.oi]
        self.oi += 1
        if conn.ctx.on_remote_tried:
            self.t = conn.ctx.loop.time()
        up = conn.upstream
        fixed = up.targets[self.cur]
        if fixed is not None:
            self._resolved(self.gen, fixed)
            return
        addr = up.cfg.remotes[self.cur]
        self.gen += 1
        gen = self.gen
        conn.ctx.wheel.after(conn, up.cfg.network.tcp_timeout)  # resolution has a deadline too
        conn.ctx.resolver.resolve(addr.host, addr.port, lambda res: self._resolved(gen, res))

    def _resolved(self, gen: int, res: list[SockTarget] | OSError) -> None:
        if gen != self.gen or self.conn.phase is not self:
            return  # this lookup timed out already, or the connection moved on or closed
        if isinstance(res, OSError):
            self.last_error = str(res)
            self._remote_failed()
            return
        self.targets = res
        self.ti = 0
        self._try_target()

    def _remote_failed(self) -> None:
        conn = self.conn
        up = conn.upstream
        if len(up.cfg.remotes) > 1:
            up.balancer.failed(self.cur, conn.ctx.loop.time())
        name = str(up.cfg.remotes[self.cur])
        if conn.failed_remotes is None:
            conn.failed_remotes = []
        conn.failed_remotes.append(f"{name} ({self.last_error})")
        LOG.debug("conn %d: remote %s failed: %s", conn.id, name, self.last_error)
        self._tell(self.last_error)
        self._next_remote()

    def _tell(self, error: str | None) -> None:
        """The observers' `remote_tried` event for the current remote."""
        ctx = self.conn.ctx
        if ctx.on_remote_tried:
            took = ctx.loop.time() - self.t
            for cb in ctx.on_remote_tried:
                cb(self.conn, self.cur, error, took)

    def _try_target(self) -> None:
        conn = self.conn
        up = conn.upstream
        while self.ti < len(self.targets):
            fam, sa = self.targets[self.ti]
            self.ti += 1
            try:
                s = outbound_socket(fam, up.cfg.network, up.through, up.cfg.interface)
            except OSError as exc:
                LOG.warning("conn %d: cannot create socket for %s: %s", conn.id, fmt_addr(sa), exc)
                self.last_error = f"{fmt_addr(sa)}: {exc.strerror or exc}"
                continue
            err = s.connect_ex(sa)
            if err == 0:
                self._up(s, sa)
                return
            if err == errno.EINPROGRESS:
                try:
                    up_now = self._up_already(s)
                except OSError as exc:  # refused at once (loopback): the next address
                    s.close()
                    self.last_error = f"{fmt_addr(sa)}: {exc.strerror or exc}"
                    continue
                if up_now:
                    self._up(s, sa)
                    return
                self.sock, self.sa = s, sa
                conn.ctx.poller.add_writer(s.fd, self)
                conn.ctx.wheel.after(conn, up.cfg.network.tcp_timeout)
                return
            s.close()
            self.last_error = f"{fmt_addr(sa)}: {os.strerror(err)}"
        self._remote_failed()

    def _up_already(self, s: RawSide) -> bool:
        """Is a connect that said EINPROGRESS already done? On a fast path (loopback, a
        LAN) it is: then no writability wait. With sniffed bytes to replay, try to send
        them (a send on a connection still being set up says EAGAIN). Raises OSError
        when the connect already failed (the send consumed the socket's error, so it
        must be reported here, not by a later SO_ERROR)."""
        conn = self.conn
        if conn.prefix and conn.upstream.client_tls is None:  # over TLS: after its handshake
            try:
                conn.sent = s.send(conn.prefix)
            except BlockingIOError:
                return False
            return True
        try:
            s.getpeername()
        except OSError:
            return False
        return True

    def on_writable(self) -> None:
        s = self.sock
        assert s is not None
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.last_error = f"{fmt_addr(self.sa)}: {os.strerror(err)}"
            self._drop()
            self._try_target()
            return
        self.sock = None
        self._up(s, self.sa)

    def on_deadline(self) -> None:
        tmo = self.conn.upstream.cfg.network.tcp_timeout
        if self.sock is None:
            self.gen += 1  # the lookup's answer, if it ever comes, is ignored
            self.last_error = f"name resolution timed out after {tmo:g}s"
            self._remote_failed()
            return
        self.last_error = f"{fmt_addr(self.sa)}: connect timed out after {tmo:g}s"
        self._drop()
        self._try_target()

    def _drop(self) -> None:
        s = self.sock
        if s is not None:
            self.conn.ctx.poller.forget(s.fd)  # closing drops it from the epoll set
            s.close()
            self.sock = None

    def release(self) -> None:
        """The connection closed during this phase: close the half-made socket."""
        self._drop()

    def _up(self, s: RawSide, sa: Any) -> None:
        conn = self.conn
        up = conn.upstream
        if len(up.cfg.remotes) > 1:
            up.balancer.succeeded(self.cur)
        conn.ctx.wheel.cancel(conn)
        if conn.ctx.on_remote_tried:  # (no call on the hot path without observers)
            self._tell(None)
        conn.connected(s, sa, up.cfg.remotes[self.cur].host)


class Replay(Phase):
    """Write the sniffed bytes to the backend, byte-exact, before the pump starts."""

    __slots__ = ("data",)
    name = "replay"

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.data = memoryview(conn.prefix)

    def start(self) -> None:
        self.on_writable()
        if self.conn.phase is self:  # bytes left (and not closed): wait, with a deadline
            backend = self.conn.backend
            assert backend is not None
            self.conn.ctx.poller.add_writer(backend.fd, self)
            self.conn.ctx.wheel.after(self.conn, self.conn.upstream.cfg.network.replay_timeout)

    def on_writable(self) -> None:
        conn = self.conn
        backend = conn.backend
        assert backend is not None
        try:
            n = backend.send(self.data[conn.sent :])
        except BlockingIOError:
            return
        except OSError as exc:
            conn.close(f"error: backend: {exc}", reset=True)
            return
        conn.sent += n
        if conn.sent >= len(self.data):
            self.data.release()
            conn.ctx.wheel.cancel(conn)
            conn.replayed()

    def on_deadline(self) -> None:
        tmo = self.conn.upstream.cfg.network.replay_timeout
        left = len(self.data) - self.conn.sent
        self.conn.close(
            "replay-timeout",
            f"the backend took no more of the sniffed bytes for {tmo:g}s ({left} left)",
            reset=True,
        )


class Handshake(Phase):
    """One side's own handshake (TLS accept toward the client, TLS connect toward the
    backend, the WebSocket upgrade either way, over TLS or not), driven by
    `side.step()`: DONE, or what to wait for."""

    __slots__ = ("which", "side", "watching", "parked", "t")
    name = "handshake"

    def __init__(self, conn: Connection, which: str, side: Any) -> None:
        super().__init__(conn)
        self.which = which  # "client" | "backend": names the side in the record
        self.side = side
        self.watching = 0  # what the descriptor is watched for: 0, WANT_READ or WANT_WRITE
        # Done, and still the descriptor's reader: the client's handshake is the last
        # before the pump (or the connect, which is mostly at once on a near backend),
        # which then takes the descriptor over with no epoll_ctl, where un-watching it
        # here and watching it again there were two. An event that comes first (a
        # backend slow to connect) un-watches it then.
        self.parked = False
        self.t = 0.0  # when it began (kept when observed)

    def start(self) -> None:
        conn = self.conn
        if conn.ctx.on_handshaken:
            self.t = conn.ctx.loop.time()
        conn.ctx.wheel.after(conn, conn.upstream.cfg.network.tls_handshake_timeout)
        self.on_readable()

    def tell(self, error: str | None) -> None:
        """The observers' `handshaken` event: `error` None (done) or the close reason."""
        conn = self.conn
        ctx = conn.ctx
        if ctx.on_handshaken:
            took = ctx.loop.time() - self.t
            for cb in ctx.on_handshaken:
                cb(conn, self.which, error, took)

    def on_readable(self) -> None:
        conn = self.conn
        if self.parked:  # see __init__
            self.parked = False
            self.watching = 0
            conn.ctx.poller.remove_reader(self.side.fd)
            return
        try:
            want = self.side.step()
        except OSError as exc:  # ssl.SSLError included: the TLS reason
            self._unwatch()
            conn.handshake_failed(self.which, exc)
            return
        if want == DONE:
            if self.watching == WANT_READ and self.which == "client":
                self.parked = True
            else:
                self._unwatch()
            conn.ctx.wheel.cancel(conn)
            self.tell(None)
            conn.handshaken(self.which)
            return
        if want != self.watching:
            read = want == WANT_READ
            conn.ctx.poller.set(self.side.fd, self if read else None, None if read else self)
            self.watching = want

    on_writable = on_readable

    def _unwatch(self) -> None:
        if self.watching:
            self.conn.ctx.poller.set(self.side.fd, None, None)
            self.watching = 0

    def on_deadline(self) -> None:
        self._unwatch()
        tmo = self.conn.upstream.cfg.network.tls_handshake_timeout
        kind = self.side.kind  # "tls", or "ws" (a WebSocket upgrade, over TLS or not)
        what = "TLS handshake" if kind == "tls" else "WebSocket upgrade"
        self.tell(f"{kind}-handshake-timeout")
        self.conn.close(
            f"{kind}-handshake-timeout",
            f"the {self.which}'s {what} did not finish in {tmo:g}s",
            reset=True,
        )

    def release(self) -> None:
        self.watching = 0  # the connection forgets both descriptors as it closes
        self.parked = False
