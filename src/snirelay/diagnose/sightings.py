"""The relay's view of `snirelay check`'s probes (`check --api URL`): pure, no I/O.

How it works
------------
The relay's own list of recent handshakes (`Relay`, fetched by `diagnose.check`):
`match` finds each probe in it by the probe's local port (and address: with NAT or a proxy in between only the port may agree), and
`relay_findings` compares what the relay received with what the probe sent. A
different SNI means something between this machine and the relay changed it; an SNI
the relay itself re-originated with is its configuration at work (words, from
`relay_notes`, not a finding); a failure the relay recorded is named; a probe that
reached the port but is not listed says the API is another relay's, or something in
between opened its own connection.

Codes are stable (docs/reference/doctor.md lists them); messages may change wording.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snirelay.diagnose.findings import Finding, Target, s_client
from snirelay.diagnose.probe import Probe
from snirelay.wire.names import normalize_name

# -- the relay's view of the probes (check --api) ----------------------------------------

API_LIMIT = 1000  # handshakes asked for: GET /handshakes?limit=API_LIMIT
SEEN_WINDOW = 300.0  # seconds: a listed handshake older than the probe by more is not it
RELAY_OK = ("ok", "passthrough")  # outcomes of a handshake the relay carried on with


@dataclass(frozen=True)
class Relay:
    """What `check --api URL` got from the relay's admin API. `entries` is its
    GET /handshakes list, newest first (None when it was not asked, or failed); then
    `error` says why and `problem` which way: "unreachable" (no HTTP answer), "refused"
    (401 or 403: the token), "bad-answer" (another status, or not a JSON list)."""

    url: str  # the base URL, without a trailing "/"
    entries: tuple[dict[str, Any], ...] | None = None
    error: str | None = None
    problem: str | None = None
    token: bool = False  # a token was sent

    @property
    def asked(self) -> bool:
        return self.entries is not None or self.error is not None


@dataclass(frozen=True)
class Sighting:
    """A probe found in the relay's list: the entry, the local address of the probe's
    connection it was found by, whether the relay saw that same address (False: only
    the port agrees, something in between changed the address), and whether it is the
    connection the probe reports on (False: its first one, whose certificate the probe
    refused before a second, unverified handshake that is not listed)."""

    probe: Probe
    entry: dict[str, Any]
    local: str
    same_address: bool
    last: bool


def reached(p: Probe) -> bool:
    """Did the probe connect (so that the relay, if it is there, saw it)?"""
    return p.local is not None


def split_address(text: object) -> tuple[str, int] | None:
    """ "127.0.0.1:54321" / "[::1]:54321" -> (host, port); None for anything else."""
    if not isinstance(text, str):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _same_host(a: str, b: str) -> bool:
    """The same address, an IPv4 one also in its IPv6-mapped form (::ffff:127.0.0.1, as a
    dual-stack listener sees an IPv4 client)."""
    try:
        ips = [ipaddress.ip_address(x.partition("%")[0]) for x in (a, b)]
    except ValueError:
        return a == b
    plain = [ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped
             else ip for ip in ips]  # fmt: skip
    return plain[0] == plain[1]


def _recent(entry: dict[str, Any], started: float | None) -> bool:
    when = entry.get("time")
    if started is None or not isinstance(when, int | float):
        return True
    return when >= started - SEEN_WINDOW


def _find(
    local: str, started: float | None, entries: Sequence[dict[str, Any]]
) -> tuple[dict[str, Any], bool] | None:
    """The newest entry from `local`'s address and port; else the newest from its port
    alone; with whether the address agrees."""
    mine = split_address(local)
    if mine is None:
        return None
    by_port: dict[str, Any] | None = None
    for entry in entries:
        seen = split_address(entry.get("client"))
        if seen is None or seen[1] != mine[1] or not _recent(entry, started):
            continue
        if _same_host(seen[0], mine[0]):
            return entry, True
        by_port = by_port or entry
    return (by_port, False) if by_port is not None else None


def match(probes: Sequence[Probe], entries: Sequence[dict[str, Any]]) -> list[Sighting]:
    """Each probe that connected, found in `entries` (newest first) by its local port:
    the newest entry from the same address and port, else the newest from the same port
    (NAT, a proxy), never one older than the probe by more than SEEN_WINDOW. A probe
    that handshook twice (the certificate did not verify) is looked for by its second
    connection first: the outcome it reports is that one's."""
    out = []
    for p in probes:
        tries = [(p.local_retry, True), (p.local, p.local_retry is None)]
        for local, last in tries:
            found = _find(local, p.started, entries) if local else None
            if local and found is not None:
                out.append(Sighting(p, found[0], local, found[1], last))
                break
    return out


def _name_of(value: object) -> str | None:
    return normalize_name(value) if isinstance(value, str) and value else None


def _sni(value: object) -> str:
    return f"SNI {value}" if isinstance(value, str) and value else "no SNI"


def _field(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return str(value) if value is not None else "-"


def relay_notes(p: Probe, relay: Relay | None) -> list[str]:
    """What the relay's list says of probe `p`, in words for the text report (empty
    when there is no list, or `p` did not connect)."""
    if relay is None or relay.entries is None or not reached(p):
        return []
    seen = match([p], relay.entries)
    if not seen:
        return [f"relay saw: no handshake from {p.local} (see probe-not-seen below)"]
    s, e = seen[0], seen[0].entry
    up = e.get("upstream_sni")
    lines = [
        f"relay saw: {_sni(e.get('sni'))}, {_upstream(e)}route {_field(e, 'route')}"
        f" ({_field(e, 'mode')}), outcome {_field(e, 'outcome')}"
    ]
    if not s.same_address:
        lines.append(
            f"matched by the port only: the relay saw the client as {_field(e, 'client')},"
            f" the probe came from {s.local} (NAT or a proxy in between changes the address)"
        )
    if not s.last:
        lines.append(
            "this is the probe's first connection (it refused the certificate); its"
            " second, unverified one is not listed"
        )
    if e.get("reoriginated") is True and _name_of(up) != _name_of(p.sni):
        if up:
            why = "sni= in its config" + ("" if p.sni else ", or its remote's name")
            lines.append(
                f"the relay re-originated with SNI {up} ({why}): the backend gets {up}"
                " whatever the client sends; that is the rewrite working as configured, not"
                " something in between"
            )
        else:
            lines.append(
                "the relay re-originated without SNI (`snirelay explain -c CONFIG` says why)"
            )
    return lines


def _upstream(e: dict[str, Any]) -> str:
    """What the relay sent the backend, as the note says it ("" when nothing went)."""
    if e.get("outcome") == "no-route":
        return ""
    if e.get("reoriginated") is True or str(e.get("mode")) == "passthrough":
        return f"sent upstream {_sni(e.get('upstream_sni'))}, "
    return "sent upstream without TLS (it ended at the relay), "


def _api_curl(relay: Relay, limit: int = 5) -> str:
    auth = ' -H "Authorization: Bearer $SNIRELAY_API_TOKEN"' if relay.token else ""
    return f"curl -s{auth} {shlex.quote(f'{relay.url}/handshakes?limit={limit}')}"


def _api_finding(relay: Relay) -> Finding:
    """The API did not give the list: why, and what to check."""
    confirm = _api_curl(Relay(relay.url, token=True) if relay.problem == "refused" else relay)
    if relay.problem == "refused":
        sent = "no token was sent" if not relay.token else "the token sent is not the relay's"
        return Finding(
            "api-refused",
            "warning",
            f"the relay's API at {relay.url} refused the request ({relay.error}; {sent}):"
            " what the relay received could not be compared with what the probes sent",
            "give the token of the relay's [api] section: --api-token TOKEN, or"
            " SNIRELAY_API_TOKEN in the environment (which keeps it out of the process list)",
            confirm,
        )
    if relay.problem == "bad-answer":
        return Finding(
            "api-bad-answer",
            "warning",
            f"{relay.url} answered, but not with the relay's list of handshakes"
            f" ({relay.error}): what the relay received could not be compared",
            "give the base URL of snirelay's admin API, as in the relay's [api] listen"
            " (http://HOST:PORT), not one of its pages or another service",
            confirm,
        )
    return Finding(
        "api-unreachable",
        "warning",
        f"the relay's API at {relay.url} did not answer ({relay.error}): what the relay"
        " received could not be compared with what the probes sent",
        "check the URL against the relay's [api] listen (the relay logs \"listening on ..."
        ' (api, http)" at start), that the relay runs, and that this machine may reach'
        " that address (an API on 127.0.0.1 answers on the relay's host only)",
        confirm,
    )


def _changed(t: Target, relay: Relay, s: Sighting) -> Finding | None:
    """The SNI the relay received is not the one the probe sent: something in between."""
    sent, got = s.probe.sni, s.entry.get("sni")
    if _name_of(sent) == _name_of(got):
        return None
    if sent is None:
        what = f"the probe sent no SNI and the relay received {_sni(got)}: something between"
        what += " this machine and the relay adds an SNI"
    elif not got:
        what = (
            f"the probe sent SNI {sent} and the relay received none: something between this"
            " machine and the relay strips the SNI (clients that use the name reach the"
            " relay as if they had sent none, and take the route for no SNI)"
        )
    else:
        what = (
            f"the probe sent SNI {sent} and the relay received {_sni(got)}: something between"
            f" this machine and the relay rewrites the SNI (clients that use {sent} get the"
            " route, and the backend, of the other name)"
        )
    return Finding(
        "sni-changed-in-between",
        "error" if sent is not None else "warning",
        what,
        "find what is in between: a transparent proxy, a firewall or IPS that inspects TLS,"
        " a load balancer or port forward that rewrites the hello; run the same check on"
        " the relay's own host (--connect 127.0.0.1) to compare, and exempt the relay's"
        " address from that device's TLS handling",
        f"{s_client(t, sent)}; {_api_curl(relay)}",
    )


def _failed(s: Sighting, severity: str) -> Finding | None:
    """The relay recorded a failure for the probe's connection."""
    e = s.entry
    outcome = e.get("outcome")
    if not s.last or not isinstance(outcome, str) or outcome in RELAY_OK:
        return None
    sni, route = _sni(e.get("sni")), _field(e, "route")
    explain = "`snirelay explain -c CONFIG --probe` shows the route each name takes and"
    explain += " probes each backend as the relay does"
    if outcome == "no-route":
        message = f"the relay has no route for {sni} on {_field(e, 'endpoint')}: it closed"
        message += " the connection"
        got = e.get("sni")
        if isinstance(got, str) and got:
            fix = f"add {got} to a route's server_names"
        else:
            fix = 'add a route with when = "no_sni"'
        fix += f", or give the endpoint a remote of its own (unmatched connections go there); {explain}"
    else:
        message = f"the relay took route {route} ({_field(e, 'mode')}) for {sni} and failed:"
        message += f" {outcome}"
        if outcome.startswith("tls-backend"):
            fix = f"the relay's TLS to the backend failed (it sent {_sni(e.get('upstream_sni'))}):"
            fix += " check the backend's certificate for that name and the route's ca= and"
            fix += f" sni=; {explain}"
        elif outcome.startswith("tls-client"):
            fix = "the client's handshake with the relay failed: check the route's"
            fix += f" listen_transport (its certificate, alpn=); {explain}"
        elif outcome.startswith("connect"):
            fix = (
                f"the relay reached none of the route's remotes: check that they listen; {explain}"
            )
        else:
            fix = f"read the relay's log for the client {_field(e, 'client')}; {explain}"
    return Finding("relay-outcome", severity, message, fix, "snirelay explain -c CONFIG --probe")


def _not_seen(t: Target, relay: Relay, missing: list[Probe]) -> Finding:
    """Probes that reached the port, and are not in the relay's list."""
    entries = relay.entries or ()
    which = ", ".join(f"{_sni(p.sni)} from {p.local}" for p in missing)
    lead = "neither probe" if len(missing) > 1 else "the probe"
    ports = {a[1] for a in (split_address(e.get("endpoint")) for e in entries) if a}
    hint = ""
    if entries and t.port not in ports:
        hint = f"; none of its handshakes came in on port {t.port}"
    if len(entries) >= API_LIMIT:
        hint += (
            f"; its list is full ({len(entries)}): newer handshakes may have pushed the probe out"
        )
    return Finding(
        "probe-not-seen",
        "warning",
        f"the relay's API does not list {lead} ({which}) among its {len(entries)} recent"
        f" handshakes{hint}",
        f"check that --api is the API of the relay that listens on {t.host}:{t.port} (the"
        " [api] section of the same config); that this endpoint reads the TLS hello (a"
        " plain forward, `remote` without routes or a listen_transport, is not listed:"
        " `snirelay explain -c CONFIG` shows its mode); that nothing in between opens a"
        " connection of its own (a proxy or load balancer: the relay then lists it at"
        " another address and port at the same time); that NAT keeps the source port;"
        " then run the check again",
        _api_curl(relay, 20),
    )


def relay_findings(t: Target, probes: list[Probe], relay: Relay | None) -> list[Finding]:
    """What the relay's list shows of the probes: nothing when it was not asked (no
    `--api`, or no probe connected); the reason when it could not be had."""
    if relay is None or not relay.asked:
        return []
    if relay.entries is None:
        return [_api_finding(relay)]
    named = any(p.sni is not None for p in probes)
    seen = match(probes, relay.entries)
    out: list[Finding] = []
    for s in seen:
        changed = _changed(t, relay, s)
        if changed is not None:
            out.append(changed)
        # as for the probes: only clients without SNI fail when a named probe exists
        failed = _failed(s, "error" if s.probe.sni is not None or not named else "warning")
        if failed is not None:
            out.append(failed)
    found = {id(s.probe) for s in seen}
    missing = [p for p in probes if reached(p) and id(p) not in found]
    if missing:
        out.append(_not_seen(t, relay, missing))
    return out
