"""UDP relaying (`use_udp` / `-u`): one service per endpoint, on the relay's event core.

How it works
------------
The service owns one UDP socket bound to the endpoint's listen address. Each client
address that sends gets an association: one outbound UDP socket of its own, connected
to the remote the balancer picks for it (per association, not per datagram: `iphash`
keeps a client on one backend), bound to `through` and `interface` as TCP is. A
datagram from the client goes out on that socket; one from the backend goes back to
the client from the listening socket, so the client sees one peer (full cone toward
that client). On a wildcard listener (0.0.0.0, ::) each datagram's destination is read
with it (IP_PKTINFO / IPV6_PKTINFO) and the association's answers leave from that
address (the routing would pick the host's primary one, which a client that sent to
another drops); an association keeps the address of its first datagram. Datagrams are read and written whole, up to 65,507 bytes over IPv4 (the
protocol's limit): nothing is cut at 1,500 (realm does). A datagram too big for the way
out (EMSGSIZE) is dropped, not taken for a dead backend. UDP uses the endpoint's own
remotes: routes are by name, and a datagram has none.

- A remote given by name is resolved with the relay's resolver (`[dns]`); the client's
  first datagrams wait for it, at most `PENDING_MAX` of them.
- An association ends after `udp_timeout` seconds without a datagram either way: the
  timing wheel visits it every quarter of that and counts what moved (as TCP's idle
  check does), so the cost is per association that is due, not per datagram.
- Failover: when sending to the backend fails, or the backend's side reports an error
  (ICMP port unreachable comes back as ECONNREFUSED on a connected socket), the
  association moves to the next remote of the balancer's order. When none is left it
  ends (``connect-failed``) and that client's datagrams are dropped for `FAILED_HOLD`
  seconds: a client sending to dead backends costs one association (and one record)
  per second, not one per datagram.
- Bounded: at most `udp_max_sessions` associations per endpoint; a new client past that
  is refused (its datagrams dropped, existing ones unaffected), with one log line per
  `REFUSED_LOG_EVERY` seconds and a count (`refused`).
- The PROXY protocol (v2 only: a datagram carries a whole header or none): with
  `send_proxy` every datagram toward the backend starts with a header (DGRAM; the
  client as source; as destination the address the client sent to: what a received
  header named, or for a wildcard listener (0.0.0.0, ::) the datagram's own destination
  as IP_PKTINFO tells it, else the listen address); with `accept_proxy` every
  datagram from the proxy in front must start with one, which is taken off and whose
  source is the association's client (the answers still go to the proxy); a datagram
  without a valid header is dropped, with a log line now and then.
- Each association that ends logs one record (`udp client=... backend=... datagrams_up
  ... bytes_up ... duration close=...`) on the connection log.

Stopping: `stop()` closes the listening socket and every association at once (a
datagram flow has no transfer to finish); `drain()` then has nothing to wait for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from snirelay.net.phases import fmt_addr
from snirelay.net.sockopt import bind_device, family_of
from snirelay.observe.log import CONN_LOG, LOG, conn_record
from snirelay.wire.errors import NeedData

if TYPE_CHECKING:
    from snirelay.net.runtime import Context, EndpointRT

MAX_DATAGRAM = 65535
PENDING_MAX = 16  # client datagrams kept while the remote's name resolves
IDLE_CHECKS = 4  # idle checks per udp_timeout
REFUSED_LOG_EVERY = 10.0  # seconds between log lines about refused new clients
BATCH = 64  # datagrams read per readiness callback before yielding to the loop
FAILED_HOLD = 1.0  # seconds a client's datagrams are dropped after no remote took them


class Association:
    """One client address and its outbound socket."""

    __slots__ = (
        "relay",
        "client",
        "origin",
        "header",
        "reply_from",
        "sock",
        "fd",
        "order",
        "oi",
        "backend",
        "pending",
        "due",
        "slot",
        "moved",
        "quiet",
        "n_up",
        "n_down",
        "b_up",
        "b_down",
        "t0",
        "closed",
    )

    def __init__(
        self,
        relay: UdpRelay,
        client: Any,
        origin: Any,
        order: list[int],
        here: Any = None,
        local: str | None = None,
    ) -> None:
        """`client`: where its answers go (the sender); `origin`: who it is (the sender,
        or the source a received PROXY header named); `here`: the destination for the
        PROXY header, when known better than the listen address; `local`: the address
        of this host the client sent to, on a wildcard listener (answers leave from it;
        see `UdpRelay.on_readable`)."""
        self.relay = relay
        self.client = client
        self.origin = origin
        self.header = relay.header_for(origin, here)  # a PROXY v2 header per datagram, or b""
        # sendmsg's control message that makes answers leave from `local` (None: sendto)
        self.reply_from = _source_cmsg(local) if local is not None else None
        self.sock: socket.socket | None = None
        self.fd = -1
        self.order = order
        self.oi = 0
        self.backend: Any = None
        self.pending: list[bytes] = []
        self.due = 0
        self.slot = 0
        self.moved = 0  # datagrams either way since the last idle check
        self.quiet = 0
        self.n_up = self.n_down = self.b_up = self.b_down = 0
        self.t0 = relay.ctx.loop.time()
        self.closed = False

    # ---- the backend ---------------------------------------------------------------
    def next_remote(self, why: str) -> None:
        """Connect to the next remote of the order (the first, at the start)."""
        relay = self.relay
        up = relay.ep.default
        if self.oi >= len(self.order):
            self.close(f"connect-failed: {why}" if why else "connect-failed")
            return
        index = self.order[self.oi]
        self.oi += 1
        if self.oi > 1 and len(up.cfg.remotes) > 1:
            up.balancer.failed(self.order[self.oi - 2], relay.ctx.loop.time())
        fixed = up.targets[index]
        if fixed is not None:
            self._connect(fixed, index)
            return
        addr = up.cfg.remotes[index]
        relay.ctx.resolver.resolve(addr.host, addr.port, lambda res: self._resolved(res, index))

    def _resolved(self, res: Any, index: int) -> None:
        if self.closed:
            return
        if isinstance(res, OSError):
            self.next_remote(f"{self.relay.ep.default.cfg.remotes[index]}: {res}")
            return
        self._connect(res, index)

    def _connect(self, targets: Any, index: int) -> None:
        up = self.relay.ep.default
        last = ""
        for fam, sa in targets:
            try:
                sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            except OSError as exc:
                last = str(exc)
                continue
            try:
                bind_device(sock, up.cfg.interface)
                if up.through is not None and family_of(up.through[0]) == fam:
                    sock.bind(up.through)
                sock.connect(sa)
            except OSError as exc:
                sock.close()
                last = f"{fmt_addr(sa)}: {exc.strerror or exc}"
                continue
            self._drop_socket()
            self.sock, self.fd, self.backend = sock, sock.fileno(), sa
            self.relay.ctx.poller.add_reader(self.fd, self)
            pending, self.pending = self.pending, []
            for data in pending:
                self.to_backend(data)
            return
        self.next_remote(last or "no address")

    def _drop_socket(self) -> None:
        if self.sock is not None:
            self.relay.ctx.poller.forget(self.fd)
            self.sock.close()
            self.sock, self.fd = None, -1

    # ---- datagrams -----------------------------------------------------------------
    def to_backend(self, data: bytes) -> None:
        self.moved += 1
        if self.sock is None:
            if len(self.pending) < PENDING_MAX:
                self.pending.append(data)
            return
        try:
            self.sock.send(self.header + data if self.header else data)
        except BlockingIOError:
            return  # a full send buffer drops the datagram, as the network may
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return  # too big for the way out (a header added, IPv6 to IPv4): dropped

            self.pending.append(data)
            self.next_remote(f"{fmt_addr(self.backend)}: {exc.strerror or exc}")
            return
        self.n_up += 1
        self.b_up += len(data)

    def on_readable(self) -> None:
        """Datagrams from the backend, back to the client."""
        sock, out = self.sock, self.relay.sock
        assert sock is not None
        for _ in range(BATCH):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP unreachable, reported on the connected socket
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self.next_remote(f"{fmt_addr(self.backend)}: {exc.strerror or exc}")
                    return
                self.close(f"error: backend: {exc.strerror or exc}")
                return
            self.moved += 1
            if not self.n_down and len(self.order) > 1:
                self.relay.ep.default.balancer.succeeded(self.order[self.oi - 1])
            try:
                if self.reply_from is None:
                    out.sendto(data, self.client)
                else:
                    out.sendmsg([data], self.reply_from, 0, self.client)
            except OSError:
                continue  # the client's side full or gone: the datagram is lost
            self.n_down += 1
            self.b_down += len(data)

    def on_writable(self) -> None:  # only ever read
        pass

    # ---- deadlines -----------------------------------------------------------------
    def on_deadline(self) -> None:
        if self.moved:
            self.moved = 0
            self.quiet = 0
        else:
            self.quiet += 1
            if self.quiet >= IDLE_CHECKS:
                self.close("idle-timeout")
                return
        self.relay.arm(self)

    def abort(self) -> None:
        self.close("internal-error")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        relay = self.relay
        relay.ctx.wheel.cancel(self)
        self._drop_socket()
        relay.assocs.pop((self.client, self.origin), None)
        if reason.startswith("connect-failed"):
            relay.hold((self.client, self.origin))
        if CONN_LOG.isEnabledFor(logging.INFO):
            conn_record(
                {
                    "event": "udp",
                    "listener": relay.place,
                    "client": fmt_addr(self.origin),
                    "backend": fmt_addr(self.backend) if self.backend is not None else None,
                    "datagrams_up": self.n_up,
                    "datagrams_down": self.n_down,
                    "bytes_up": self.b_up,
                    "bytes_down": self.b_down,
                    "duration": round(relay.ctx.loop.time() - self.t0, 6),
                    "close": reason,
                }
            )


class UdpRelay:
    """The UDP service of one endpoint (snirelay.services.Service)."""

    kind = "udp"

    def __init__(self, ctx: Context, ep: EndpointRT, sock: socket.socket) -> None:
        self.ctx = ctx
        self.ep = ep
        self.sock = sock
        self.fd = sock.fileno()
        self.place = ep.cfg.place
        name = sock.getsockname()
        self.address = fmt_addr(name)
        self.port = name[1]
        self.assocs: dict[Any, Association] = {}
        self.refused = 0  # new clients refused past udp_max_sessions
        self.refused_logged = -REFUSED_LOG_EVERY
        net = ep.cfg.upstream.network
        self.max_sessions = net.udp_max_sessions
        self.check_every = max(0.05, net.udp_timeout / IDLE_CHECKS)
        self.accept_proxy = net.accept_proxy  # every datagram starts with a v2 header
        self.send_proxy = net.send_proxy  # every datagram out gets one (v2, DGRAM)
        # a datagram to a wildcard listener reached one of this host's addresses: the
        # kernel says which (IP_PKTINFO); answers leave from it (else from the address
        # the routing picks, which a client that sent elsewhere drops), and a PROXY
        # header names it
        self.pktinfo = _wildcard(name[0])
        if self.pktinfo:
            _want_pktinfo(sock)
        self.bad_logged = -REFUSED_LOG_EVERY
        # clients whose association found no remote: until when their datagrams are
        # dropped, instead of each one making an association that fails again
        self.held: dict[Any, float] = {}
        ctx.udp.append(self)

    def start(self) -> None:
        self.ctx.poller.add_reader(self.fd, self)
        LOG.info("listening on %s (%s, %s)", self.address, self.place, self.kind)

    def stop(self) -> None:
        if self in self.ctx.udp:
            self.ctx.udp.remove(self)
        self.ctx.poller.forget(self.fd)
        self.sock.close()
        for assoc in list(self.assocs.values()):
            assoc.close("shutdown")

    async def drain(self, deadline: float) -> int:
        return 0  # datagrams have no transfer to finish: stop() ended every association

    def arm(self, assoc: Association) -> None:
        self.ctx.wheel.after(assoc, self.check_every)

    def on_writable(self) -> None:
        pass

    def abort(self) -> None:
        """A callback raised (a bug; the poller logged it): keep serving."""

    def on_readable(self) -> None:
        sock = self.sock
        pktinfo = self.pktinfo
        here: Any = None
        local: str | None = None
        for _ in range(BATCH):
            try:
                if pktinfo:
                    data, anc, _flags, client = sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
                    local = _destination(anc, client)
                    here = (local, self.port) if local is not None else None
                else:
                    data, client = sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as exc:
                LOG.warning("%s: udp receive failed: %s", self.address, exc)
                return
            origin = client
            if self.accept_proxy:
                got = self._strip_header(data, client)
                if got is None:
                    continue
                data, origin, here = got
            assoc = self.assocs.get((client, origin))
            if assoc is None:
                if self.held and self._held((client, origin)):
                    continue
                assoc = self._new(client, origin, here, local)
                if assoc is None:
                    continue
            assoc.to_backend(data)

    def _strip_header(self, data: bytes, sender: Any) -> tuple[bytes, Any, Any] | None:
        """`accept_proxy`: the datagram's PROXY v2 header off; (payload, the client it
        names, or the sender when it names none; the destination it names, or None). A
        datagram without a valid one is dropped, with a log line now and then."""
        from snirelay.wire.errors import ProtocolError
        from snirelay.wire.proxy import ProxyHeader, parse_proxy_header

        header: ProxyHeader | NeedData | None
        try:
            header = parse_proxy_header(data)
        except ProtocolError as exc:
            header, why = None, str(exc)
        else:
            why = "a datagram too short for its PROXY header"
            if isinstance(header, ProxyHeader) and header.version != 2:
                header, why = None, "a PROXY v1 header (UDP carries only v2)"
        if not isinstance(header, ProxyHeader):
            now = self.ctx.loop.time()
            if now - self.bad_logged >= REFUSED_LOG_EVERY:
                self.bad_logged = now
                LOG.warning("%s: udp from %s dropped: %s", self.address, fmt_addr(sender), why)
            return None
        origin = header.src if header.src is not None else sender
        return data[header.size :], origin, header.dst

    def hold(self, key: Any) -> None:
        """An association of `key` found no remote: drop its datagrams for `FAILED_HOLD`
        seconds (bounded like the associations: past `udp_max_sessions` held clients,
        the expired ones go, and if none has, this one is not held)."""
        now = self.ctx.loop.time()
        if len(self.held) >= self.max_sessions:
            self.held = {k: until for k, until in self.held.items() if until > now}
            if len(self.held) >= self.max_sessions:
                return
        self.held[key] = now + FAILED_HOLD

    def _held(self, key: Any) -> bool:
        until = self.held.get(key)
        if until is None:
            return False
        if self.ctx.loop.time() < until:
            return True
        del self.held[key]
        return False

    def header_for(self, origin: Any, here: Any = None) -> bytes:
        """The PROXY v2 header of an association's datagrams (b"" without send_proxy):
        the client as source; as destination `here` (what a received header named, or
        what IP_PKTINFO said for a wildcard listener), else the listen address."""
        if not self.send_proxy:
            return b""
        from snirelay.wire.proxy import encode_v2

        if here is None:
            here = self.sock.getsockname()
        return encode_v2((origin[0], origin[1]), (here[0], here[1]), stream=False)

    def _new(
        self, client: Any, origin: Any, here: Any = None, local: str | None = None
    ) -> Association | None:
        if len(self.assocs) >= self.max_sessions:
            self.refused += 1
            now = self.ctx.loop.time()
            if now - self.refused_logged >= REFUSED_LOG_EVERY:
                self.refused_logged = now
                LOG.warning(
                    "%s: udp_max_sessions (%d) reached: new clients refused (%d datagrams so far)",
                    self.address,
                    self.max_sessions,
                    self.refused,
                )
            return None
        up = self.ep.default
        order = (
            up.balancer.order(origin[0], self.ctx.loop.time()) if len(up.cfg.remotes) > 1 else [0]
        )
        assoc = Association(self, client, origin, list(order), here, local)
        self.assocs[(client, origin)] = assoc
        self.arm(assoc)
        assoc.next_remote("")
        return assoc if not assoc.closed else None


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python's socket lacks it
_ANC_SPACE = socket.CMSG_SPACE(20) * 2  # one in_pktinfo (12) or in6_pktinfo (20), twice


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def _want_pktinfo(sock: socket.socket) -> None:
    """Ask for each datagram's destination address (and for IPv4 datagrams on a
    dual-stack IPv6 socket too)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        with contextlib.suppress(OSError):  # an IPv6-only socket
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def _destination(anc: list[tuple[int, int, bytes]], client: Any) -> str | None:
    """The address a datagram was sent to, from its IP_PKTINFO / IPV6_PKTINFO control
    message (None without one: the listen address is used)."""
    for level, kind, payload in anc:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 12:
            addr = socket.inet_ntop(socket.AF_INET, payload[8:12])  # in_pktinfo.ipi_addr
            if len(client) == 4:  # a dual-stack socket: the client is ::ffff:a.b.c.d
                addr = "::ffff:" + addr
            return addr
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(payload) >= 16:
            return socket.inet_ntop(socket.AF_INET6, payload[:16])  # in6_pktinfo.ipi6_addr
    return None


def _source_cmsg(local: str) -> list[tuple[int, int, bytes]]:
    """sendmsg's ancillary data that sends from `local`: IP_PKTINFO's `ipi_spec_dst`
    (IPv4, and IPv4 on a dual-stack socket, "::ffff:a.b.c.d"), or IPV6_PKTINFO's
    `ipi6_addr`; the interface is left to the routing (index 0)."""
    if local.startswith("::ffff:") and "." in local:
        local = local[len("::ffff:") :]
    if ":" not in local:
        info = struct.pack("@i4s4s", 0, socket.inet_pton(socket.AF_INET, local), bytes(4))
        return [(socket.IPPROTO_IP, IP_PKTINFO, info)]
    info6 = struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, local), 0)
    return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info6)]


def bind_udp(ep: Any, reuse_port: bool) -> socket.socket:
    """The endpoint's UDP socket, bound (OSError on failure)."""
    net = ep.upstream.network
    fam = family_of(ep.listen.host)
    sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        # no SO_REUSEADDR: for UDP it would let a second process bind the same port
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if net.ipv6_only else 0)
        bind_device(sock, ep.listen_interface)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            except OSError:
                pass  # the system's maximum applies
        sock.bind((ep.listen.host, ep.listen.port))
    except BaseException:
        sock.close()
        raise
    return sock
