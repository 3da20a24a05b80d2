"""From probes to findings: what is wrong, in words, with the fix and a command to confirm.

How it works
------------
`findings(target, probes, now)` reads the probes of `snirelay check` (one with the SNI
when there is a name, one without) and names each problem once. Pure: no I/O, so the
words are tested on made-up probes as well as on real servers.

Severity follows who fails: `error` when clients that use the name will fail (the probe
with SNI does not verify, is refused, or reaches no TLS service), `warning` when only
clients that send no SNI or connect by IP will. A problem of the certificate the server
sends to both probes is named once, as an error. When the probe without SNI gets a
different certificate, only that difference is named (the state of that other
certificate is beside the point: it is the wrong one).

The fixes are the solution matrix of docs/design.md §1: A, the client uses the name
(`curl --resolve`, a DNS or hosts entry) and the relay passes TLS through; B, a
certificate that covers what clients use (at the server, or at the relay that
terminates); C, the relay terminates and re-originates with `sni=`.

With `check --api URL`, the relay's own list of recent handshakes (`Relay`, fetched by
`diagnose.check`) is read here too: `match` finds each probe in it by the probe's local
port (and address: with NAT or a proxy in between only the port may agree), and
`relay_findings` compares what the relay received with what the probe sent. A
different SNI means something between this machine and the relay changed it; an SNI
the relay itself re-originated with is its configuration at work (words, from
`relay_notes`, not a finding); a failure the relay recorded is named; a probe that
reached the port but is not listed says the API is another relay's, or something in
between opened its own connection.

Codes are stable (docs/reference/doctor.md lists them); messages may change wording.
"""

from __future__ import annotations

import datetime
import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snirelay.diagnose.probe import Cert, Probe
from snirelay.wire.names import is_ip, normalize_name

EXPIRY_WARNING_DAYS = 14  # as the relay warns at start (net.tlsconf)

# OpenSSL verify codes (X509_V_ERR_*) read here
V_NOT_YET_VALID = 9
V_EXPIRED = 10
V_DEPTH_ZERO_SELF_SIGNED = 18
V_SELF_SIGNED_IN_CHAIN = 19
V_UNABLE_TO_GET_ISSUER_LOCALLY = 20
V_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21


@dataclass(frozen=True)
class Target:
    """What `check` was asked: `host` and `port` as given, the name to send (None when
    there is none: `host` is an IP and no --sni), the address to reach instead
    (--connect), the CA file (None: the system store)."""

    host: str
    port: int
    name: str | None
    connect: str | None = None
    ca: str | None = None

    @property
    def ip(self) -> str | None:
        """The IP a client would connect to by address, when one is in play."""
        if self.connect is not None and is_ip(self.connect):
            return self.connect
        return self.host if is_ip(self.host) else None

    @property
    def reach(self) -> str:
        """The host part of -connect: what is connected to."""
        host = self.connect or self.host
        return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "error" | "warning"
    message: str
    fix: str
    confirm: str

    def as_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "confirm": self.confirm,
        }


def _cafile(t: Target) -> str:
    return f" -CAfile {shlex.quote(t.ca)}" if t.ca else ""


def s_client(t: Target, sni: str | None) -> str:
    """The openssl command that repeats a probe."""
    server = f"-servername {shlex.quote(sni)}" if sni else "-noservername"
    return (
        f"openssl s_client -connect {t.reach}:{t.port} {server}{_cafile(t)}"
        " -verify_return_error -brief </dev/null"
    )


def curl(t: Target, name: str) -> str:
    """The curl command a client that uses the name would run against this address."""
    ca = f" --cacert {shlex.quote(t.ca)}" if t.ca else ""
    host = t.connect or (t.host if is_ip(t.host) else None)
    resolve = f" --resolve {name}:{t.port}:{host}" if host else ""
    return f"curl -sv{ca}{resolve} https://{name}:{t.port}/ -o /dev/null"


def _names(cert: Cert) -> str:
    return ", ".join(cert.names()) or f"no subjectAltName (subject {cert.subject})"


def _ways_for_ip(t: Target, name: str | None) -> str:
    """The three ways out for clients that send no SNI (they connect by address)."""
    real = name or "NAME"
    where = t.ip or "THE_IP"
    return (
        f"A: have clients use the name: a DNS or hosts entry for {real}, or"
        f" `curl --resolve {real}:{t.port}:{where}`; B: terminate at the relay with a"
        f' certificate for the address clients use (listen_transport = "tls;cert=...;key=..."'
        f" covering {where} or the relay's own name); C: terminate and re-originate:"
        f' remote_transport = "tls;sni={real}", so the backend gets its name whatever'
        " the client sent"
    )


def _reach_finding(p: Probe, t: Target, severity: str) -> Finding | None:
    """The finding for a probe that reached no TLS service (or None: it did)."""
    where = p.address or f"{t.host}:{t.port}"
    nc = f"nc -vz -w 5 {t.reach} {t.port}"
    if p.outcome == "resolve-failed":
        return Finding(
            "resolve-failed",
            severity,
            f"{t.connect or t.host} does not resolve: {p.error}",
            "check the name (or give the address with --connect IP)",
            f"getent ahosts {shlex.quote(t.connect or t.host)}",
        )
    if p.outcome == "connect-refused":
        return Finding(
            "connect-refused",
            severity,
            f"nothing listens on {where}: the connection was refused",
            "check the port and that the service (or the relay's endpoint) is running there",
            nc,
        )
    if p.outcome == "connect-timeout":
        return Finding(
            "connect-timeout",
            severity,
            f"{where} does not answer: {p.error}",
            "check the address, the firewall (a DROP rule looks like this, a REJECT like"
            " a refusal) and that the host is up",
            nc,
        )
    if p.outcome == "connect-failed":
        return Finding(
            "connect-failed",
            severity,
            f"cannot connect to {where}: {p.error}",
            "check the address and the route to it",
            nc,
        )
    if p.outcome == "not-tls":
        http = p.answer.startswith(b"HTTP/")
        return Finding(
            "not-tls",
            severity,
            f"{where} does not speak TLS: {p.error.split(': ', 1)[-1] if p.error else ''}",
            (
                f"this port serves plain HTTP: use http://{t.host}:{t.port}/, or point the"
                " client (or the relay's remote) at the TLS port, usually 443"
                if http
                else "point the client (or the relay's remote) at the service's TLS port"
            ),
            f"curl -sv http://{t.reach}:{t.port}/ -o /dev/null" if http else nc,
        )
    if p.outcome == "handshake-timeout":
        return Finding(
            "handshake-timeout",
            severity,
            f"{where} accepted the connection but did not answer the ClientHello: {p.error}",
            "check that this port serves TLS (a service that waits for its own protocol"
            " looks like this) and that nothing in between holds the connection",
            s_client(t, p.sni),
        )
    return None


def _refusal(p: Probe, t: Target, name: str | None) -> Finding:
    """The probe reached TLS and the handshake did not complete."""
    what = f"alert {p.alert}" if p.alert else (p.error or p.outcome)
    if p.sni is None:
        return Finding(
            "no-sni-refused",
            "warning",
            f"without SNI the server refuses the handshake ({what}): clients that send no"
            " SNI, as every client that connects by IP address does, fail",
            _ways_for_ip(t, name),
            s_client(t, None),
        )
    fixes = {
        "unrecognized_name": f"the server has no site for {p.sni}: check the name, and"
        " the server's configuration for it (nginx server_name)",
        "handshake_failure": "no protocol version or cipher in common, or the server"
        f" refuses {p.sni}: compare with `openssl s_client -tls1_2` and the server's"
        " TLS settings",
        "protocol_version": "no TLS version in common: the server may only speak an old"
        " version this OpenSSL no longer allows",
        "certificate_required": "the server wants a client certificate (mutual TLS): give"
        " one (the relay: remote_transport client_cert=...;client_key=...)",
        "no_application_protocol": "the server speaks none of the ALPN protocols offered:"
        " change --alpn (the relay: the transport's alpn=)",
    }
    fix = fixes.get(p.alert or "", "read the server's error log for this handshake")
    return Finding(
        "handshake-refused",
        "error",
        f"with SNI {p.sni} the server refuses the handshake ({what})",
        fix,
        s_client(t, p.sni),
    )


def _cert_findings(p: Probe, t: Target, severity: str, now: datetime.datetime) -> list[Finding]:
    """What is wrong with the certificate `p` received (for the name it asked for, or
    with no name, for what a client by IP checks)."""
    leaf = p.leaf
    assert leaf is not None
    out: list[Finding] = []
    confirm = s_client(t, p.sni)
    subject = f"the certificate for {_names(leaf)}"
    # dates first: OpenSSL names one verify error, a certificate can have several
    if now >= leaf.not_after:
        out.append(
            Finding(
                "expired",
                severity,
                f"{subject} expired on {leaf.not_after:%Y-%m-%d}"
                f" ({-leaf.days_left(now)} day(s) ago)",
                "renew it on the server (the relay, when it terminates: replace the files of"
                " cert=/key= and reload)",
                confirm,
            )
        )
    elif now < leaf.not_before:
        out.append(
            Finding(
                "not-yet-valid",
                severity,
                f"{subject} is not valid before {leaf.not_before:%Y-%m-%d %H:%M} UTC",
                "check the clock of this machine and of the server; or the certificate was"
                " issued with a start date in the future",
                confirm,
            )
        )
    elif leaf.days_left(now) < EXPIRY_WARNING_DAYS:
        out.append(
            Finding(
                "expires-soon",
                "warning",
                f"{subject} expires on {leaf.not_after:%Y-%m-%d} (in {leaf.days_left(now)} day(s))",
                "renew it before then",
                confirm,
            )
        )
    chain = _chain_finding(p, t, severity, subject)
    if chain is not None:
        out.append(chain)
    name = p.sni
    if name is not None and p.covers(name) is False:
        out.append(
            Finding(
                "name-not-covered",
                severity,
                f"{subject} does not cover {name}",
                f"B: serve a certificate whose subjectAltName covers {name} (if the server"
                f" hosts several sites, check that {name} is one of them); C: if clients"
                " must use another name, terminate at the relay with a certificate for it"
                " and re-originate with sni= set to a name the server's certificate covers",
                confirm,
            )
        )
    return out


def _chain_finding(p: Probe, t: Target, severity: str, subject: str) -> Finding | None:
    if p.verified is not False:
        return None
    leaf = p.leaf
    assert leaf is not None
    store = f"the CA file {t.ca}" if t.ca else "the system store"
    trust = (
        "clients with --cacert FILE (curl) or their own trust store, the relay with ca=FILE"
        f' in remote_transport ("tls;sni={p.sni or "NAME"};ca=FILE")'
    )
    confirm = s_client(t, p.sni)
    code = p.verify_code
    if code in (V_EXPIRED, V_NOT_YET_VALID) and len(p.chain) == 1:
        return None  # named by the date check
    if code == V_DEPTH_ZERO_SELF_SIGNED or (leaf.self_signed and len(p.chain) == 1):
        return Finding(
            "self-signed",
            severity,
            f"{subject} is self-signed: no client trusts it unless told to",
            "B: serve a certificate from a CA the clients trust (ACME / Let's Encrypt); or"
            f" trust this one explicitly: {trust}",
            confirm,
        )
    last = p.chain[-1]
    if code == V_SELF_SIGNED_IN_CHAIN or (last.self_signed and code is not None):
        return Finding(
            "unknown-ca",
            severity,
            f"{subject} leads to the CA {last.subject}, which {store} does not trust",
            f"if it is a private CA, trust it: here with --ca FILE, {trust}; else serve a"
            " certificate from a public CA",
            confirm,
        )
    if code in (V_UNABLE_TO_GET_ISSUER_LOCALLY, V_UNABLE_TO_VERIFY_LEAF_SIGNATURE):
        sent = "only the leaf" if len(p.chain) == 1 else f"{len(p.chain)} certificates"
        if last.ca_issuers or last.is_ca:
            where = (
                f" (the certificate says it is at {last.ca_issuers[0]})" if last.ca_issuers else ""
            )
            return Finding(
                "chain-incomplete",
                severity,
                f"{subject}: the server sends {sent}, not the intermediate CA that issued"
                f" it ({last.issuer}){where}; browsers may fetch it, curl, openssl, Python, Go"
                " and most apps fail",
                "serve the full chain: the leaf followed by the intermediate (fullchain.pem;"
                " nginx: both in ssl_certificate; the relay: both in the cert= file)",
                confirm,
            )
        return Finding(
            "unknown-ca",
            severity,
            f"{subject} is issued by {last.issuer}, which is neither sent by the server nor"
            f" in {store} (a private CA, or the intermediate is missing from the chain)",
            f"if it is a private CA, trust it: here with --ca FILE, {trust}; else serve the"
            " full chain (the leaf followed by its intermediate)",
            confirm,
        )
    return Finding(
        "verify-failed",
        severity,
        f"{subject} does not verify against {store}: {p.verify_error}",
        "read the message: it is OpenSSL's verdict, the one curl gives",
        confirm,
    )


def findings(
    target: Target, probes: list[Probe], now: datetime.datetime, relay: Relay | None = None
) -> list[Finding]:
    """Every problem the probes (and, with `relay`, the relay's view of them) show,
    once, errors first."""
    named = next((p for p in probes if p.sni is not None), None)
    bare = next((p for p in probes if p.sni is None), None)
    out: list[Finding] = []
    if named is not None:
        reach = _reach_finding(named, target, "error")
        if reach is not None:
            out.append(reach)
        elif named.outcome != "ok":
            out.append(_refusal(named, target, target.name))
        else:
            out += _cert_findings(named, target, "error", now)
    if bare is not None:
        out += _bare_findings(bare, named, target, now)
    out += relay_findings(target, probes, relay)
    return sorted(out, key=lambda f: f.severity != "error")


def _bare_findings(
    bare: Probe, named: Probe | None, t: Target, now: datetime.datetime
) -> list[Finding]:
    """The probe without SNI: what clients that send none get."""
    name = t.name
    if named is None:  # no name to compare with: this is what clients by address get
        reach = _reach_finding(bare, t, "error")  # no client at all gets through
        if reach is not None:
            return [reach]
        if bare.outcome != "ok":
            return [_refusal(bare, t, None)]
        return _cert_findings(bare, t, "warning", now) + _address_finding(bare, t, None)
    if named.outcome not in ("ok", "alert", "closed", "tls-error"):
        return []  # the same address failed before TLS: named once already
    reach = _reach_finding(bare, t, "warning")
    if reach is not None:
        return [reach]
    if bare.outcome != "ok":
        return [_refusal(bare, t, name)]
    leaf, named_leaf = bare.leaf, named.leaf
    assert leaf is not None
    if named_leaf is not None and leaf.fingerprint == named_leaf.fingerprint:
        return _address_finding(bare, t, name)
    if name is None or bare.covers(name) is not False:
        return _address_finding(bare, t, name)
    ip = f" (nor {t.ip})" if t.ip is not None and bare.covers(t.ip) is False else ""
    return [
        Finding(
            "no-sni-different-certificate",
            "warning",
            f"without SNI the server sends a different certificate, for {_names(leaf)},"
            f" which does not cover {name}{ip}: clients that send no SNI, as every client"
            " that connects by IP address does, get it and fail",
            _ways_for_ip(t, name),
            s_client(t, None),
        )
    ]


def _address_finding(bare: Probe, t: Target, name: str | None) -> list[Finding]:
    """A client that connects by IP gets the certificate of the probe without SNI: does
    it cover that IP? (Only asked when an IP is in play: the host or --connect.)"""
    ip = t.ip
    leaf = bare.leaf
    if ip is None or leaf is None or bare.covers(ip) is not False:
        return []
    return [
        Finding(
            "address-not-covered",
            "warning",
            f"a client that connects to https://{t.reach}:{t.port}/ sends no SNI and gets the"
            f" certificate for {_names(leaf)}, which does not cover {ip}: it fails",
            _ways_for_ip(t, name),
            s_client(t, None),
        )
    ]


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
