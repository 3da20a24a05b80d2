"""`snirelay check HOST:PORT [--sni NAME] [--connect IP] [--ca FILE] [--alpn LIST]
[--timeout S] [--api URL [--api-token TOKEN]] [--strict] [--json]`: probe a TLS server
the way an expert would.

How it works
------------
Two probes (`diagnose.probe`): one with the SNI (`--sni`, else HOST when it is a name)
and one with none, both to the same address (`--connect IP` reaches that address while
using the name, as `curl --resolve` does). Then `diagnose.findings` names each problem
with its severity, the fix and a command to confirm it, and this module prints the
probes and the findings as text, or as one JSON document (`--json`; its shape is in
docs/reference/doctor.md and `as_document` below).

With `--api URL` (a running snirelay's admin API), after the probes `ask_relay` fetches
`URL/handshakes?limit=1000` with urllib: directly (no http_proxy: the token goes to the
relay only), no redirects followed (they would carry the token elsewhere), https
verified against --ca or the system store, the token (`--api-token`, else
SNIRELAY_API_TOKEN) as `Authorization: Bearer`. When a probe is not listed yet it asks
once more after RETRY_AFTER seconds: the relay notes a terminated handshake when the
client's last handshake message arrives, which can be after the probe moved on. Any
failure is data (`sightings.Relay.error`), named as a finding; `diagnose.findings`
matches the probes in the list and compares.

Exit codes: 0 no errors (warnings are printed), 1 at least one error (with --strict,
also a warning), 2 a usage error (one line on stderr). An unreachable or silent target
is a finding, not a traceback: every step has a deadline (--timeout, default 5 s, for
each of resolve, connect and handshake).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from snirelay.diagnose.findings import Finding, Target, findings
from snirelay.diagnose.probe import Cert, Probe, contexts, probe
from snirelay.diagnose.sightings import API_LIMIT, Relay, match, reached, relay_notes
from snirelay.diagnose.usage import Parser, Usage
from snirelay.wire.names import host_name, is_ip

PROG = "snirelay check"
WIDTH = 96  # of the words in the text report
TOKEN_ENV = "SNIRELAY_API_TOKEN"
RETRY_AFTER = 0.3  # seconds before asking the API again for a probe not listed yet
MAX_ANSWER = 16 * 1024 * 1024  # bytes of the API's answer read at most


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
    p.add_argument(
        "--api",
        metavar="URL",
        help="a running snirelay's admin API, e.g."
        " http://127.0.0.1:9090: compare the SNI it received with the one sent",
    )
    p.add_argument("--api-token", metavar="TOKEN", help=f"the API's token (default:"
                   f" ${TOKEN_ENV}, which keeps it out of the process list)")  # fmt: skip
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


@dataclass(frozen=True)
class Options:
    """The command line, checked."""

    target: Target
    alpn: tuple[str, ...]
    timeout: float
    strict: bool
    json: bool
    api: str | None = None  # the API's base URL, without a trailing "/"
    token: str | None = None


def api_url(text: str) -> str:
    """--api: an http:// or https:// URL with a host, no query -> without a trailing
    "/"; Usage otherwise."""
    why = f"--api {text!r}: the relay's admin API as an http:// or https:// URL, e.g."
    why += " http://127.0.0.1:9090"
    try:
        url = urllib.parse.urlsplit(text)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise Usage(why) from None
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise Usage(why)
    return text.rstrip("/")


def api_token(flag: str | None, api: str | None) -> str | None:
    """--api-token, else $SNIRELAY_API_TOKEN (only with --api); Usage for a token that
    cannot go in a header, or --api-token without --api."""
    if api is None:
        if flag is not None:
            raise Usage("--api-token: give --api URL too (the token is for the relay's API)")
        return None
    token, where = (
        (flag, "--api-token") if flag is not None else (os.environ.get(TOKEN_ENV), TOKEN_ENV)
    )
    if not token:
        return None
    if token != token.strip() or not all(32 <= ord(c) < 127 for c in token):
        raise Usage(f"{where}: printable ASCII, no spaces at the ends (it goes in a header)")
    return token


def parse(argv: list[str]) -> Options:
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
    api = api_url(args.api) if args.api is not None else None
    token = api_token(args.api_token, api)
    return Options(target, alpn, args.timeout, args.strict, args.json, api, token)


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
        opts = parse(argv)
        target = opts.target
        try:
            probes = run(target, opts.alpn, opts.timeout)
        except (OSError, ssl.SSLError) as exc:  # the CA file: nothing else raises
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise Usage(f"--ca {target.ca}: {why}") from None
    except Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    relay = None
    if opts.api is not None:
        relay = ask_relay(opts.api, opts.token, probes, opts.timeout, target.ca)
    now = datetime.datetime.now(datetime.UTC)
    found = findings(target, probes, now, relay)
    if opts.json:
        print(json.dumps(as_document(target, probes, found, now, relay), indent=2))
    else:
        sys.stdout.write(render(target, probes, found, now, relay=relay))
    return exit_code(found, opts.strict)


# -- the relay's admin API (--api) -------------------------------------------------------


def ask_relay(
    url: str, token: str | None, probes: list[Probe], timeout: float, ca: str | None
) -> Relay:
    """The relay's recent handshakes, when a probe connected (else not asked); asked
    again once, RETRY_AFTER seconds later, while a probe that connected is not listed."""
    if not any(reached(p) for p in probes):
        return Relay(url, token=token is not None)
    relay = fetch_handshakes(url, token, timeout, ca)
    want = sum(reached(p) for p in probes)
    if relay.entries is not None and len(match(probes, relay.entries)) < want:
        time.sleep(RETRY_AFTER)
        again = fetch_handshakes(url, token, timeout, ca)
        if again.entries is not None:
            relay = again
    return relay


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is not followed (urllib would send the token along): it is an answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch_handshakes(url: str, token: str | None, timeout: float, ca: str | None) -> Relay:
    """GET URL/handshakes?limit=API_LIMIT -> Relay, with the entries or the error."""
    headers = {"Accept": "application/json", "User-Agent": "snirelay-check"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/handshakes?limit={API_LIMIT}", headers=headers)
    tls = ssl.create_default_context(cafile=ca)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _NoRedirect(), urllib.request.HTTPSHandler(context=tls)
    )
    said = token is not None
    try:
        with opener.open(request, timeout=timeout) as answer:
            body = answer.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        problem = "refused" if exc.code in (401, 403) else "bad-answer"
        return Relay(url, error=_http_error(exc), problem=problem, token=said)
    except urllib.error.URLError as exc:
        return Relay(url, error=_net_error(exc.reason, timeout), problem="unreachable", token=said)
    except http.client.HTTPException as exc:
        why = "it answered, not with HTTP"
        if isinstance(exc, http.client.RemoteDisconnected):
            why = "it closed the connection without an HTTP answer"
        return Relay(url, error=why, problem="bad-answer", token=said)
    except (OSError, ValueError) as exc:  # a timeout or a reset while reading the answer
        return Relay(url, error=_net_error(exc, timeout), problem="unreachable", token=said)
    return _entries(url, body, said)


def _entries(url: str, body: bytes, token: bool) -> Relay:
    """The answer's JSON: a list of objects, else a bad answer."""
    if len(body) > MAX_ANSWER:
        return Relay(url, error=f"more than {MAX_ANSWER} bytes", problem="bad-answer", token=token)
    try:
        doc = json.loads(body)
    except ValueError:
        start = body[:40].decode("latin-1")
        why = f"not JSON (it starts {start!r})"
        return Relay(url, error=why, problem="bad-answer", token=token)
    if not isinstance(doc, list):
        why = f"JSON, but a {type(doc).__name__}, not the list of handshakes"
        return Relay(url, error=why, problem="bad-answer", token=token)
    entries = tuple(e for e in doc if isinstance(e, dict))
    return Relay(url, entries=entries, token=token)


def _http_error(exc: urllib.error.HTTPError) -> str:
    """ "HTTP 401: unauthorized: ..." (the first line of the answer), a redirect's target."""
    if 300 <= exc.code < 400:
        where = exc.headers.get("Location") if exc.headers else None
        return f"HTTP {exc.code}, a redirect to {where or '?'} (not followed)"
    try:
        first = exc.read(200).decode("utf-8", "replace").strip().split("\n", 1)[0]
    except (OSError, http.client.HTTPException):
        first = ""
    return f"HTTP {exc.code}" + (f": {first}" if first else f" {exc.reason}")


def _net_error(reason: object, timeout: float) -> str:
    """The words for why the API did not answer."""
    if isinstance(reason, TimeoutError):
        return f"no answer in {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"its certificate does not verify: {reason.verify_message}"
    if isinstance(reason, ssl.SSLError):
        why = (reason.reason or str(reason)).lower().replace("_", " ")
        hint = " (a plain HTTP API: give http://)" if "wrong version" in why else ""
        return f"the TLS handshake failed: {why}{hint}"
    if isinstance(reason, socket.gaierror):
        return f"the name does not resolve: {reason.strerror or reason}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


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


def _api_json(probes: list[Probe], relay: Relay | None) -> dict[str, Any] | None:
    if relay is None:
        return None
    seen = match(probes, relay.entries) if relay.entries is not None else []
    return {
        "url": relay.url,
        "asked": relay.asked,
        "matched": [
            {
                "probe": s.probe.label,
                "local": s.local,
                "same_address": s.same_address,
                "entry": s.entry,
            }
            for s in seen
        ],  # fmt: skip
        "error": relay.error,
    }


def as_document(
    target: Target,
    probes: list[Probe],
    found: list[Finding],
    now: datetime.datetime,
    relay: Relay | None = None,
) -> dict[str, Any]:
    """The --json document: target, probes, the relay's view (`api`: null without
    --api), findings (each code, severity, message, fix, confirm) and the counts."""
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
                "local": p.local,
                "local_retry": p.local_retry,
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
        "api": _api_json(probes, relay),
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
    relay: Relay | None = None,
) -> str:
    """The text report (`timing=False` leaves out the measured times: golden tests);
    with `relay`, what the relay's API says of each probe."""
    lines = [f"{PROG} {target.host}:{target.port}" + (f" (connect {target.connect})"
             if target.connect else "")]  # fmt: skip
    for p in probes:
        lines.append("")
        lines += _probe_lines(p, target, now, timing)
        for note in relay_notes(p, relay):
            lines += wrap(f"  {note}", "    ")
    if target.name is None:
        lines += ["", "note: no name to probe with: pass --sni NAME to see what clients"
                  " that use the name get"]  # fmt: skip
    if relay is not None:
        lines += ["", *wrap(_relay_line(relay), "  ")]
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


def _relay_line(relay: Relay) -> str:
    if relay.entries is not None:
        return f"relay API {relay.url}: {len(relay.entries)} recent handshake(s) listed"
    if relay.error is not None:
        return f"relay API {relay.url}: {relay.error}"
    return f"relay API {relay.url}: not asked (no probe connected)"


def _probe_lines(p: Probe, target: Target, now: datetime.datetime, timing: bool) -> list[str]:
    """One probe's part of the text report."""
    store = f"CA file {target.ca}" if target.ca else "the system store"
    head = f"SNI {p.sni}" if p.sni else "no SNI"
    lines = [f"probe with {head} -> {p.address or f'{p.host}:{p.port}'}"]
    if p.outcome != "ok" and not p.chain:
        return [*lines, f"  {p.outcome}: {p.error}"]
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
    return lines
