"""The configuration as data: frozen dataclasses, fully resolved.

`config.load` turns TOML/JSON/legacy files and command-line flags into one `Config`.
Everything here is already merged and validated:

- precedence (command line > endpoint > global) has been applied, so every
  `Endpoint.network` and `Route.network` is complete;
- port ranges have been expanded, so each `Endpoint` listens on exactly one port;
- every route carries its own resolved remote/balance/transport (falling back to the
  endpoint's values where the route did not set them);
- `place` is the path used in error and log messages, e.g. "endpoints[2].routes[0]".

Runtime objects (sockets, SSL contexts, balancers, route tables) are built from this in
one place (`snirelay.server`); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
DNS_MODES = ("ipv4_only", "ipv6_only", "ipv4_then_ipv6", "ipv6_then_ipv4", "ipv4_and_ipv6")
DNS_PROTOCOLS = ("tcp", "udp", "tcp_and_udp")
BALANCE_STRATEGIES = ("roundrobin", "iphash")
WHEN_CONDITIONS = ("no_sni", "ip_sni", "not_tls")


@dataclass(frozen=True, slots=True)
class Addr:
    """A host and a port. `host` is an IP literal (no brackets) or a DNS name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "off"  # one of LOG_LEVELS
    output: str = "stdout"  # "stdout" | "stderr" | a file path
    format: str = "text"  # "text" | "json" (snirelay addition)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    mode: str = "ipv4_and_ipv6"
    protocol: str = "tcp_and_udp"
    nameservers: tuple[Addr, ...] = ()  # empty = system resolver
    min_ttl: int = 0
    max_ttl: int = 86400
    cache_size: int = 32


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """realm's [network] table plus snirelay's additions (marked)."""

    no_tcp: bool = False
    use_udp: bool = False
    ipv6_only: bool = False
    tcp_timeout: float = 5  # connect timeout per address, 0 = none
    udp_timeout: float = 30
    tcp_keepalive: float = 15  # 0 = system default
    tcp_keepalive_probe: int = 3
    send_mptcp: bool = False
    accept_mptcp: bool = False
    send_proxy: bool = False
    send_proxy_version: int = 2
    accept_proxy: bool = False
    accept_proxy_timeout: float = 5
    # snirelay additions
    tcp_idle_timeout: float = 300  # no traffic either way -> close; 0 = off
    sniff_timeout: float = 10  # deadline for the first bytes when routes exist
    sniff_max_bytes: int = 65536  # cap on a ClientHello / HTTP request head


@dataclass(frozen=True, slots=True)
class Transport:
    """A parsed realm transport string (`tls;sni=…;insecure`, `ws;host=…;path=…`, …)."""

    raw: str
    ws: bool = False
    tls: bool = False
    insecure: bool = False
    zero_rtt: bool = False
    sni: str | None = None  # "$sni" = the client's SNI
    alpn: tuple[str, ...] = ()
    host: str | None = None  # ws
    path: str | None = None  # ws
    cert: str | None = None
    key: str | None = None
    servername: str | None = None
    ocsp: str | None = None
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    """`roundrobin: 4, 2, 1` / `iphash: 2, 1`; weights in order remote, extra_remotes.

    `strategy` is "roundrobin" when the config set none. `weights` always has one entry
    per remote (missing weights are 1).
    """

    strategy: str = "roundrobin"
    weights: tuple[int, ...] = (1,)


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a connection goes: the part shared by an endpoint and its routes."""

    remotes: tuple[Addr, ...]  # remote first, then extra_remotes; empty = close
    balance: Balance = field(default_factory=Balance)
    max_fails: int = 1  # snirelay: failures before a remote is left out ...
    fail_timeout: float = 10  # ... for this many seconds (0 = never left out)
    through: Addr | None = None  # source address for outbound connections (port 0 = any)
    interface: str | None = None  # SO_BINDTODEVICE outbound
    listen_transport: Transport | None = None
    remote_transport: Transport | None = None
    network: NetworkConfig = field(default_factory=NetworkConfig)


@dataclass(frozen=True, slots=True)
class Route:
    """One `[[endpoints.routes]]` entry. Exactly one of `server_names` / `when` is set.

    `server_names` are normalised: exact names lowercased without trailing dot,
    wildcards as "*.example.com", regexes kept as written with their leading "~".
    """

    place: str
    upstream: Upstream
    server_names: tuple[str, ...] = ()
    when: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    place: str  # "endpoints[0]" (ranges keep the index of the entry they came from)
    listen: Addr
    upstream: Upstream  # the default route: no match, no SNI, not TLS
    listen_interface: str | None = None
    routes: tuple[Route, ...] = ()

    def upstreams(self) -> tuple[tuple[str, Upstream], ...]:
        """(place, upstream) of the endpoint's default route, then of each route."""
        return ((self.place, self.upstream), *((r.place, r.upstream) for r in self.routes))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: Addr
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    endpoints: tuple[Endpoint, ...]
    log: LogConfig = field(default_factory=LogConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)  # global, resolved
    api: ApiConfig | None = None
    workers: int = 1
    nofile: int | None = None  # -n; None = raise soft limit to hard limit
    pipe_pages: int = 16  # -p; splice pipe size in 4 KiB pages
    daemon: bool = False
    drain_timeout: float = 30  # seconds SIGTERM waits for running transfers


class ConfigError(Exception):
    """A configuration problem. `str()` is one line naming the place, e.g.
    "endpoints[1].balance: unknown strategy 'rr' (expected roundrobin, iphash)"."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}" if place else message)
        self.place = place
        self.message = message
