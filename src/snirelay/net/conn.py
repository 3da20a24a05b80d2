"""One relayed TCP connection, from accept to its single log record.

How it works
------------
A `Connection` is a small state machine driven only by event-loop callbacks (no task,
no coroutine), which keeps the per-connection cost low:

  [sniff: read first bytes, parse, pick a route]  (only when the endpoint has routes)
  -> balancer order -> resolve -> connect each address in turn (tcp_timeout each)
  -> replay the sniffed bytes byte-exact -> pump both ways (net.pump) -> close + record

Every wait has a deadline: the first bytes (`sniff_timeout`), each connect attempt
(`tcp_timeout`) and traffic in either direction (`tcp_idle_timeout`). None of them is a
loop timer: the connection stores `deadline` (a loop time, 0 = none) and the server's
sweeper calls `tick()` a few times a second, which also compares the pump's byte counters
for the idle timeout. So the hot path never creates or cancels a timer handle, and
deadlines fire within `SWEEP_INTERVAL` of their due time.

Error handling: any failure closes this connection only, with a reason in its record;
a remote that refuses or times out is reported to the balancer and the next one is
tried, so the client is served by a live remote instead of being dropped.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snirelay.net.pump import CopyDir, SpliceDir
from snirelay.net.resolve import SockTarget
from snirelay.net.sockopt import outbound_socket
from snirelay.observe.log import CONN_LOG, LOG, conn_record
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.sniff import Sniffed, sniff

if TYPE_CHECKING:
    from snirelay.net.runtime import Context, EndpointRT, UpstreamRT


_FIRST = (0,)  # the balancer order of an upstream with one remote


def _reason(exc: OSError) -> str:
    """The `close` field for a socket error."""
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken-pipe"
    return f"error: {exc}"


_LINGER0 = struct.pack("ii", 1, 0)


def _linger0(s: socket.socket) -> None:
    """Make the coming close() send an RST."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        pass  # already reset or closed by the peer: nothing left to signal


def _fmt(sa: Any) -> str:
    host, port = sa[0], sa[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Connection:
    __slots__ = (
        "ctx",
        "ep",
        "id",
        "client",
        "caddr",
        "backend",
        "upstream",
        "route",
        "up",
        "down",
        "t0",
        "deadline",
        "order",
        "oi",
        "cur",
        "targets",
        "ti",
        "prefix",
        "prefix_len",
        "buf",
        "need",
        "sni",
        "alpn",
        "ech",
        "kind",
        "hint",
        "baddr",
        "ndone",
        "closed",
        "idle_bytes",
        "idle_since",
        "failed_remotes",
        "last_error",
        "connecting",
    )

    def __init__(self, ctx: Context, ep: EndpointRT, client: socket.socket, caddr: Any) -> None:
        self.ctx = ctx
        self.ep = ep
        ctx.next_id += 1
        self.id = ctx.next_id
        self.client = client
        self.caddr = caddr
        self.backend: socket.socket | None = None
        self.upstream: UpstreamRT = ep.default
        self.route = "default"
        self.up: SpliceDir | CopyDir | None = None
        self.down: SpliceDir | CopyDir | None = None
        self.t0 = ctx.loop.time()
        self.deadline = 0.0  # loop time when the current wait gives up; 0 = none
        self.order: Sequence[int] = _FIRST
        self.oi = 0
        self.cur = 0
        self.targets: list[SockTarget] = []
        self.ti = 0
        self.prefix = b""
        self.prefix_len = 0  # sniffed bytes replayed to the backend
        self.buf: bytearray | None = None
        self.need = 1  # sniff: bytes to buffer before parsing again (NeedData.at_least)
        self.sni: str | None = None
        self.alpn: tuple[str, ...] | None = None
        self.ech = False
        self.kind: str | None = None
        self.hint: str | None = None
        self.baddr: Any = None  # the backend's socket address (formatted only for records)
        self.ndone = 0
        self.closed = False
        self.idle_bytes = -1
        self.idle_since = 0.0
        self.failed_remotes: list[str] | None = None
        self.connecting = False  # a non-blocking connect is in progress
        self.last_error = ""  # why the current remote's last attempt failed

    # ---- start -------------------------------------------------------------------------
    def start(self) -> None:
        self.ctx.conns.add(self)
        if self.ep.table is not None:
            self.buf = bytearray()
            self.ctx.poller.add_reader(self.client.fileno(), self)
            self.deadline = self.t0 + self.ep.cfg.upstream.network.sniff_timeout
        else:
            self._connect()

    # ---- sniff -------------------------------------------------------------------------
    def on_readable(self) -> None:
        """The client's first bytes (only while sniffing)."""
        assert self.buf is not None
        try:
            data = self.client.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(_reason(exc))
            return
        if not data:
            self.close("client-eof-before-hello")
            return
        self.buf += data
        limit = self.ep.cfg.upstream.network.sniff_max_bytes
        if len(self.buf) < self.need and len(self.buf) < limit:
            return  # the parser said it cannot decide before this many bytes
        try:
            res = sniff(bytes(self.buf), limit)
        except ProtocolError as exc:
            self._sniffed(None, exc)
            return
        if isinstance(res, NeedData):
            if len(self.buf) >= limit:
                self._sniffed(None, ProtocolError("too-large", f"first bytes exceed {limit}"))
            self.need = res.at_least
            return
        self._sniffed(res, None)

    def _on_sniff_timeout(self) -> None:
        if self.buf:
            self._end_sniff()
            self.close("sniff-timeout", "client sent an incomplete first message")
            return
        self._sniffed(None, ProtocolError("not-tls", "client sent nothing"), timed_out=True)

    def _end_sniff(self) -> None:
        self.ctx.poller.remove_reader(self.client.fileno())
        self.deadline = 0.0

    def _sniffed(
        self, res: Sniffed | None, err: ProtocolError | None, timed_out: bool = False
    ) -> None:
        self._end_sniff()
        ep = self.ep
        table = ep.table
        assert table is not None
        if res is not None:
            self.kind = res.kind
            self.sni = res.name
            if res.hello is not None:
                self.alpn = res.hello.alpn
                self.ech = res.hello.ech
            tls = res.kind != "http"
            route = table.pick(res.name, tls=tls, name_is_ip=res.name_is_ip)
            if route is None:
                self.hint = table.explain_miss(res.name, tls=tls, name_is_ip=res.name_is_ip)
        else:
            assert err is not None
            self.kind = err.kind
            route = table.pick(None, tls=False, name_is_ip=False)
            if route is None:
                self.hint = str(err)
                if timed_out:
                    self.close("sniff-timeout", "client sent nothing before network.sniff_timeout")
                    return
                if err.kind != "not-tls":
                    self.close(err.kind, str(err))
                    return
        if route is not None:
            self.route = route.place
            self.upstream = ep.routes[route.place]
        assert self.buf is not None
        self.prefix = bytes(self.buf)
        self.prefix_len = len(self.prefix)
        self.buf = None
        if not self.upstream.cfg.remotes:
            self.close("no-route", self.hint or "the endpoint has no remote for this connection")
            return
        self._connect()

    # ---- connect -----------------------------------------------------------------------
    def _connect(self) -> None:
        up = self.upstream
        n = len(up.cfg.remotes)
        if n == 1:
            self.order = _FIRST
        else:
            ip = self.caddr[0] if self.caddr is not None else ""
            self.order = up.balancer.order(ip, self.ctx.loop.time())
        self.oi = 0
        self._next_remote()

    def _next_remote(self) -> None:
        if self.oi >= len(self.order):
            self.baddr = None  # connected nowhere; failed_remotes says what was tried
            self.close("connect-failed", "no remote accepted the connection")
            return
        self.cur = self.order[self.oi]
        self.oi += 1
        fixed = self.upstream.targets[self.cur]
        if fixed is not None:
            self._on_resolved(fixed)
            return
        addr = self.upstream.cfg.remotes[self.cur]
        self.ctx.resolver.resolve(addr.host, addr.port, self._on_resolved)

    def _on_resolved(self, res: list[SockTarget] | OSError) -> None:
        if self.closed:
            return
        if isinstance(res, OSError):
            self.last_error = str(res)
            self._remote_failed()
            return
        self.targets = res
        self.ti = 0
        self._try_target()

    def _remote_name(self) -> str:
        return str(self.upstream.cfg.remotes[self.cur])

    def _remote_failed(self) -> None:
        up = self.upstream
        if len(up.cfg.remotes) > 1:
            up.balancer.failed(self.cur, self.ctx.loop.time())
        if self.failed_remotes is None:
            self.failed_remotes = []
        name = self._remote_name()
        self.failed_remotes.append(f"{name} ({self.last_error})")
        LOG.debug("conn %d: remote %s failed: %s", self.id, name, self.last_error)
        self._next_remote()

    def _try_target(self) -> None:
        up = self.upstream
        while self.ti < len(self.targets):
            fam, sa = self.targets[self.ti]
            self.ti += 1
            try:
                s = outbound_socket(fam, up.cfg.network, up.through, up.cfg.interface)
            except OSError as exc:
                LOG.warning("conn %d: cannot create socket for %s: %s", self.id, _fmt(sa), exc)
                self.last_error = f"{_fmt(sa)}: {exc.strerror or exc}"
                continue
            err = s.connect_ex(sa)
            if err == 0:
                self.backend = s
                self._connected(sa)
                return
            if err == errno.EINPROGRESS:
                self.backend = s
                self.baddr = sa
                self.connecting = True
                self.ctx.poller.add_writer(s.fileno(), self)
                tmo = up.cfg.network.tcp_timeout
                self.deadline = self.ctx.loop.time() + tmo if tmo > 0 else 0.0
                return
            s.close()
            self.last_error = f"{_fmt(sa)}: {os.strerror(err)}"
        self._remote_failed()

    def _drop_backend(self) -> None:
        s = self.backend
        if s is not None:
            self.ctx.poller.forget(s.fileno())  # closing drops it from the epoll set
            s.close()
            self.backend = None
        self.deadline = 0.0
        self.connecting = False

    def _on_connect_ready(self) -> None:
        s = self.backend
        assert s is not None
        self.connecting = False
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.last_error = f"{_fmt(self.baddr)}: {os.strerror(err)}"
            self._drop_backend()
            self._try_target()
            return
        self.deadline = 0.0
        self._connected(None)

    def _on_connect_timeout(self) -> None:
        tmo = self.upstream.cfg.network.tcp_timeout
        self.last_error = f"{_fmt(self.baddr)}: connect timed out after {tmo:g}s"
        self._drop_backend()
        self._try_target()

    def _connected(self, sa: Any) -> None:
        if sa is not None:
            self.baddr = sa
        up = self.upstream
        if len(up.cfg.remotes) > 1:
            up.balancer.succeeded(self.cur)
        if self.prefix:
            self._send_prefix()
        else:
            self._start_pump()

    def _send_prefix(self) -> None:
        s = self.backend
        assert s is not None
        try:
            n = s.send(self.prefix)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self.close(f"error: backend: {exc}")
            return
        self.prefix = self.prefix[n:]
        if self.prefix:
            self.ctx.poller.add_writer(s.fileno(), self)
        else:
            self._start_pump()

    def on_writable(self) -> None:
        """The backend socket: a connect finished, or it can take more sniffed bytes."""
        if self.connecting:
            self._on_connect_ready()
        else:
            self._send_prefix()

    # ---- pump --------------------------------------------------------------------------
    def _start_pump(self) -> None:
        b = self.backend
        assert b is not None
        ctx = self.ctx
        cfd, bfd = self.client.fileno(), b.fileno()
        if ctx.splice:
            self.up = SpliceDir(ctx.poller, self, self.client, b, cfd, bfd, ctx.pipes)
            self.down = SpliceDir(ctx.poller, self, b, self.client, bfd, cfd, ctx.pipes)
        else:
            self.up = CopyDir(ctx.poller, self, self.client, b, cfd, bfd)
            self.down = CopyDir(ctx.poller, self, b, self.client, bfd, cfd)
        self.up.start()
        # One epoll_ctl for the backend: read for `down`, and drop the connect/prefix writer.
        ctx.poller.set(bfd, self.down, None)
        self.down.reading = True

    def abort(self) -> None:
        """A callback of this connection raised (a bug): close it, keep serving."""
        self.close("internal-error")

    def pump_failed(self, exc: OSError) -> None:
        self.close(_reason(exc))

    def pump_eof(self) -> bool:
        """A direction read EOF. True: half-close the other side; False: both are done."""
        self.ndone += 1
        if self.ndone == 2:
            self.close("eof")
            return False
        return True

    def tick(self, now: float) -> None:
        """Called by the server's sweeper: deadlines and the idle timeout."""
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            if self.buf is not None:
                self._on_sniff_timeout()
            elif self.backend is not None and self.up is None:
                self._on_connect_timeout()
            return
        up, down = self.up, self.down
        if up is None or down is None:
            return
        limit = self.upstream.cfg.network.tcp_idle_timeout
        if limit <= 0:
            return
        total = up.nbytes + down.nbytes
        if total != self.idle_bytes:
            self.idle_bytes = total
            self.idle_since = now
        elif now - self.idle_since >= limit:
            self.close("idle-timeout")

    # ---- close -------------------------------------------------------------------------
    def close(self, reason: str, hint: str | None = None, *, reset: bool = False) -> None:
        """Close both sockets and write the record. `reset`: end with an RST instead of
        a FIN (SO_LINGER 0), so a peer can tell a cut transfer from a complete one."""
        if self.closed:
            return
        self.closed = True
        if hint is not None:
            self.hint = hint
        forget = self.ctx.poller.forget
        for d in (self.up, self.down):
            if d is not None:
                d.release()
        for s in (self.client, self.backend):
            if s is None:
                continue
            forget(s.fileno())
            if reset:
                _linger0(s)
            s.close()
        self.ctx.conns.discard(self)
        if CONN_LOG.isEnabledFor(logging.INFO):
            self._record(reason)

    def _record(self, reason: str) -> None:
        up, down = self.up, self.down
        fields: dict[str, Any] = {
            "event": "conn",
            "id": self.id,
            "listener": self.ep.cfg.place,
            "client": _fmt(self.caddr) if self.caddr is not None else None,
            "backend": _fmt(self.baddr) if self.baddr is not None else None,
            "sni": self.sni,
            "alpn": list(self.alpn) if self.alpn is not None else None,
            "ech": self.ech,
            "kind": self.kind,
            "route": self.route,
            "bytes_up": (up.nbytes if up else 0) + self.prefix_len - len(self.prefix),
            "bytes_down": down.nbytes if down else 0,
            "duration": round(self.ctx.loop.time() - self.t0, 6),
            "path": ("splice" if isinstance(up, SpliceDir) else "copy") if up else None,
            "close": reason,
        }
        if self.ctx.worker:
            fields["worker"] = self.ctx.worker
        if self.failed_remotes:
            fields["failed_remotes"] = self.failed_remotes
        if self.hint:
            fields["hint"] = self.hint
        conn_record(fields)
