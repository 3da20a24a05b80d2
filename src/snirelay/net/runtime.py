"""Runtime objects built from the frozen config, in one place.

`Context` is what every connection shares (loop, poller, timing wheel, resolver, pipe
pool, observers, live connection set, the pre-connect hook loaded at start).
`EndpointRT` / `UpstreamRT` pair each config object with the state it needs at run
time (balancer, compiled route table, `through` as socket.bind takes it).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from snirelay.balance import Balancer
from snirelay.config.model import Config, Endpoint, Transport, Upstream
from snirelay.net.loop import Loop
from snirelay.net.pump import HAVE_SPLICE, PipePool
from snirelay.net.resolve import Resolver, literal
from snirelay.net.sockopt import bind_address
from snirelay.net.timers import Wheel
from snirelay.observe.events import Observers, RecordLog
from snirelay.observe.log import CONN_LOG
from snirelay.routing import RouteTable

if TYPE_CHECKING:
    from snirelay.net.conn import Connection
    from snirelay.net.hook import Hook
    from snirelay.net.tlsconf import ClientTLS, ServerTLS


class UpstreamRT:
    __slots__ = (
        "cfg",
        "place",
        "where",
        "balancer",
        "through",
        "targets",
        "server_tls",
        "client_tls",
        "server_ws",
        "client_ws",
    )

    def __init__(
        self, cfg: Upstream, place: str = "default", *, where: str = "", warn: bool = False
    ) -> None:
        """`where`: the config place (for errors and warnings); `warn`: log the start-up
        warnings (once per process tree: the server's check before forking)."""
        self.cfg = cfg
        self.place = place  # the record's `route`: the route's place, or "default"
        self.where = where or place  # the config place: "endpoints[0]" for a default
        self.balancer = Balancer(
            cfg.balance,
            max(1, len(cfg.remotes)),
            max_fails=cfg.max_fails,
            fail_timeout=cfg.fail_timeout,
        )
        self.through = bind_address(cfg.through)
        # IP-literal remotes resolve once, here, not per connection
        self.targets = [literal(a.host, a.port) for a in cfg.remotes]
        # TLS contexts (net.tlsconf, imported only when used: `ssl` costs ~6 MB)
        self.server_tls: ServerTLS | None = None
        self.client_tls: ClientTLS | None = None
        lt, rt = cfg.listen_transport, cfg.remote_transport
        # WebSocket transports (net.ws): the transport itself carries host= and path=
        self.server_ws: Transport | None = lt if lt is not None and lt.ws else None
        self.client_ws: Transport | None = rt if rt is not None and rt.ws else None
        if self.server_ws is not None or self.client_ws is not None:
            # wsproto, h11 and websockets take ~60 ms to import: at start (before any
            # fork), not inside the event loop at the first WebSocket connection
            import snirelay.net.ws  # noqa: F401
        where = self.where
        if rt is not None and rt.tls:
            from snirelay.net.tlsconf import ClientTLS

            self.client_tls = ClientTLS(rt, f"{where}.remote_transport", cfg.remotes, warn=warn)
        if lt is not None and lt.tls:
            from snirelay.net.tlsconf import ServerTLS

            self.server_tls = ServerTLS(
                lt,
                f"{where}.listen_transport",
                tickets=cfg.network.tls_session_tickets,
                # over TLS, a WebSocket upgrade is HTTP/1.1 whatever the backend speaks
                backend_alpn=(
                    self.client_tls.allowed
                    if self.client_tls is not None and self.server_ws is None
                    else None
                ),
                warn=warn,
            )

    @property
    def terminates(self) -> bool:
        """The client's transport ends here (TLS, WebSocket): what it sends first is
        its side's to read, not the backend's."""
        return self.server_tls is not None or self.server_ws is not None


def sniffs(ep: Endpoint) -> bool:
    """The endpoint can read the client's first bytes before connecting: to route, or
    to know the ClientHello a terminating listener answers (`must_sniff` says when
    that is needed whether or not anyone observes the connection)."""
    lt = ep.upstream.listen_transport
    return bool(ep.routes) or (lt is not None and lt.tls)


def must_sniff(ep: Endpoint) -> bool:
    """The decision needs the ClientHello: routes; or a terminating listener that
    re-originates (the client's ALPN offer and SNI go on to the backend) or sends a
    PROXY header (it carries the SNI). A listener that only terminates sniffs only
    while an observer will read what the hello says (`Context.observed`); otherwise
    OpenSSL alone reads it: the parse was two fifths of the relay's Python
    instructions per terminated handshake."""
    up = ep.upstream
    return bool(ep.routes) or up.remote_transport is not None or up.network.send_proxy


class EndpointRT:
    __slots__ = ("cfg", "default", "routes", "table", "must_sniff")

    def __init__(self, cfg: Endpoint, *, warn: bool = False) -> None:
        self.cfg = cfg
        self.default = UpstreamRT(cfg.upstream, where=cfg.place, warn=warn)
        self.routes = {
            r.place: UpstreamRT(r.upstream, r.place, where=r.place, warn=warn) for r in cfg.routes
        }
        self.table = RouteTable(cfg.routes) if sniffs(cfg) else None
        self.must_sniff = self.table is not None and must_sniff(cfg)


class Context(Observers):
    __slots__ = (
        "loop",
        "poller",
        "wheel",
        "config",
        "resolver",
        "pipes",
        "conns",
        "next_id",
        "splice",
        "worker",
        "keep_addr",
        "udp",
        "hook",
    )

    def __init__(
        self,
        loop: Loop,
        config: Config,
        *,
        splice: bool = HAVE_SPLICE,
        hook: Hook | None = None,
    ) -> None:
        """`hook`: the `pre_conn_hook` library loaded at start (snirelay.startup.check_hook,
        before any fork), not loaded here: a reload or a restarted worker keeps it."""
        super().__init__()
        self.loop = loop
        self.poller = loop.poller  # the relay's event core (net.poller), run inside the loop
        self.wheel = Wheel(loop.poller)
        self.config = config
        self.resolver = Resolver(loop, config.dns)
        self.pipes = PipePool(config.pipe_pages)
        self.conns: set[Connection] = set()
        self.next_id = 0
        self.udp: list[Any] = []  # the UDP services (net.udp.UdpRelay), for the API
        self.splice = splice
        self.hook = hook  # net.hook.Hook: every TCP connection asks it (net.phases.PreConnHook)
        # with several workers, records carry the worker's pid (ids restart per worker)
        self.worker = os.getpid() if config.workers > 1 else 0
        # client addresses are kept per connection only for the log record, iphash or
        # a PROXY header sent on
        self.keep_addr = CONN_LOG.isEnabledFor(logging.INFO) or any(
            up.balance.strategy == "iphash" or up.network.send_proxy
            for ep in config.endpoints
            for _, up in ep.upstreams()
        )
        if RecordLog.wanted():
            self.add(RecordLog())

    def close(self) -> None:
        """Release what the connections shared (after every connection is closed):
        the deadline timer, running name lookups, pooled pipes (the epoll set is the
        loop's, closed with it)."""
        self.wheel.close()
        self.resolver.close()
        self.pipes.close()
