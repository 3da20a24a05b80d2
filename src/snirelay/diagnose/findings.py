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

The fixes are the three ways out in docs/discussion/why-no-sni-rewrite-in-passthrough.md:
A, the client uses the name (`curl --resolve`, a DNS or hosts entry) and the relay
passes TLS through; B, a certificate that covers what clients use (at the server, or at
the relay that terminates); C, the relay terminates and re-originates with `sni=`.

With `check --api URL`, what the relay saw of the probes is compared too
(`diagnose.sightings`).

Codes are stable (docs/reference/doctor.md lists them); messages may change wording.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snirelay.diagnose.probe import Cert, Probe
from snirelay.wire.names import is_ip

if TYPE_CHECKING:
    from snirelay.diagnose.sightings import Relay

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
    """Every problem the probes (and, with `relay`, a `diagnose.sightings.Relay`: the
    relay's view of them) show, once, errors first."""
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
    if relay is not None:
        from snirelay.diagnose.sightings import relay_findings

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
