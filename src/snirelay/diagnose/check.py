"""`snirelay check HOST:PORT [--sni NAME] [--connect IP] [--ca FILE] [--alpn LIST]
[--timeout S] [--strict] [--json]`: probe a TLS server the way an expert would.

How it works
------------
Two probes (`diagnose.probe`): one with the SNI (`--sni`, else HOST when it is a name)
and one with none, both to the same address (`--connect IP` reaches that address while
using the name, as `curl --resolve` does). Then `diagnose.findings` names each problem
with its severity, the fix and a command to confirm it, and this module prints the
probes and the findings as text, or as one JSON document (`--json`; its shape is in
docs/reference/doctor.md and `as_document` below).

Exit codes: 0 no errors (warnings are printed), 1 at least one error (with --strict,
also a warning), 2 a usage error (one line on stderr). An unreachable or silent target
is a finding, not a traceback: every step has a deadline (--timeout, default 5 s, for
each of resolve, connect and handshake).
"""

from __future__ import annotations

import datetime
import json
import ssl
import sys
import textwrap
from typing import Any

from snirelay.diagnose.findings import Finding, Target, findings
from snirelay.diagnose.probe import Cert, Probe, contexts, probe
from snirelay.diagnose.usage import Parser, Usage
from snirelay.wire.names import host_name, is_ip

PROG = "snirelay check"
WIDTH = 96  # of the words in the text report


def _parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Probe a TLS server with and without SNI, show the certificate chain,"
        " the name match and the verification, and say what to change.",
    )
    p.add_argument("target", metavar="HOST:PORT", help="the server (or the relay) to probe")
    p.add_argument("--sni", metavar="NAME", help="the name to send (default: HOST when a name)")
    p.add_argument("--connect", metavar="IP", help="connect here, use HOST/--sni as the name")
    p.add_argument("--ca", metavar="FILE", help="trust this CA bundle instead of the system store")
    p.add_argument("--alpn", metavar="LIST", help="ALPN protocols to offer, e.g. h2,http/1.1")
    p.add_argument("--timeout", metavar="S", type=float, default=5.0, help="per step (default 5)")
    p.add_argument("--strict", action="store_true", help="warnings also make the exit code 1")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    return p


def split_target(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT -> (host, port); Usage otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Usage(f"{text!r}: give HOST:PORT (e.g. example.com:443, [::1]:8443)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise Usage(f"{text!r}: an IPv6 address goes in brackets: [{host}]:{port}")
    if not host or (not is_ip(host) and host_name(host) is None):
        raise Usage(f"{text!r}: {host!r} is not a host name or an IP address")
    return host, int(port)


def parse(argv: list[str]) -> tuple[Target, tuple[str, ...], float, bool, bool]:
    args = _parser().parse_args(argv)
    host, port = split_target(args.target)
    sni = args.sni
    if sni is not None and (is_ip(sni) or host_name(sni) is None):
        raise Usage(f"--sni {sni!r}: a host name (an IP cannot be sent as SNI)")
    if args.connect is not None and not is_ip(args.connect):
        raise Usage(f"--connect {args.connect!r}: an IP address")
    if not args.timeout > 0 or args.timeout > 3600:
        raise Usage("--timeout: seconds, more than 0")
    alpn = tuple(a.strip() for a in args.alpn.split(",") if a.strip()) if args.alpn else ()
    name = sni or (None if is_ip(host) else host_name(host))
    target = Target(host, port, name, connect=args.connect, ca=args.ca)
    return target, alpn, args.timeout, args.strict, args.json


def run(target: Target, alpn: tuple[str, ...], timeout: float) -> list[Probe]:
    """The probes: with the name (when there is one), then without SNI."""
    ctxs = contexts(target.ca, alpn)
    probes = []
    if target.name is not None:
        probes.append(
            probe(
                "sni",
                target.host,
                target.port,
                sni=target.name,
                connect=target.connect,
                ctxs=ctxs,
                timeout=timeout,
            )  # fmt: skip
        )
    probes.append(
        probe(
            "no-sni",
            target.host,
            target.port,
            sni=None,
            connect=target.connect,
            ctxs=ctxs,
            timeout=timeout,
        )  # fmt: skip
    )
    return probes


def exit_code(found: list[Finding], strict: bool) -> int:
    if any(f.severity == "error" for f in found):
        return 1
    return 1 if strict and found else 0


def main(argv: list[str]) -> int:
    try:
        target, alpn, timeout, strict, as_json = parse(argv)
        try:
            probes = run(target, alpn, timeout)
        except (OSError, ssl.SSLError) as exc:  # the CA file: nothing else raises
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise Usage(f"--ca {target.ca}: {why}") from None
    except Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    now = datetime.datetime.now(datetime.UTC)
    found = findings(target, probes, now)
    if as_json:
        print(json.dumps(as_document(target, probes, found, now), indent=2))
    else:
        sys.stdout.write(render(target, probes, found, now))
    return exit_code(found, strict)


# -- output ------------------------------------------------------------------------------


def _cert_json(c: Cert, now: datetime.datetime) -> dict[str, Any]:
    return {
        "subject": c.subject,
        "issuer": c.issuer,
        "sans": [v for _, v in c.sans],
        "not_before": c.not_before.isoformat(),
        "not_after": c.not_after.isoformat(),
        "days_left": c.days_left(now),
        "key": c.key,
        "self_signed": c.self_signed,
        "ca": c.is_ca,
        "sha256": c.fingerprint,
    }


def _covers(p: Probe, target: Target) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for name in (target.name, target.ip):
        if name is not None:
            out[name] = p.covers(name)
    return out


def as_document(
    target: Target, probes: list[Probe], found: list[Finding], now: datetime.datetime
) -> dict[str, Any]:
    """The --json document: target, probes, findings (each code, severity, message,
    fix, confirm) and the counts."""
    return {
        "target": {
            "host": target.host,
            "port": target.port,
            "name": target.name,
            "connect": target.connect,
            "ca": target.ca,
        },
        "probes": [
            {
                "label": p.label,
                "sni": p.sni,
                "address": p.address,
                "outcome": p.outcome,
                "error": p.error,
                "alert": p.alert,
                "connect_ms": _ms(p.connect_ms),
                "handshake_ms": _ms(p.handshake_ms),
                "tls_version": p.version,
                "cipher": p.cipher,
                "alpn": p.alpn,
                "chain": [_cert_json(c, now) for c in p.chain],
                "verified": p.verified,
                "verify_error": p.verify_error,
                "covers": _covers(p, target),
            }
            for p in probes
        ],
        "findings": [f.as_json() for f in found],
        "errors": sum(f.severity == "error" for f in found),
        "warnings": sum(f.severity == "warning" for f in found),
    }


def wrap(text: str, indent: str) -> list[str]:
    """Words at most WIDTH wide, continued with `indent`."""
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False)  # fmt: skip


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _yes(value: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[value]


def render(
    target: Target,
    probes: list[Probe],
    found: list[Finding],
    now: datetime.datetime,
    *,
    timing: bool = True,
) -> str:
    """The text report (`timing=False` leaves out the measured times: golden tests)."""
    lines = [f"{PROG} {target.host}:{target.port}" + (f" (connect {target.connect})"
             if target.connect else "")]  # fmt: skip
    store = f"CA file {target.ca}" if target.ca else "the system store"
    for p in probes:
        lines.append("")
        head = f"SNI {p.sni}" if p.sni else "no SNI"
        lines.append(f"probe with {head} -> {p.address or f'{p.host}:{p.port}'}")
        if p.outcome != "ok" and not p.chain:
            lines.append(f"  {p.outcome}: {p.error}")
            continue
        took = ""
        if timing and p.connect_ms is not None and p.handshake_ms is not None:
            took = f"connect {p.connect_ms:.1f} ms, handshake {p.handshake_ms:.1f} ms: "
        if p.outcome == "ok":
            lines.append(f"  {took}{p.version}, {p.cipher}, ALPN {p.alpn or 'none'}")
        else:
            lines.append(f"  {p.outcome}: {p.error}")
        lines.append("  chain as sent:")
        for i, c in enumerate(p.chain):
            lines.append(f"    {i} {c.subject}")
            if c.sans:
                lines.append(f"      names: {', '.join(c.names())}")
            lines.append(f"      issuer: {c.issuer}" + (" (self-signed)" if c.self_signed else ""))
            lines.append(
                f"      valid {c.not_before:%Y-%m-%d} to {c.not_after:%Y-%m-%d}"
                f" ({c.days_left(now)} days left), {c.key}"
            )
        verdict = "ok" if p.verified else f"FAILED: {p.verify_error}"
        lines.append(f"  verify against {store}: {verdict}")
        covers = "; ".join(f"covers {n}: {_yes(v)}" for n, v in _covers(p, target).items())
        if covers:
            lines.append(f"  {covers}")
    if target.name is None:
        lines += ["", "note: no name to probe with: pass --sni NAME to see what clients"
                  " that use the name get"]  # fmt: skip
    lines.append("")
    if not found:
        lines.append("no problems found")
    for f in found:
        lines += wrap(f"{f.severity} [{f.code}] {f.message}", "  ")
        lines += wrap(f"  fix: {f.fix}", "    ")
        lines.append(f"  confirm: {f.confirm}")  # a command: not wrapped, to copy it whole
    errors = sum(f.severity == "error" for f in found)
    lines.append(f"{errors} error(s), {len(found) - errors} warning(s)")
    return "\n".join(lines) + "\n"
