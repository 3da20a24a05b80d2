"""The configuration as data: frozen dataclasses, fully resolved.

`config.load` turns TOML/JSON/legacy files and command-line flags into one `Config`.
Everything here is already merged and validated:

- precedence (command line > route > endpoint > global) has been applied, so every
  upstream's `network` (an endpoint's default route and each route) is complete;
- port ranges have been expanded, so each `Endpoint` listens on exactly one port;
- every route carries its own resolved remote/balance/transport (falling back to the
  endpoint's values where the route did not set them);
- `place` is the path used in error and log messages, e.g. "endpoints[2].routes[0]".

Runtime objects (balancers, route tables, resolver, listening sockets) are built from
this by `snirelay.net.runtime` and `snirelay.server`; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snirelay.config.option import Flag, option

LOG_LEVELS = ("off", "error", "warn", "info", "debug", "trace")
DNS_MODES = ("ipv4_only", "ipv6_only", "ipv4_then_ipv6", "ipv6_then_ipv4", "ipv4_and_ipv6")
DNS_PROTOCOLS = ("tcp", "udp", "tcp_and_udp")
BALANCE_STRATEGIES = ("off", "roundrobin", "iphash")
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


_MPTCP = Flag(
    ("-m", "--mptcp", "--mtcp"), switch=True, help="MPTCP both ways (--mtcp: realm's spelling)"
)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """realm's [network] table plus snirelay's additions: the one table of network options.

    Each option is declared once, here, with `option()` (config/option.py): name, type
    and default are the field's; the doc line, the command-line flag and the range
    checked are in its metadata. From these `config.network` makes the loader's reading
    of ``[network]`` (global, endpoint and route levels), the argparse flags and the
    network table of docs/reference/config.md. Adding an option is adding a field.
    """

    no_tcp: bool = option(
        False, "do not relay TCP", flag=Flag(("-t", "--ntcp"), switch=True, help="disable TCP")
    )
    use_udp: bool = option(
        False, "relay UDP too", flag=Flag(("-u", "--udp"), switch=True, help="enable UDP")
    )
    ipv6_only: bool = option(
        False,
        "IPV6_V6ONLY on `[::]` listeners",
        flag=Flag(("-6", "--ipv6"), switch=True, help="IPV6_V6ONLY on listeners"),
    )
    tcp_timeout: float = option(
        5.0, "connect timeout per remote address; 0 = none", flag=Flag(("--tcp-timeout",))
    )
    udp_timeout: float = option(
        30.0,
        "a UDP association is closed after this long without traffic (either way)",
        flag=Flag(("--udp-timeout",)),
    )
    udp_max_sessions: int = option(
        10000,
        "UDP associations per endpoint at most; past it new clients are refused (logged)",
        minimum=1,
        snirelay=True,
    )
    tcp_keepalive: float = option(
        15.0,
        "TCP keepalive idle time and interval; 0 = system default",
        flag=Flag(("--tcp-keepalive",)),
    )
    tcp_keepalive_probe: int = option(
        3,
        "keepalive probes before the connection is dropped; 0 = system default "
        "(read from its own flag, unlike realm)",
        flag=Flag(("--tcp-keepalive-probe",)),
    )
    send_mptcp: bool = option(False, "MPTCP toward remotes", flag=_MPTCP)
    accept_mptcp: bool = option(False, "MPTCP on listeners", flag=_MPTCP)
    send_proxy: bool = option(
        False,
        "send a PROXY protocol header to the remote (endpoint or route): the client's and the"
        " relay's addresses; v2 adds the SNI and, when the relay ended the TLS, its version",
        flag=Flag(("--send-proxy",)),
    )
    send_proxy_version: int = option(
        2,
        "PROXY protocol version sent",
        flag=Flag(("--send-proxy-version",), metavar="1|2"),
        minimum=1,
        maximum=2,
    )
    accept_proxy: bool = option(
        False,
        "require a PROXY header from clients (TCP: v1 or v2, read whole first; UDP: v2 on"
        " every datagram); its client is the connection's (record, iphash, a header sent"
        " on); none or a bad one: closed (TCP) or dropped (UDP)",
        flag=Flag(("--accept-proxy",)),
    )
    accept_proxy_timeout: float = option(
        5.0, "deadline for that header", flag=Flag(("--accept-proxy-timeout",))
    )
    tcp_idle_timeout: float = option(
        300.0,
        "close a connection with no traffic either way; 0 = off",
        flag=Flag(("--tcp-idle-timeout",)),
        snirelay=True,
    )
    sniff_timeout: float = option(
        10.0,
        "deadline for the first bytes (ClientHello / HTTP head) when an endpoint has routes",
        positive=True,
        snirelay=True,
    )
    sniff_max_bytes: int = option(
        65536,
        "cap on the bytes read while sniffing",
        minimum=1,
        maximum=16 * 1024 * 1024,
        snirelay=True,
    )
    replay_timeout: float = option(
        10.0,
        "deadline for the backend to accept the sniffed bytes replayed to it",
        flag=Flag(("--replay-timeout",)),
        positive=True,
        snirelay=True,
    )
    tls_session_tickets: bool = option(
        True,
        "session tickets toward TLS clients, for resumption (false: every client"
        " handshake is a full one)",
        snirelay=True,
    )
    tls_handshake_timeout: float = option(
        10.0,
        "deadline for each TLS handshake (terminating toward the client, re-originating"
        " toward the backend)",
        flag=Flag(("--tls-handshake-timeout",)),
        positive=True,
        snirelay=True,
    )


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
    """`roundrobin: 4, 2, 1` / `iphash: 2, 1` / `off`; weights in order remote,
    extra_remotes.

    `strategy` is "off" (every connection to `remote`) when the config set none, as in
    realm. `weights` has one entry per remote in use: the first ``len(weights)`` remotes
    are balanced over, the others only a pre-connect hook picks (realm's rule: as many
    remotes as weights; "off" uses one).
    """

    strategy: str = "off"
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
    pre_conn_hook: str | None = None  # -j / pre_conn_hook: realm's C-ABI hook library
    # one-line warnings the loader found (retired keys, remotes never used, ...): logged
    # at start and at each reload, never fatal
    warnings: tuple[str, ...] = ()


class ConfigError(Exception):
    """A configuration problem. `str()` is one line naming the place, e.g.
    "endpoints[1].balance: unknown strategy 'rr' (expected roundrobin, iphash)"."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}" if place else message)
        self.place = place
        self.message = message
