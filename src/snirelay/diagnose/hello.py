"""`snirelay hello FILE [--hex] [-c CONFIG]`: what the relay would see in these bytes.

How it works: the input (a file, or `-` for stdin; raw bytes, or hex with any
whitespace when `--hex` is given) goes through `snirelay.wire.sniff.sniff`, the same
reader the relay runs on every new connection's first bytes, and the result is
printed as JSON: for TLS the SNI exactly as sent and normalised, ALPN, offered
versions, ECH / PSK / early-data flags, records and size; for plaintext HTTP/1 the
Host.

With `-c CONFIG` the configuration is loaded the way `snirelay -c` loads it and, for
each endpoint, "routes" says what the relay does with a client that sends exactly these
bytes and then waits: `snirelay.routing.classify` turns the bytes into what the relay's
sniff phase sees (with that endpoint's `sniff_max_bytes`: a complete message, a parse
error, or a sniff timeout for an incomplete or empty input), and
`snirelay.routing.decide`, the relay's routing decision, picks the route or the reason
to close. Each entry has "endpoint", "listen", "route" (a route's place or
"default"), "remotes" (where the connection goes; empty when it is closed), "close"
(the record's close reason, or null when the relay connects) and "hint" (or null). An
endpoint without routes is not sniffed by the relay: it always goes to its default.
Input that is not a ClientHello or HTTP request is still printed with `-c`, as
``{"kind": "not-tls" | "malformed" | "too-large", "error": MESSAGE, "bytes": N,
"routes": [...]}``, or ``{"kind": "incomplete", "bytes": N, "at_least": M,
"routes": [...]}`` for a proper prefix (or nothing).

Capture the bytes with e.g. `tcpdump -w` / Wireshark "Copy as hex stream", or by
pointing the client at `nc -l 127.0.0.1 PORT > hello.bin`.

Exit codes: 0 the JSON was printed (with `-c` also for input that is not TLS/HTTP or
is incomplete: the routes say what the relay does with it); 1 without `-c`, input that
is not a ClientHello or HTTP request, or is incomplete (one line on stderr); 2 an
unreadable file, bad hex, a usage error or a bad config (one line on stderr). No
tracebacks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from snirelay.config.model import Config
from snirelay.diagnose.usage import Parser, Usage
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.sniff import Sniffed, sniff

PROG = "snirelay hello"
DEFAULT_MAX = 65536


def _parser() -> Parser:
    p = Parser(
        prog=PROG,
        description="Show the server name, ALPN and versions in a captured ClientHello "
        "(or the Host of a plaintext HTTP request), and the route a config would pick.",
    )
    p.add_argument("file", metavar="FILE", help="captured first bytes of a connection; - = stdin")
    p.add_argument("--hex", action="store_true", help="FILE is hex text (whitespace ignored)")
    p.add_argument("-c", "--config", metavar="CONFIG", help="also show the route per endpoint")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        data = _read(args.file, args.hex)
    except Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2

    config = None
    max_size = DEFAULT_MAX
    if args.config is not None:
        from snirelay.config.load import load_config
        from snirelay.config.model import ConfigError

        try:
            config = load_config(args.config)
        except ConfigError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
        if config.endpoints:
            max_size = max(ep.upstream.network.sniff_max_bytes for ep in config.endpoints)

    res: Sniffed | NeedData | ProtocolError
    try:
        res = sniff(data, max_size)
    except ProtocolError as e:
        res = e
    if config is None and isinstance(res, ProtocolError):
        print(f"{PROG}: {res}", file=sys.stderr)
        return 1
    if config is None and isinstance(res, NeedData):
        print(
            f"{PROG}: incomplete: {len(data)} bytes read, at least {res.at_least} needed",
            file=sys.stderr,
        )
        return 1

    out = describe(res) if isinstance(res, Sniffed) else _describe_other(data, res)
    if config is not None:
        try:
            out["routes"] = _routes(config, data)
        except ValueError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2))
    return 0


def _read(path: str, is_hex: bool) -> bytes:
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as e:
        raise Usage(f"cannot read {path}: {e.strerror or e}") from None
    if not is_hex:
        return raw
    text = "".join(raw.decode("ascii", "replace").split())
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise Usage(f"{path} is not hex: {e}") from None


def describe(res: Sniffed) -> dict[str, Any]:
    """The JSON object printed for a sniffed connection start."""
    if res.hello is not None:
        h = res.hello
        return {
            "kind": h.kind,
            "sni": h.sni,
            "sni_normalized": h.sni_normalized,
            "sni_is_ip": h.sni_is_ip,
            "alpn": None if h.alpn is None else list(h.alpn),
            "versions": list(h.versions),
            "ech": h.ech,
            "psk": h.psk,
            "early_data": h.early_data,
            "records": h.records,
            "size": h.size,
        }
    assert res.http is not None
    r = res.http
    return {
        "kind": "http",
        "host": r.host,
        "host_is_ip": r.host_is_ip,
        "method": r.method,
        "target": r.target,
        "size": r.size,
    }


def _describe_other(data: bytes, res: NeedData | ProtocolError) -> dict[str, Any]:
    """The JSON object printed (with -c) for bytes that are not a complete message."""
    if isinstance(res, ProtocolError):
        return {"kind": res.kind, "error": res.message, "bytes": len(data)}
    return {"kind": "incomplete", "bytes": len(data), "at_least": res.at_least}


def _routes(config: Config, data: bytes) -> list[dict[str, Any]]:
    """Per endpoint: what the relay does with a client that sends `data` and waits.

    Raises ValueError (one line, naming the place) for a route table that cannot be
    built (a guard: loading the config already checks what the table needs).
    """
    from snirelay.routing import Decision, RouteTable, classify, decide

    out: list[dict[str, Any]] = []
    for ep in config.endpoints:
        if ep.routes:
            table = RouteTable(ep.routes)
            seen = classify(data, ep.upstream.network.sniff_max_bytes)
            d = decide(table, seen, has_default=bool(ep.upstream.remotes))
        else:  # the relay does not sniff it: straight to its remote (which it must have)
            d = Decision(None, None, None, "unsniffed")
        upstream = ep.upstream if d.route is None else d.route.upstream
        out.append(
            {
                "endpoint": ep.place,
                "listen": str(ep.listen),
                "route": d.place,
                "remotes": [] if d.close else [str(a) for a in upstream.remotes],
                "close": d.close,
                "hint": d.hint,
            }
        )
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
