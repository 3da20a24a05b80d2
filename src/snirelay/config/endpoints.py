"""`[[endpoints]]` and `[[endpoints.routes]]`: from raw tables to `Endpoint` / `Route`.

How it works
------------
`parse_endpoint` reads one raw endpoint table and returns one `Endpoint` per listen
port (a listen range ``host:7000-7009`` expands; every endpoint of the expansion keeps
the entry's place). Each remote (``remote``, ``extra_remotes``, and the routes' remotes)
is either one port, used for every listen port, or a range of the listen range's length,
paired by position.

Fallbacks (docs/reference/config.md, routes): a route's unset keys take the endpoint's value.
The remote group is taken as a whole: a route that sets ``remote`` gets its own
``extra_remotes`` and ``balance`` (default: none and off); a route without
``remote`` uses the endpoint's remotes, and its own ``balance`` if set. Networks:
defaults < global [network] < endpoint network < route network < command line; the
caller passes the global network (file values only) and the command-line overrides.

Balance strings, read as realm reads them: ``"off"`` (or no ``balance``: realm's default)
sends every connection to ``remote``; ``"roundrobin: 4, 2, 1"`` / ``"iphash: 2, 1"``
balance over as many remotes as there are weights, in order remote, extra_remotes
(``"roundrobin: 1"`` with three remotes uses ``remote`` only; ``"roundrobin:"`` too).
Remotes left out so get a warning (`notes.warn`): they carry no traffic unless a
pre-connect hook picks them. More weights than remotes is an error (realm panics).
snirelay's addition: a strategy without a colon (``"roundrobin"``, realm panics on it)
spreads over every remote with weight 1.

Server names: exact host names (normalised), ``*.suffix`` wildcards, ``~regex``
(compiled with RE2, as routing matches it, to check it). The same exact name (or wildcard) in two
routes of one endpoint, or the same `when` twice, is an error naming both.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from typing import Any

from snirelay.config.addr import parse_addr_range, parse_through
from snirelay.config.model import (
    BALANCE_STRATEGIES,
    WHEN_CONDITIONS,
    Addr,
    Balance,
    ConfigError,
    Endpoint,
    NetworkConfig,
    Route,
    Transport,
    Upstream,
)
from snirelay.config.network import NETWORK_KEYS, parse_network
from snirelay.config.notes import Errors, warn
from snirelay.config.table import Table
from snirelay.config.transport import parse_transport
from snirelay.patterns import compile_regex
from snirelay.wire.names import host_name, is_ip

_UPSTREAM_KEYS = (
    "remote",
    "extra_remotes",
    "balance",
    "max_fails",
    "fail_timeout",
    "through",
    "interface",
    "listen_transport",
    "remote_transport",
    "network",
)
ENDPOINT_KEYS = ("listen", "listen_interface", *_UPSTREAM_KEYS, "routes")
ROUTE_KEYS = ("server_names", "when", *_UPSTREAM_KEYS)

_WEIGHT = re.compile(r"[0-9]{1,9}")
Spec = tuple[str, list[int]]  # host, ports (one, or one per listen port)


def parse_balance(
    raw: str | None, count: int, place: str, unused_place: str = "", *, quiet: bool = False
) -> Balance:
    """`raw` balance string for `count` remotes (see the module docstring). `unused_place`
    names the remotes a warning says are never used (`extra_remotes`); `quiet`: no
    warning (a route inheriting the endpoint's remotes, already warned about)."""
    if raw is None:
        strategy, weights_text, colon = "off", "", True
    else:
        name, sep, weights_text = raw.partition(":")
        strategy, colon = name.strip().lower(), bool(sep)
        if strategy not in BALANCE_STRATEGIES:
            raise ConfigError(
                place,
                f"unknown strategy {name.strip()!r} (expected {', '.join(BALANCE_STRATEGIES)})",
            )
    if count == 0:
        return Balance(strategy, ())
    weights: list[int] = []
    if strategy != "off":  # realm reads no weights for "off"
        for item in weights_text.split(",") if weights_text.strip() else ():
            text = item.strip()
            if not _WEIGHT.fullmatch(text) or int(text) < 1:
                raise ConfigError(place, f"weight {text!r} is not a positive integer in {raw!r}")
            weights.append(int(text))
    if len(weights) > count:
        raise ConfigError(
            place, f"{len(weights)} weights for {count} remote(s) (remote, then extra_remotes)"
        )
    if not colon and strategy != "off":
        weights = [1] * count  # snirelay: "roundrobin" alone spreads over every remote
    elif not weights:
        weights = [1]  # realm: no weights, one remote in use
    if len(weights) < count and not quiet:
        why = (
            "there is no 'balance' (realm's default is off: every connection goes to 'remote')"
            if raw is None
            else "balance is off"
            if strategy == "off"
            else f"balance gives {len(weights)} weight(s), and realm uses as many remotes as weights"
        )
        unused = "never used" if len(weights) == 1 else f"from [{len(weights) - 1}] on never used"
        warn(
            unused_place or place,
            f"{unused}: {why}; to spread over all {count}, set balance = "
            f'"roundrobin: {", ".join(["1"] * count)}"',
        )
    return Balance(strategy, tuple(weights))


class _Ctx:
    """What parsing one endpoint entry needs besides its table."""

    def __init__(self, place: str, listen_count: int, net: NetworkConfig, cli_net: dict[str, Any]):
        self.place = place
        self.count = listen_count
        self.net = net
        self.cli_net = cli_net

    def spec(self, raw: str, place: str) -> Spec:
        host, ports = parse_addr_range(raw, place)
        if len(ports) > 1 and len(ports) != self.count:
            if self.count == 1:
                raise ConfigError(place, f"port range {raw!r} needs a listen port range too")
            raise ConfigError(
                place,
                f"port range {raw!r} has {len(ports)} ports, the listen range has {self.count}",
            )
        return host, ports


def _remotes(tbl: Table, ctx: _Ctx) -> list[Spec] | None:
    remote = tbl.text("remote")
    extras = tbl.strings("extra_remotes")
    if remote is None:
        if extras:
            raise tbl.error("extra_remotes", "needs 'remote' too")
        return None
    specs = [ctx.spec(remote, tbl.place_of("remote"))]
    for i, extra in enumerate(extras or []):
        specs.append(ctx.spec(extra, f"{tbl.place_of('extra_remotes')}[{i}]"))
    return specs


def _transport(tbl: Table, key: str, side: str) -> Transport | None:
    raw = tbl.text(key, nonempty=False)
    if raw is None or not raw.strip():
        return None
    return parse_transport(raw, tbl.place_of(key), side)


def _common(tbl: Table, net: NetworkConfig, cli_net: dict[str, Any]) -> dict[str, Any]:
    """The upstream keys a table sets itself (absent keys left out), network resolved."""
    out: dict[str, Any] = {}
    if "max_fails" in tbl:
        out["max_fails"] = tbl.integer("max_fails", 1)
    if "fail_timeout" in tbl:
        out["fail_timeout"] = tbl.seconds("fail_timeout")
    through = tbl.text("through")
    if through is not None:
        out["through"] = parse_through(through, tbl.place_of("through"))
    if "interface" in tbl:
        out["interface"] = tbl.text("interface")
        _device_exists(tbl, "interface")
    if "listen_transport" in tbl:
        out["listen_transport"] = _transport(tbl, "listen_transport", "listen")
    if "remote_transport" in tbl:
        out["remote_transport"] = _transport(tbl, "remote_transport", "remote")
    net_tbl = tbl.table("network", NETWORK_KEYS)
    own = dataclasses.replace(net, **parse_network(net_tbl)) if net_tbl else net
    out["network"] = own
    out["_final_network"] = dataclasses.replace(own, **cli_net)
    return out


def _udp_differs(place: str, net: NetworkConfig, balance: Balance) -> None:
    """Where snirelay's UDP does more than realm's (which sends every datagram to
    `remote`, plain), the start says so: the same config sends UDP elsewhere, or wants
    PROXY headers, under snirelay."""
    if not net.use_udp:
        return
    if len(balance.weights) > 1:
        warn(
            f"{place}.balance",
            f"UDP is balanced over {len(balance.weights)} remotes, as TCP is (realm sends"
            " UDP to 'remote' only)",
        )
    for key, what in (
        ("accept_proxy", "every datagram must start with a PROXY v2 header"),
        ("send_proxy", "every datagram to the backend starts with a PROXY v2 header"),
    ):
        if getattr(net, key):
            warn(f"{place}.network.{key}", f"applies to UDP too: {what} (realm's UDP ignores it)")


def _device_exists(tbl: Table, key: str) -> None:
    """A device that does not exist (yet: it may appear later, a VPN's tun) is a
    warning, not an error; each connection that fails for it names it."""
    name = tbl.data[key]
    try:
        socket.if_nametoindex(name)
    except OSError:
        warn(
            tbl.place_of(key),
            f"no network device {name!r} here now: connections through it fail until it exists",
        )


def _upstream(specs: list[Spec], balance: Balance, k: int, common: dict[str, Any]) -> Upstream:
    remotes = tuple(Addr(h, ports[k] if len(ports) > 1 else ports[0]) for h, ports in specs)
    fields = {key: v for key, v in common.items() if not key.startswith("_") and key != "network"}
    return Upstream(remotes=remotes, balance=balance, network=common["_final_network"], **fields)


def parse_endpoint(
    raw: object,
    place: str,
    net: NetworkConfig,
    cli_net: dict[str, Any],
    display: dict[str, str] | None = None,
) -> list[Endpoint]:
    """One raw endpoint table -> one Endpoint per listen port (see module docstring)."""
    tbl = Table(raw, place, ENDPOINT_KEYS, display)
    listen = tbl.text("listen")
    if listen is None:
        raise tbl.error("listen", "missing (every endpoint needs a listen address)")
    lhost, lports = parse_addr_range(listen, tbl.place_of("listen"), allow_zero=True)
    ctx = _Ctx(place, len(lports), net, cli_net)
    specs = _remotes(tbl, ctx)
    common = _common(tbl, net, cli_net)
    balance_raw = tbl.text("balance")
    if specs is None and balance_raw is not None and ":" in balance_raw:
        raise tbl.error("balance", "weights given but the endpoint has no remote")
    balance = parse_balance(
        balance_raw, len(specs or []), tbl.place_of("balance"), tbl.place_of("extra_remotes")
    )
    raw_routes = tbl.tables("routes")
    if specs is None and not raw_routes:
        raise tbl.error("remote", "missing (an endpoint without routes needs a remote)")
    routes = _routes(raw_routes or [], tbl.place_of("routes"), ctx, specs, balance_raw, common)
    _udp_differs(place, common["_final_network"], balance)
    listen_interface = tbl.text("listen_interface")
    out = []
    for k, port in enumerate(lports):
        out.append(
            Endpoint(
                place=place,
                listen=Addr(lhost, port),
                upstream=_upstream(specs or [], balance, k, common),
                listen_interface=listen_interface,
                routes=tuple(build(k) for build in routes),
            )
        )
    return out


class _RouteBuilder:
    __slots__ = ("place", "specs", "balance", "common", "names", "when")

    def __init__(
        self,
        place: str,
        specs: list[Spec],
        balance: Balance,
        common: dict[str, Any],
        names: tuple[str, ...],
        when: str | None,
    ) -> None:
        self.place, self.specs, self.balance, self.common = place, specs, balance, common
        self.names, self.when = names, when

    def __call__(self, k: int) -> Route:
        return Route(
            place=self.place,
            upstream=_upstream(self.specs, self.balance, k, self.common),
            server_names=self.names,
            when=self.when,
        )


def _routes(
    raws: list[Any],
    place: str,
    ctx: _Ctx,
    ep_specs: list[Spec] | None,
    ep_balance: str | None,
    ep_common: dict[str, Any],
) -> list[_RouteBuilder]:
    builders = []
    owners: dict[str, str] = {}  # exact name / wildcard / when -> place of the route
    errors = Errors()  # each route's problem is reported, not only the first
    for i, raw in enumerate(raws):
        with errors.part():
            builders.append(
                _route(raw, f"{place}[{i}]", ctx, ep_specs, ep_balance, ep_common, owners)
            )
    errors.raise_any()
    return builders


def _route(
    raw: Any,
    rplace: str,
    ctx: _Ctx,
    ep_specs: list[Spec] | None,
    ep_balance: str | None,
    ep_common: dict[str, Any],
    owners: dict[str, str],
) -> _RouteBuilder:
    """One route entry (the endpoint's remotes and keys are its fallbacks)."""
    tbl = Table(raw, rplace, ROUTE_KEYS)
    names = _server_names(tbl, owners)
    when = tbl.choice("when", WHEN_CONDITIONS)
    if names and when is not None:
        raise ConfigError(rplace, "has both 'server_names' and 'when' (give one)")
    if not names and when is None:
        raise ConfigError(rplace, "needs 'server_names' or 'when'")
    if when is not None:
        if "when:" + when in owners:
            raise tbl.error("when", f"{when!r} is already handled by {owners['when:' + when]}")
        owners["when:" + when] = rplace
    specs = _remotes(tbl, ctx)
    balance_raw = tbl.text("balance")
    inherited = specs is None and balance_raw is None
    if specs is None:
        if ep_specs is None:
            raise ConfigError(rplace, "no 'remote', and the endpoint has none to fall back to")
        specs = ep_specs
        if balance_raw is None:
            balance_raw = ep_balance
    balance = parse_balance(
        balance_raw,
        len(specs),
        tbl.place_of("balance"),
        tbl.place_of("extra_remotes") if "remote" in tbl else f"{ctx.place}.extra_remotes",
        quiet=inherited,
    )
    # start from the endpoint's own keys, then the route's (network resolved from
    # the endpoint's own network, not the global one)
    common = {**ep_common, **_common(tbl, ep_common["network"], ctx.cli_net)}
    return _RouteBuilder(rplace, specs, balance, common, names, when)


def _server_names(tbl: Table, owners: dict[str, str]) -> tuple[str, ...]:
    names = tbl.strings("server_names")
    if names is None:
        return ()
    if not names:
        raise tbl.error("server_names", "must not be empty")
    out = []
    for j, name in enumerate(names):
        place = f"{tbl.place_of('server_names')}[{j}]"
        if name.startswith("~"):
            try:
                compile_regex(name[1:])  # RE2, as routing matches it
            except ValueError as exc:
                raise ConfigError(place, str(exc)) from None
            norm = name
        elif name.startswith("*."):
            suffix = host_name(name[2:])
            if suffix is None:
                raise ConfigError(place, f"invalid wildcard {name!r} (expected '*.example.com')")
            norm = "*." + suffix
        else:
            if is_ip(name.strip("[]")):
                raise ConfigError(
                    place, f'{name!r} is an IP address, never a server name (use when = "ip_sni")'
                )
            exact = host_name(name)
            if exact is None:
                raise ConfigError(place, f"{name!r} is not a valid host name")
            norm = exact
        if not norm.startswith("~"):
            if norm in owners:
                raise ConfigError(place, f"{norm!r} is already listed in {owners[norm]}")
            owners[norm] = place
        out.append(norm)
    return tuple(out)
