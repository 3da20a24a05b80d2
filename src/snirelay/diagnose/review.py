"""`snirelay explain`'s warnings: what in a config will go wrong, and (with `--probe`)
what its backends answer the names the relay would send. Pure but for the probes;
`diagnose.explain` shows them with the rest of the explanation.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from snirelay.config.model import Config, Endpoint, Upstream
from snirelay.wire.names import certificate_covers, is_ip, normalize_name

SAMPLE_LABEL = "any-name"  # stands for the left-most label a wildcard matches


# findings about a server's answer to a client without SNI; when that client is the relay
# re-originating, solutions A and B do not apply: the relay must send the name
NAMELESS = ("no-sni-refused", "no-sni-different-certificate", "address-not-covered",
            "name-not-covered")  # fmt: skip
NAMELESS_FIX = (
    'send the backend its name: remote_transport = "tls;sni=NAME" (solution C); until then'
    " every client that sends no SNI fails here"
)
MAX_PROBED_NAMES = 8  # per route, with --probe


@dataclass(frozen=True)
class Note:
    """One warning: `place` is the config path it is about."""

    code: str
    place: str
    message: str
    fix: str

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "place": self.place, "message": self.message, "fix": self.fix}


# -- the certificate the relay serves ------------------------------------------------------


def served_names(rt: Any) -> list[tuple[str, str]] | None:
    """The subjectAltName entries of the certificate a terminating upstream serves
    (None when it does not terminate; [] when the file has none)."""
    tls = rt.server_tls
    if tls is None:
        return None
    from cryptography import x509

    from snirelay.diagnose.probe import cert_sans

    pem = tls.pem[0] if tls.pem is not None else _read(tls.cert)
    try:
        return cert_sans(x509.load_pem_x509_certificate(pem))
    except ValueError:
        return []


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _expiry(rt: Any, place: str, now: datetime.datetime) -> Note | None:
    tls = rt.server_tls
    if tls is None or tls.cert is None:
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(_read(tls.cert))
    except (OSError, ValueError):
        return None
    from snirelay.net.tlsconf import EXPIRY_WARNING_DAYS

    left = cert.not_valid_after_utc - now
    if left.days >= EXPIRY_WARNING_DAYS:
        return None
    when = f"expired {-left.days} day(s) ago" if left.total_seconds() <= 0 else (
        f"expires in {left.days} day(s)"
    )  # fmt: skip
    return Note(
        "certificate-expiry",
        f"{place}.listen_transport",
        f"the certificate {tls.cert} {when} ({cert.not_valid_after_utc:%Y-%m-%d})",
        "renew it and reload the relay",
    )


def sample(pattern: str) -> str | None:
    """A name the `server_names` entry matches (None for a regex: no sample is made)."""
    if pattern.startswith("~"):
        return None
    norm = normalize_name(pattern)
    return f"{SAMPLE_LABEL}.{norm[2:]}" if norm.startswith("*.") else norm


def review(config: Config, rts: list[Any], now: datetime.datetime) -> list[Note]:
    """Every warning for the config, in config order: first the loader's own (the lines
    the relay prints at start), then the review's."""
    notes: list[Note] = []
    for line in config.warnings:
        place, _, message = line.partition(": ")
        fix = "the relay prints this at start too; change the key it names if that is not meant"
        notes.append(Note("config", place, message, fix))
    for ep, ert in zip(config.endpoints, rts, strict=True):
        ups = [(ep.place, ep.upstream, ert.default)] + [
            (r.place, r.upstream, ert.routes[r.place]) for r in ep.routes
        ]
        for place, up, rt in ups:
            notes += _upstream_notes(place, up, rt, now)
        notes += _shadowed(ep, ert)
        notes += _coalescing(ep, ert)
        notes += _overlaps(ep, ert)
        notes += _listener_keys_on_routes(ep)
    return notes


# network keys that act before a route is chosen (the listener, the PROXY header, the
# sniff) or outside routing (UDP): the endpoint's value is the one used
LISTENER_KEYS = ("accept_proxy", "accept_proxy_timeout", "use_udp", "no_tcp", "ipv6_only",
                 "accept_mptcp", "sniff_timeout", "sniff_max_bytes")  # fmt: skip


def _listener_keys_on_routes(ep: Endpoint) -> list[Note]:
    out: list[Note] = []
    mine = ep.upstream.network
    for route in ep.routes:
        theirs = route.upstream.network
        for key in LISTENER_KEYS:
            if getattr(theirs, key) != getattr(mine, key):
                out.append(
                    Note(
                        "route-network-ignored",
                        f"{route.place}.network.{key}",
                        "acts before a route is chosen (or outside routing), so the"
                        f" endpoint's value ({getattr(mine, key)!r}) is the one used",
                        f"set {key} in {ep.place}'s own network table, or remove it here",
                    )
                )
    return out


def _upstream_notes(place: str, up: Upstream, rt: Any, now: datetime.datetime) -> list[Note]:
    out: list[Note] = []
    t = up.remote_transport
    if t is not None and t.tls:
        if t.sni is None and any(is_ip(a.host) for a in up.remotes):
            out.append(
                Note(
                    "remote-ip-no-sni",
                    f"{place}.remote_transport",
                    "the remote is an IP address and there is no sni=: the backend gets the"
                    " client's SNI, and none at all from clients that connect by IP (a"
                    " backend with several names then sends its default certificate, or"
                    " refuses), and its certificate is checked against that name or the IP",
                    'add the backend\'s name: remote_transport = "tls;sni=NAME" (solution C)',
                )
            )
        if t.insecure:
            out.append(
                Note(
                    "insecure",
                    f"{place}.remote_transport",
                    "insecure: the backend's certificate is not verified, so anything on"
                    " the path to it can pose as the backend",
                    "verify it: ca=FILE for a private CA, or nothing for a public one",
                )
            )
    lt = up.listen_transport
    if lt is not None and lt.tls and lt.servername is not None:
        out.append(
            Note(
                "self-signed-listener",
                f"{place}.listen_transport",
                f"servername={lt.servername}: a self-signed certificate is made at start;"
                " clients refuse it unless told to trust it",
                "give cert=FILE;key=FILE from a CA the clients trust (solution B)",
            )
        )
    expiry = _expiry(rt, place, now)
    if expiry is not None:
        out.append(expiry)
    if up.network.send_proxy:
        out.append(
            Note(
                "send-proxy",
                f"{place}.network.send_proxy",
                f"the backend receives a PROXY protocol v{up.network.send_proxy_version}"
                " header before the client's bytes: it must expect it, or it sees garbage"
                " (a TLS backend then fails every handshake)",
                "enable it on the backend (nginx: listen ... proxy_protocol; HAProxy:"
                " accept-proxy), or remove send_proxy",
            )
        )
    return out


def _shadowed(ep: Endpoint, ert: Any) -> list[Note]:
    """Routes (or names of routes) that an earlier route always takes first."""
    if ert.table is None:
        return []
    out: list[Note] = []
    index = {r.place: i for i, r in enumerate(ep.routes)}
    for i, route in enumerate(ep.routes):  # (a repeated name or `when` is a config error)
        taken: list[str] = []
        for pattern in route.server_names:
            earlier = _earlier(ep, ert, pattern, i, index)
            if earlier is not None:
                taken.append(f"{pattern} (by {earlier})")
        if taken and len(taken) == len(route.server_names):
            out.append(
                Note(
                    "route-shadowed",
                    route.place,
                    "every name of this route is taken by an earlier route, so it is never"
                    f" chosen: {', '.join(taken)}",
                    "move it before the route that takes its names, or remove it",
                )
            )
        elif taken:
            out.append(
                Note(
                    "route-shadowed",
                    route.place,
                    f"an earlier route takes some of its names: {', '.join(taken)}",
                    "move it before the route that takes them, or remove those names",
                )
            )
    return out


def _earlier(ep: Endpoint, ert: Any, pattern: str, i: int, index: dict[str, int]) -> str | None:
    """The earlier route that takes the names of `pattern` (route i's), or None."""
    if pattern.startswith("~"):
        for route in ep.routes[:i]:
            if pattern in route.server_names:
                return route.place
        return None
    name = sample(pattern)
    assert name is not None
    picked = ert.table.pick(name, tls=True, name_is_ip=False)
    if picked is None or index[picked.place] >= i:
        return None
    if pattern.startswith("*.") and not any(p.startswith(("*.", "~")) for p in picked.server_names):
        return None  # an exact name that happens to be the sample: not the whole wildcard
    return str(picked.place)


def _terminating(ep: Endpoint, ert: Any) -> list[tuple[str, Upstream, list[tuple[str, str]]]]:
    out = []
    for route in ep.routes:
        sans = served_names(ert.routes[route.place])
        if sans is not None:
            out.append((route.place, route.upstream, sans))
    sans = served_names(ert.default)
    if sans is not None:
        out.append((ep.place, ep.upstream, sans))
    return out


def _route_names(ep: Endpoint, place: str) -> tuple[str, ...]:
    for route in ep.routes:
        if route.place == place:
            return route.server_names
    return ()


def _coalescing(ep: Endpoint, ert: Any) -> list[Note]:
    """A certificate served on one terminating route that also covers the names of
    another terminating route with different backends: a browser that has an HTTP/2
    connection for one name reuses it for the other (RFC 7540 §9.1.1), and the relay,
    which routes per connection, sends those requests to the first route's backend."""
    out: list[Note] = []
    terms = _terminating(ep, ert)
    for place, up, sans in terms:
        if not any(v.startswith("*.") for k, v in sans if k == "DNS"):
            continue
        for other, oup, _ in terms:
            if other == place or oup.remotes == up.remotes:
                continue
            hit = [
                n
                for n in (sample(p) for p in _route_names(ep, other))
                if n is not None and certificate_covers(sans, n)
            ]
            if hit:
                shown = ", ".join(h.replace(SAMPLE_LABEL, "*") for h in hit)
                out.append(
                    Note(
                        "h2-coalescing",
                        place,
                        f"its wildcard certificate also covers {shown} of {other}, which goes"
                        " to other backends: a browser with an HTTP/2 connection for one name"
                        " reuses it for the other, and the relay (routing per connection)"
                        " sends those requests to this route's backend",
                        "give each route a certificate for its own names only, or offer only"
                        " alpn=http/1.1 on these listen transports",
                    )
                )
    return out


def _overlaps(ep: Endpoint, ert: Any) -> list[Note]:
    """A passthrough route for names the endpoint also terminates: whether the relay's
    certificate or the backend's reaches a client depends on the route order."""
    out: list[Note] = []
    terms = _terminating(ep, ert)
    for route in ep.routes:
        rt = ert.routes[route.place]
        if rt.server_tls is not None or rt.server_ws is not None or route.when is not None:
            continue
        for place, _, sans in terms:
            hit = [
                p
                for p in route.server_names
                if (n := sample(p)) is not None and certificate_covers(sans, n)
            ]
            if hit:
                out.append(
                    Note(
                        "passthrough-overlaps-terminate",
                        route.place,
                        f"passes {', '.join(hit)} through untouched, while {place} terminates"
                        " with a certificate that covers them too: clients of these names get"
                        " the backend's certificate, clients of the others the relay's",
                        "check that this is meant (the route order decides), or terminate"
                        " these names as well",
                    )
                )
    return out


# -- probing -------------------------------------------------------------------------------


def probe_notes(config: Config, rts: list[Any], timeout: float) -> list[Note]:
    """--probe: the backends, checked with the SNI the relay would send."""
    import datetime as dt

    from snirelay.diagnose.findings import Target, findings
    from snirelay.diagnose.probe import contexts, probe

    now = dt.datetime.now(dt.UTC)
    out: list[Note] = []
    for ep, ert in zip(config.endpoints, rts, strict=True):
        ups = [(ep.place, (), ep.upstream, ert.default)] + [
            (r.place, r.server_names, r.upstream, ert.routes[r.place]) for r in ep.routes
        ]
        for place, patterns, up, rt in ups:
            if not up.remotes:
                continue
            remote = up.remotes[0]
            t = up.remote_transport
            if rt.client_tls is not None and t is not None:
                if t.insecure:
                    continue
                sni = rt.client_tls.server_hostname(None, remote.host)
                names = [s for s in (sample(p) for p in patterns) if s] if t.sni == "$sni" else []
                ctx = rt.client_tls.context(t.alpn)
                jobs = [(n, t.ca) for n in names[:MAX_PROBED_NAMES]] or [(sni, t.ca)]
                what = "re-originating"
            elif rt.client_ws is None and rt.server_tls is None and rt.server_ws is None:
                exact = [p for p in patterns if not p.startswith(("~", "*."))]
                if not exact:
                    continue  # not known to be TLS, or no name to ask for
                jobs = [(n, None) for n in exact[:MAX_PROBED_NAMES]]
                ctx = None
                what = "passthrough"
            else:
                continue
            for name, ca in jobs:
                ctxs = contexts(ca, ())
                if ctx is not None:
                    ctxs = (ctx, ctxs[1])
                target = Target(remote.host, remote.port, name, ca=ca)
                p = probe("sni", remote.host, remote.port, sni=name, connect=None, ctxs=ctxs,
                          timeout=timeout)  # fmt: skip
                for f in findings(target, [p], now):
                    fix = f.fix
                    if name is None and f.code in NAMELESS:
                        fix = NAMELESS_FIX  # the client here is the relay: give it the name
                    out.append(
                        Note(
                            f"probe-{f.code}",
                            place,
                            f"{what} backend {remote} with SNI {name or 'none'}: {f.message}",
                            f"{fix} (confirm: {f.confirm})",
                        )
                    )
    return out
