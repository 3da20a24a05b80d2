"""`snirelay explain -c CONFIG [--probe] [--timeout S] [--json]`: read a config as a
reviewer would.

How it works
------------
The config is loaded as the relay loads it (`load_config`), and every endpoint's
runtime is built as the relay builds it before it listens (`net.runtime.EndpointRT`:
certificate and key files, CA bundles), so a config `explain` accepts is one the relay
starts with, and one it refuses is refused here with the same one-line error.

Per endpoint, in plain words: the mode of its default route and of each route, the
routing table in order, and for a client using each configured name, and for one
connecting by IP (no SNI), the route the relay's own decision picks
(`routing.decide`, the function the relay runs on every connection) and the SNI the
backend then receives (`ClientTLS.server_hostname` when the relay re-originates, the
client's own SNI when TLS passes through). Then the warnings (`diagnose.review`), and
for each route the client commands that test it through the relay.

With `--probe`, each backend is probed as `snirelay check` probes (`diagnose.probe`)
with the SNI the relay would send: a passthrough route's backend with each of the
route's exact names (does its certificate cover it and verify against the system
store, as the client will require?), a re-originating route's backend with the
configured `sni=`, `ca=` and client certificate (does it verify as the relay will
require?). What fails is a warning on that route.

Warning codes (stable; docs/reference/doctor.md): remote-ip-no-sni, insecure,
route-shadowed, h2-coalescing, passthrough-overlaps-terminate, send-proxy,
self-signed-listener, certificate-expiry, and probe-CODE for what a probe
found (CODE as in `snirelay check`).

Exit codes: 0 nothing to warn about, 1 warnings, 2 an invalid config, one the relay
would refuse at start (`server.unsupported`), or a usage error (one line on stderr).
"""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from snirelay.config.describe import mode_of
from snirelay.config.model import Addr, Config, ConfigError, Endpoint, Upstream
from snirelay.config.notes import error_lines
from snirelay.diagnose.check import wrap
from snirelay.diagnose.review import Note, probe_notes, review, sample, served_names
from snirelay.diagnose.usage import Parser, Usage
from snirelay.routing import Decision, decide
from snirelay.wire.names import is_ip
from snirelay.wire.sniff import Sniffed

PROG = "snirelay explain"
FORWARD_SNI = "forward: the relay does not read the bytes, the backend gets what the client sent"
UNMATCHED = "unmatched.invalid"  # a name no route takes (RFC 6761 reserves .invalid)


def _parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Say what a config does with each name and address, warn about what"
        " will go wrong, and give the commands that test each route.",
    )
    p.add_argument("-c", "--config", metavar="CONFIG", required=True, help="file or directory")
    p.add_argument("--probe", action="store_true", help="also probe each TLS backend")
    p.add_argument("--timeout", metavar="S", type=float, default=5.0, help="per probe step")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    return p


# -- the model of the explanation ---------------------------------------------------------


@dataclass
class RouteView:
    """A route (or an endpoint's default) as explained."""

    place: str  # "endpoints[0].routes[1]", or the endpoint's place for its default
    match: str  # "emby.example.com, *.example.com" / 'when = "no_sni"' / "default"
    mode: str  # key: forward, passthrough, terminate, reoriginate, terminate+reoriginate, ws
    words: str  # the mode in a sentence
    remotes: list[str]
    balance: str | None
    certificate: list[str] | None  # names the relay's certificate covers (terminating)
    commands: list[str] = field(default_factory=list)


@dataclass
class NameView:
    """Where a client using `name` goes (`name` None: a client by IP, sending no SNI)."""

    name: str | None
    route: str  # place, or "default"
    closed: str | None  # the close reason when the relay closes instead
    backend_sni: str | None
    sni_why: str


@dataclass
class EndpointView:
    place: str
    listen: str
    routes: list[RouteView]
    names: list[NameView]


# -- modes ---------------------------------------------------------------------------------


def _match(route_names: tuple[str, ...], when: str | None) -> str:
    if when is not None:
        return f'when = "{when}"'
    return ", ".join(route_names)


def _balance(up: Upstream) -> str | None:
    if len(up.remotes) < 2:
        return None
    used = len(up.balance.weights)
    text = (
        "off"
        if up.balance.strategy == "off"
        else f"{up.balance.strategy}: " + ", ".join(str(w) for w in up.balance.weights)
    )
    if used < len(up.remotes):
        text += f"; {len(up.remotes) - used} of {len(up.remotes)} remotes unused"
    return text


# -- the decision for a name ---------------------------------------------------------------


def _sniffed(name: str | None) -> Sniffed:
    return Sniffed("tls", name, False, None, None)


def backend_sni(rt: Any, up: Upstream, client_sni: str | None) -> tuple[str | None, str]:
    """The SNI the backend receives, and why (words)."""
    if rt.client_tls is not None:
        remote = up.remotes[0].host if up.remotes else ""
        sent = rt.client_tls.server_hostname(client_sni, remote)
        t = up.remote_transport
        assert t is not None
        if t.sni == "$sni":
            why = "sni=$sni: the client's own SNI"
        elif t.sni is not None:
            why = f"sni={t.sni}" + (" (an IP: no SNI, the IP is verified)" if is_ip(t.sni) else "")
        elif client_sni is not None:
            why = "no sni=: the client's SNI"
        elif remote and not is_ip(remote):
            why = "no sni=, no SNI from the client: the remote's name"
        else:
            why = "no sni=, no SNI from the client and the remote is an IP: none"
        return sent, why
    if rt.server_tls is not None or rt.server_ws is not None:
        return None, "the relay terminates and sends plain bytes: no TLS to the backend"
    if rt.client_ws is not None:
        return None, "plain WebSocket to the backend: no TLS"
    if client_sni is None:
        return None, "passthrough: the client sent none"
    return client_sni, "passthrough: what the client sent"


def _where(ep: Endpoint, ert: Any, name: str | None) -> tuple[Decision, Upstream, Any]:
    if ert.table is not None:
        d = decide(ert.table, _sniffed(name), has_default=bool(ep.upstream.remotes))
    else:
        d = Decision(None, None, None, "unsniffed")
    if d.route is None:
        return d, ep.upstream, ert.default
    return d, d.route.upstream, ert.routes[d.route.place]


def name_view(ep: Endpoint, ert: Any, name: str | None, shown: str | None = None) -> NameView:
    d, up, rt = _where(ep, ert, name)
    sni, why = backend_sni(rt, up, name)
    if d.close:
        sni, why = None, d.hint or "closed"
    if sni is not None and shown is not None and name is not None and sni == name:
        sni = shown  # a wildcard's sample: the backend gets whatever name matched it
    return NameView(shown or name, d.place, d.close, sni, why)


# -- commands ------------------------------------------------------------------------------


def _client_host(listen: Addr) -> str:
    """The address a test client on this machine uses for a listen address."""
    if listen.host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if listen.host == "::":
        return "::1"
    return listen.host


def commands(listen: Addr, view: RouteView, up: Upstream, names: list[str]) -> list[str]:
    """Client commands that test one route through the relay."""
    host = _client_host(listen)
    bracket = f"[{host}]" if ":" in host else host
    port = listen.port
    lt = up.listen_transport
    if lt is not None and lt.ws:
        scheme = "https" if lt.tls else "http"
        k = " -k" if lt.tls else ""
        return [
            f"curl -si{k} --max-time 5 -H 'Host: {lt.host}' -H 'Connection: Upgrade'"
            " -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13'"
            " -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='"
            f" {scheme}://{bracket}:{port}{lt.path}   # expect 101"
        ]
    if view.mode == "forward":
        return [f"nc -vz {host} {port}", f"snirelay check {bracket}:{port}"]
    if view.match == 'when = "not_tls"':
        return [f"curl -sv http://{bracket}:{port}/ -o /dev/null"]
    out: list[str] = []
    for name in names:
        out += [
            f"curl -sv --resolve {name}:{port}:{host} https://{name}:{port}/ -o /dev/null",
            f"openssl s_client -connect {bracket}:{port} -servername {name} -brief </dev/null",
            f"snirelay check {name}:{port} --connect {host}",
        ]
    if not names:
        out += [
            f"curl -sv https://{bracket}:{port}/ -o /dev/null",
            f"openssl s_client -connect {bracket}:{port} -noservername -brief </dev/null",
            f"snirelay check {bracket}:{port}",
        ]
    return out


# -- the review ----------------------------------------------------------------------------


def explain_endpoint(ep: Endpoint, ert: Any) -> EndpointView:
    routed = bool(ep.routes)
    views: list[RouteView] = []
    for route in ep.routes:
        rt = ert.routes[route.place]
        key, words = mode_of(route.upstream, routed)
        view = RouteView(
            route.place,
            _match(route.server_names, route.when),
            key,
            words,
            [str(a) for a in route.upstream.remotes],
            _balance(route.upstream),
            _names_of(served_names(rt)),
        )
        names = [s for s in (sample(n) for n in route.server_names) if s is not None]
        view.commands = commands(ep.listen, view, route.upstream, names)
        views.append(view)
    key, words = mode_of(ep.upstream, routed)
    default = RouteView(
        ep.place,
        "default" + (f" ({', '.join(_default_takes(ert))})" if routed else ""),
        key,
        words,
        [str(a) for a in ep.upstream.remotes],
        _balance(ep.upstream),
        _names_of(served_names(ert.default)),
    )
    takes_bare = not routed or "no SNI" in default.match
    default.commands = commands(ep.listen, default, ep.upstream, [] if takes_bare else [UNMATCHED])
    views.append(default)
    seen: list[NameView] = []
    for route in ep.routes:
        for pattern in route.server_names:
            name = sample(pattern)
            if name is None:
                continue
            seen.append(name_view(ep, ert, name, pattern))
    if key == "forward":
        seen.append(NameView(None, "default", None, None, FORWARD_SNI))
    else:
        seen.append(name_view(ep, ert, UNMATCHED))
        seen.append(name_view(ep, ert, None))
    return EndpointView(ep.place, str(ep.listen), views, seen)


def _default_takes(ert: Any) -> list[str]:
    """What reaches an endpoint's default route, besides names no route matches."""
    table = ert.table
    out = ["names no route matches"]
    if table.pick(None, tls=True, name_is_ip=False) is None:
        out.append("no SNI")
    if table.pick("192.0.2.1", tls=True, name_is_ip=True) is None:
        out.append("an IP as SNI")
    if table.pick(None, tls=False, name_is_ip=False) is None:
        out.append("not TLS")
    return out


def _names_of(sans: list[tuple[str, str]] | None) -> list[str] | None:
    return None if sans is None else [v for _, v in sans]


# -- output ------------------------------------------------------------------------------


def as_document(views: list[EndpointView], notes: list[Note]) -> dict[str, Any]:
    return {
        "endpoints": [
            {
                "place": v.place,
                "listen": v.listen,
                "routes": [
                    {
                        "place": r.place,
                        "match": r.match,
                        "mode": r.mode,
                        "description": r.words,
                        "remotes": r.remotes,
                        "balance": r.balance,
                        "certificate": r.certificate,
                        "commands": r.commands,
                    }
                    for r in v.routes
                ],
                "names": [
                    {
                        "name": n.name,
                        "route": n.route,
                        "closed": n.closed,
                        "backend_sni": n.backend_sni,
                        "why": n.sni_why,
                    }
                    for n in v.names
                ],
            }
            for v in views
        ],
        "warnings": [n.as_json() for n in notes],
    }


def render(views: list[EndpointView], notes: list[Note]) -> str:
    lines: list[str] = []
    for v in views:
        lines.append(f"{v.place}: listen {v.listen}")
        lines.append("  routes, in order:")
        for i, r in enumerate(v.routes, 1):
            to = ", ".join(r.remotes) or "nowhere (closed)"
            bal = f" ({r.balance})" if r.balance else ""
            label = r.place if r.match.startswith("default") else f"{r.place}  {r.match}"
            lines.append(f"    {i}. {label}")
            if r.match.startswith("default"):
                lines.append(f"       {r.match}")
            lines.append(f"       -> {to}{bal}")
            lines += wrap(f"       {r.words}", "       ")
            if r.certificate is not None:
                lines.append(f"       the relay's certificate covers: {', '.join(r.certificate)}")
            for c in r.commands:
                lines.append(f"       try: {c}")
        lines.append("  a client that uses:")
        for n in v.names:
            who = n.name or "no name (connects by IP, sends no SNI)"
            if n.name == UNMATCHED:
                who = "any other name" if len(v.routes) > 1 else "any name"
            if n.closed:
                lines.append(f"    {who}: closed ({n.closed}): {n.sni_why}")
                continue
            if n.sni_why == FORWARD_SNI:
                lines.append(f"    any client: {n.route}; {n.sni_why}")
                continue
            sni = n.backend_sni or "none"
            if n.name == UNMATCHED and sni == UNMATCHED:
                sni = "that name"
            lines += wrap(
                f"    {who}: {n.route}; the backend gets SNI {sni} ({n.sni_why})", "      "
            )
        lines.append("")
    if not notes:
        lines.append("nothing to warn about")
    for note in notes:
        lines += wrap(f"warning [{note.code}] {note.place}: {note.message}", "  ")
        lines += wrap(f"  fix: {note.fix}", "    ")
    lines.append(f"{len(notes)} warning(s)")
    return "\n".join(lines) + "\n"


def load(path: str) -> tuple[Config, list[Any]]:
    """The config and its endpoints' runtimes, as the relay builds them (ConfigError)."""
    from snirelay.config.load import load_config
    from snirelay.net.runtime import EndpointRT

    config = load_config(path)
    return config, [EndpointRT(ep) for ep in config.endpoints]


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
        if not args.timeout > 0:
            raise Usage("--timeout: seconds, more than 0")
    except Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        config, rts = load(args.config)
    except ConfigError as e:
        for line in error_lines(e):
            print(f"{PROG}: {line}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    from snirelay.server import unsupported

    missing = unsupported(config)  # the relay refuses these at start: so does explain
    if missing is not None:
        print(f"{PROG}: {missing}", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.UTC)
    views = [explain_endpoint(ep, ert) for ep, ert in zip(config.endpoints, rts, strict=True)]
    notes = review(config, rts, now)
    if args.probe:
        notes += probe_notes(config, rts, args.timeout)
    if args.json:
        print(json.dumps(as_document(views, notes), indent=2))
    else:
        sys.stdout.write(render(views, notes))
    return 1 if notes else 0
