"""One relayed TCP connection: its two sides, its phases in order, its single record.

How it works
------------
A `Connection` holds what a connection is (its id, its client and backend sides, the
route and upstream it was given, what was sniffed, counters) and runs the phases of
net.phases in order, each handing over to the next through one method here::

    start() -> [ProxyIn] -> [Sniff] -> decided() -> [PreConnHook] -> hooked()
            -> [client's WebSocket upgrade] -> Connect -> connected() -> [handshakes]
            -> [Replay] -> replayed() -> pump (net.pump) -> close() -> one record

With a `pre_conn_hook` loaded (net.hook; the context's `hook`), the hook phase runs
once the upstream is chosen (after routing, before any WebSocket handshake or
connect): its answer fixes `pick`, the one remote Connect tries; without one, `pick`
stays -1 and `_proceed` pays one attribute check.

The handshakes are the sides' own: toward the backend TLS then the WebSocket upgrade
(as configured), then toward the client TLS (after the backend's, so ALPN agrees end
to end). A WebSocket listener accepts the client's upgrade (and the TLS under it)
before connecting: it depends on nothing the backend says.

The pump is the connection's last phase: two directions between the sides, spliced
when both sides are raw sockets, through one bounded buffer each otherwise.

Deadlines: the connection is the item the context's timing wheel (net.timers) holds;
`on_deadline` goes to the phase that runs. While pumping, the deadline is the idle
check: every quarter of `network.tcp_idle_timeout` it compares the directions' byte
counters with the last check, and closes a connection after four checks in a row saw
nothing move (so between 1 and 1.25 times the timeout after its last byte). A small
count, not a timestamp, per connection: no float object per idle connection. No per-event timestamps, no
loop timer per connection, no sweep over all connections.

Observers (observe.events) hear of each connection's events through the context's
lists; with none listening, no record is built.

Error handling: any failure closes this connection only, with a reason in its record
and the phase it happened in. A socket error on one side while pumping (a reset)
ends the other side with a reset too, and so does a cut mid-transfer (replay deadline,
drain deadline): a truncated transfer never looks like a complete one. The idle
timeout closes with a FIN: nothing was in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snirelay.net.phases import (
    Connect,
    Handshake,
    Phase,
    PreConnHook,
    ProxyIn,
    Replay,
    Sniff,
    close_reason,
)
from snirelay.net.proxy_out import proxy_header
from snirelay.net.pump import CopyDir, SpliceDir, ViewCopyDir
from snirelay.net.record import connection_record
from snirelay.net.sides import RawSide
from snirelay.net.tls import TlsSide, failure, quickack
from snirelay.routing import Decision, SniffTimeout, decide
from snirelay.wire.errors import ProtocolError
from snirelay.wire.sniff import Sniffed

IDLE_CHECKS = 4  # idle checks per tcp_idle_timeout

if TYPE_CHECKING:
    from snirelay.net.poller import Poller
    from snirelay.net.runtime import Context, EndpointRT, UpstreamRT
    from snirelay.net.sides import Side
    from snirelay.wire.proxy import ProxyHeader


class Connection:
    __slots__ = (
        "ctx",
        "ep",
        "id",
        "client",
        "caddr",
        "backend",
        "baddr",
        "upstream",
        "phase",
        "due",
        "slot",
        "up",
        "down",
        "t0",
        "prefix",
        "sent",
        "seen",
        "kind",
        "hint",
        "ndone",
        "idle_bytes",
        "quiet",
        "failed_remotes",
        "tls_in",
        "proxy",
        "pick",
    )

    def __init__(self, ctx: Context, ep: EndpointRT, client: Side, caddr: Any) -> None:
        self.ctx = ctx
        self.ep = ep
        ctx.next_id += 1
        self.id = ctx.next_id
        self.client = client
        self.caddr = caddr
        self.backend: Side | None = None
        self.baddr: Any = None  # the backend's socket address (formatted only for records)
        self.upstream: UpstreamRT = ep.default
        self.phase: Phase = _ACCEPTED
        self.due = 0  # the timing wheel's tick for the current deadline (0 = none)
        self.slot = 0  # and the connection's place in that tick's bucket
        self.up: SpliceDir | CopyDir | None = None
        self.down: SpliceDir | CopyDir | None = None
        self.t0 = ctx.poller.time()  # asyncio's loop.time, without its Python frame
        self.prefix: bytes | bytearray = b""  # sniffed bytes, replayed to the backend
        self.sent = 0  # how many of them the backend took
        self.seen: Sniffed | None = None
        self.kind: str | None = None
        self.hint: str | None = None
        self.ndone = 0
        self.idle_bytes = 0
        self.quiet = 0  # idle checks in a row that saw no byte move
        self.failed_remotes: list[str] | None = None
        self.tls_in: bytes | bytearray = b""  # sniffed bytes for the client's TLS side
        # the PROXY protocol, only when configured: [the relay's address the client
        # reached, as a received header said (None: this socket's own), the length of
        # the header sent to the backend (0: none yet)]
        self.proxy: list[Any] | None = None
        self.pick = -1  # the remote the pre-connect hook chose (its index); -1: none

    @property
    def route(self) -> str:
        """The record's `route`: the place of the route taken, or "default"."""
        return self.upstream.place

    @property
    def closed(self) -> bool:
        return self.phase is _CLOSED

    # ---- the phases, in order ----------------------------------------------------------
    def start(self) -> None:
        ctx = self.ctx
        ctx.conns.add(self)
        for cb in ctx.on_accepted:
            cb(self)
        net = self.ep.cfg.upstream.network
        if net.accept_proxy:
            proxy_in = ProxyIn(self)
            self.phase = proxy_in
            proxy_in.start(net.accept_proxy_timeout)
            return
        self._begin(b"")

    def proxied(self, header: ProxyHeader, rest: bytes) -> None:
        """The PROXY header is read: the client is who it says (the record, iphash, any
        header sent on); `rest` is the start of the client's own stream."""
        if header.src is not None:
            self.caddr = header.src
        self.proxy = [header.dst, 0]
        self._begin(rest)

    def _begin(self, initial: bytes) -> None:
        """After accept (and the PROXY header): sniff, or straight on to the backend
        (`initial`, bytes already read from the client, is replayed to it). A listener
        that only terminates TLS sniffs only for its observers (runtime.must_sniff)."""
        ep = self.ep
        if ep.table is not None and (ep.must_sniff or self.ctx.observed):
            net = ep.cfg.upstream.network
            sniff = Sniff(self, net.sniff_max_bytes)
            self.phase = sniff
            sniff.start(net.sniff_timeout, initial)
        else:
            if self.upstream.terminates:
                self.tls_in = initial  # a WebSocket listener's upgrade request begins here
            else:
                self.prefix = initial
            self._proceed()

    def decided(
        self, seen: Sniffed | ProtocolError | SniffTimeout, data: bytes | bytearray
    ) -> None:
        """The sniff phase is over: route (or close) by the one routing decision."""
        ep = self.ep
        assert ep.table is not None
        self.prefix = data
        if isinstance(seen, Sniffed):
            self.seen = seen
        d: Decision = decide(ep.table, seen, has_default=bool(ep.default.cfg.remotes))
        self.kind = d.kind  # what was seen, as the decision names it
        for cb in self.ctx.on_sniffed:
            cb(self)
        if not isinstance(seen, SniffTimeout):
            self.phase = _DECIDING  # a timeout is the sniff phase's end, not the decision's
        self.hint = d.hint if ep.cfg.routes else None  # sniffed for TLS only: no route to miss
        if d.route is not None:
            self.upstream = ep.routes[d.route.place]
        if self.upstream.terminates:
            # terminated here: the ClientHello (or the upgrade request) is the client
            # side's, not the backend's
            self.tls_in, self.prefix = data, b""
        for cb in self.ctx.on_routed:
            cb(self)
        if d.close is not None:
            self.close(d.close, d.hint)
            return
        if self.upstream.server_tls is not None and d.kind not in ("tls", "sslv2"):
            # the route terminates TLS and the client did not start a handshake: refuse
            # now, before a backend connection (and its TLS handshake) is made for it
            why = "http request" if d.kind == "http" else "not a TLS handshake"
            self.close(f"tls-client: {why}", f"the route terminates TLS; the client sent {d.kind}")
            return
        self._proceed()

    def _proceed(self) -> None:
        """Decided: ask the pre-connect hook when one is loaded (once: `hooked` comes
        back here), then connect, or first accept the client's WebSocket upgrade (it
        does not depend on the backend, and a wrong request then costs no backend
        connection)."""
        hook = self.ctx.hook
        if hook is not None and self.pick < 0:
            phase = PreConnHook(self, hook)
            self.phase = phase
            phase.start(self.ep.cfg.upstream.network.sniff_timeout)
            return
        up = self.upstream
        if up.server_ws is not None or (up.server_tls is not None and up.client_tls is None):
            # The client's own handshake first: a WebSocket upgrade does not depend on
            # the backend; nor does TLS ended here and not re-originated (whose ALPN
            # must agree with the backend's, `handshaken`). A client whose handshake
            # fails then costs no backend connection.
            stls = up.server_tls
            client = self._client_side(stls.base if stls is not None else None)
            self._handshake("client", client)
            return
        self._connect()

    def hooked(self, pick: int, data: bytes | bytearray) -> None:
        """The hook phase is over: remote `pick` (0: `remote`, k: `extra_remotes[k-1]`)
        and only it; `data` is every byte read from the client so far, all still to be
        passed on (replayed to the backend, or the client's TLS / WebSocket side's)."""
        self.pick = pick
        if self.upstream.terminates:
            self.tls_in = data
        else:
            self.prefix = data
        self._proceed()

    def _client_side(self, ctx: Any) -> Side:
        """The client's side as this upstream terminates it: TLS with `ctx` (an
        ssl.SSLContext, None: no TLS), then the WebSocket upgrade if configured; it
        starts with the bytes sniffed so far."""
        client: Side = self.client
        initial, self.tls_in = self.tls_in, b""
        if ctx is not None:
            assert isinstance(client, RawSide)
            client = TlsSide(client, ctx, server_side=True, initial=initial)
            initial = b""
        ws = self.upstream.server_ws
        if ws is not None:
            from snirelay.net.ws import WsSide

            client = WsSide(client, ws, server_side=True, initial=initial)
        self.client = client
        return client

    def _connect(self) -> None:
        up = self.upstream
        raw_backend = up.client_tls is None and up.client_ws is None
        if up.cfg.network.send_proxy and raw_backend and not up.terminates:
            # before the sniffed bytes, which may go out with the connect itself
            self.prefix = self._proxy_header(None) + self.prefix
        connect = Connect(self)
        self.phase = connect
        connect.start()

    def connected(self, backend: RawSide, sa: Any, host: str) -> None:
        """The connect phase is over: the backend side is up (`host`: the remote as
        configured, for the upstream SNI)."""
        self.backend = backend
        self.baddr = sa
        for cb in self.ctx.on_connected:
            cb(self)
        up = self.upstream
        side: Side = backend
        ctls, ws = up.client_tls, up.client_ws
        if ctls is not None:
            hello = self.seen.hello if self.seen is not None else None
            # a WebSocket upgrade is HTTP/1.1: offer only the transport's own alpn=
            offer = ctls.t.alpn if ws is not None else ctls.offer(hello.alpn if hello else None)
            ctx = ctls.context(offer)
            sni = self.seen.name if self.seen is not None and not self.seen.name_is_ip else None
            name = ctls.server_hostname(sni, host)
            side = TlsSide(
                backend,
                ctx,
                server_hostname=name,
                session=ctls.session(sa, ctx),
                # the certificate must cover the name sent, or the remote's own address
                expect=None if ctls.t.insecure else name or host,
            )
        if ws is not None:
            from snirelay.net.ws import WsSide

            side = WsSide(side, ws, server_side=False)
        if side is not backend:
            if up.cfg.network.send_proxy and not self._send_proxy_raw(backend):
                return
            self.backend = side
            self._handshake("backend", side)
            return
        self.handshaken("backend")

    # ---- the PROXY protocol toward the backend ---------------------------------------
    def _proxy_header(self, tls_version: str | None) -> bytes:
        """The PROXY header for this connection (net.proxy_out)."""
        return proxy_header(self, tls_version)

    def _send_proxy_raw(self, sock: RawSide) -> bool:
        """Before the backend's own handshake (TLS, WebSocket): the header, on the
        fresh socket (its buffer is empty: a short write is a failure)."""
        header = self._proxy_header(None)
        try:
            sent = sock.send(header)
        except OSError as exc:
            self.close(f"error: backend: {exc}", reset=True)
            return False
        if sent != len(header):
            self.close("error: backend: the PROXY header did not fit", reset=True)
            return False
        assert self.proxy is not None
        self.proxy[1] = 0  # sent outside the replayed bytes: bytes_up never counted it
        return True

    def _handshake(self, which: str, side: Side) -> None:
        hs = Handshake(self, which, side)
        self.phase = hs
        hs.start()

    def handshaken(self, which: str) -> None:
        """A side's handshake is over (the backend's first, then the client's): the
        next one, then the replay of the sniffed bytes, then the pump."""
        stls = self.upstream.server_tls
        if which == "backend" and stls is not None and isinstance(self.client, RawSide):
            # TLS toward the client after the backend's: ALPN agrees end to end
            assert self.backend is not None
            b = self.backend.tls
            ctx = stls.for_backend(b.info[2]) if b is not None else stls.base
            self._handshake("client", self._client_side(ctx))
            return
        if which == "client" and stls is not None and not stls.tickets:
            # Nothing follows the client's Finished from our side (no ticket to send), so
            # acknowledge it now: a client whose request waits behind Nagle for that ACK
            # would otherwise wait out the delayed ACK (40 ms here).
            quickack(self.client)
        if which == "client" and self.backend is None:
            self._connect()  # the client's handshake came first (_proceed)
            return
        up = self.upstream
        if (
            up.cfg.network.send_proxy
            and up.terminates
            and up.client_tls is None
            and up.client_ws is None
        ):
            # the client's handshake is done (its TLS version known); nothing went to
            # the backend yet
            tls = self.client.tls
            self.prefix = self._proxy_header(tls.info[0] if tls is not None else None) + self.prefix
        if self.sent < len(self.prefix):
            replay = Replay(self)
            self.phase = replay
            replay.start()
        else:
            self.replayed()

    def handshake_failed(self, which: str, exc: OSError) -> None:
        """A TLS handshake failed: close with its reason. When the backend's failed
        and the client's is still to come, the client is refused with a
        handshake_failure alert first (its ClientHello is already here)."""
        side = self.client if which == "client" else self.backend
        assert side is not None
        reason, hint = failure(which, exc, self.backend if which == "backend" else None, side.kind)
        if isinstance(self.phase, Handshake):
            self.phase.tell(reason)
        stls = self.upstream.server_tls
        if which == "backend" and stls is not None and isinstance(self.client, RawSide):
            refused = TlsSide(self.client, stls.refusing, server_side=True, initial=self.tls_in)
            try:
                refused.step()  # writes the alert
            except OSError:
                pass
        self.close(reason, hint, reset=isinstance(exc, ConnectionError))

    def replayed(self) -> None:
        """Every sniffed byte reached the backend: pump both ways."""
        b = self.backend
        assert b is not None
        self.prefix = b""  # replayed: an idle routed connection does not keep its hello
        ctx = self.ctx
        client = self.client
        if ctx.splice and client.raw and b.raw:
            self.up = SpliceDir(ctx.poller, self, client, b, ctx.pipes)
            self.down = SpliceDir(ctx.poller, self, b, client, ctx.pipes)
        else:
            self.up = _copy_dir(ctx.poller, self, client, b)
            self.down = _copy_dir(ctx.poller, self, b, client)
        self.phase = _PUMPING
        self.up.start()
        # One epoll_ctl for the backend: read for `down`, and drop a connect/replay writer.
        ctx.poller.set(b.fd, self.down, None)
        self.down.reading = True
        if isinstance(self.down, CopyDir):
            self.down.kick()
        limit = self.upstream.cfg.network.tcp_idle_timeout
        if limit > 0:
            ctx.wheel.after(self, limit / IDLE_CHECKS)

    # ---- deadlines ---------------------------------------------------------------------
    def on_deadline(self) -> None:
        if self.phase is _PUMPING:
            self.idle_check()
        else:
            self.phase.on_deadline()

    def idle_check(self) -> None:
        up, down = self.up, self.down
        assert up is not None and down is not None
        total = up.nbytes + down.nbytes
        if total != self.idle_bytes:
            self.idle_bytes = total
            self.quiet = 0
        else:
            self.quiet += 1
            if self.quiet >= IDLE_CHECKS:
                self.close("idle-timeout")  # nothing was in flight: a clean end
                return
        self.ctx.wheel.after(self, self.upstream.cfg.network.tcp_idle_timeout / IDLE_CHECKS)

    # ---- what the pump tells its owner -------------------------------------------------
    def abort(self) -> None:
        """A callback of this connection raised (a bug): close it, keep serving."""
        self.close("internal-error", reset=True)

    def pump_failed(self, exc: OSError) -> None:
        self.close(close_reason(exc), reset=True)

    def pump_eof(self) -> bool:
        """A direction read EOF. True: half-close the other side; False: both are done."""
        self.ndone += 1
        if self.ndone == 2:
            self.close("eof")
            return False
        return True

    # ---- close -------------------------------------------------------------------------
    def close(self, reason: str, hint: str | None = None, *, reset: bool = False) -> None:
        """Close both sides and write the record. `reset`: end with an RST instead of a
        FIN, so a peer can tell a cut transfer from a complete one."""
        phase = self.phase
        if phase is _CLOSED:
            return
        self.phase = _CLOSED
        ctx = self.ctx
        ctx.wheel.cancel(self)
        if hint is not None:
            self.hint = hint
        forget = ctx.poller.forget
        for d in (self.up, self.down):
            if d is not None:
                d.release()
        phase.release()
        if self.backend is not None and not self.backend.raw:
            self._keep_session()
        forget(self.client.fd)
        self.client.close(reset)
        if self.backend is not None:
            forget(self.backend.fd)
            self.backend.close(reset)
        ctx.conns.discard(self)
        if ctx.on_closed:
            record = self.record(reason, phase.name)
            for cb in ctx.on_closed:
                cb(self, record)
        # Break the reference cycles (directions and the phase point back at the
        # connection) so a closed connection is freed by reference counting, without
        # waiting for the cycle collector.
        self.up = self.down = None

    def _keep_session(self) -> None:
        ctls = self.upstream.client_tls
        b = self.backend.tls if self.backend is not None else None
        if ctls is not None and b is not None and b.info[0] is not None:
            ctls.finished(self.baddr, b.obj, b.info[0], self.ctx.poller.time(), offered=b.offered)

    def record(self, reason: str, phase: str) -> dict[str, Any]:
        """The connection's one record (net.record); `phase`: the one it ended in."""
        return connection_record(self, reason, phase)


class _Marker(Phase):
    """A phase with no state and no waits of its own, one object shared by every
    connection: its place in the sequence, for the record. Accept; decide (pure); and
    the pump, whose directions are the poller's watchers."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:  # no connection: shared
        self.name = name


_ACCEPTED = _Marker("accept")
_DECIDING = _Marker("decide")
_PUMPING = _Marker("pump")
_CLOSED = _Marker("closed")


def _copy_dir(poller: Poller, conn: Connection, src: Side, dst: Side) -> CopyDir:
    """A buffered direction: from a WebSocket side, its decoded payload is sent as it
    is held (no copy into the shared buffer); toward one, reads fill whole frames."""
    if src.kind == "ws":
        return ViewCopyDir(poller, conn, src, dst)
    if dst.kind == "ws":
        from snirelay.net.ws import FRAME_VIEW  # imported at start when ws is configured

        return CopyDir(poller, conn, src, dst, FRAME_VIEW)
    return CopyDir(poller, conn, src, dst)
