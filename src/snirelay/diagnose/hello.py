"""`snirelay hello FILE [--hex] [-c CONFIG]`: what the relay would see in these bytes.

How it works: the input (a file, or `-` for stdin; raw bytes, or hex with any
whitespace when `--hex` is given) goes through `snirelay.wire.sniff.sniff`, the same
reader the relay runs on every new connection's first bytes, and the result is
printed as JSON: for TLS the SNI exactly as sent and normalised, ALPN, offered
versions, ECH / PSK / early-data flags, records and size; for plaintext HTTP/1 the
Host. With `-c CONFIG` the configuration is loaded the way `snirelay -c` loads it and,
for each endpoint, the route the relay would pick for these bytes is added under
"routes" (with a hint when it falls to the endpoint's default).

Capture the bytes with e.g. `tcpdump -w` / Wireshark "Copy as hex stream", or by
pointing the client at `nc -l 127.0.0.1 PORT > hello.bin`.

Error handling: input that is not a ClientHello or HTTP request, or is incomplete,
exits 1 with one line on stderr; an unreadable file, bad hex or a bad config exit 2
with one line. No tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from snirelay.config.model import Config
from snirelay.wire.errors import NeedData, ProtocolError
from snirelay.wire.sniff import Sniffed, sniff

PROG = "snirelay hello"
DEFAULT_MAX = 65536


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit itself
        raise _Usage(message)


def _parser() -> _Parser:
    p = _Parser(
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
    except _Usage as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    try:
        data = _read(args.file, args.hex)
    except _Usage as e:
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

    try:
        res = sniff(data, max_size)
    except ProtocolError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if isinstance(res, NeedData):
        print(
            f"{PROG}: incomplete: {len(data)} bytes read, at least {res.at_least} needed",
            file=sys.stderr,
        )
        return 1

    out = describe(res)
    if config is not None:
        try:
            out["routes"] = _routes(config, res)
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
        raise _Usage(f"cannot read {path}: {e.strerror or e}") from None
    if not is_hex:
        return raw
    text = "".join(raw.decode("ascii", "replace").split())
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise _Usage(f"{path} is not hex: {e}") from None


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


def _routes(config: Config, res: Sniffed) -> list[dict[str, Any]]:
    from snirelay.routing import RouteTable

    tls = res.kind != "http"
    out: list[dict[str, Any]] = []
    for ep in config.endpoints:
        table = RouteTable(ep.routes)
        route = table.pick(res.name, tls=tls, name_is_ip=res.name_is_ip)
        upstream = ep.upstream if route is None else route.upstream
        item: dict[str, Any] = {
            "endpoint": ep.place,
            "listen": str(ep.listen),
            "route": "default" if route is None else route.place,
            "remotes": [str(a) for a in upstream.remotes],
        }
        if route is None and ep.routes:
            item["hint"] = table.explain_miss(res.name, tls, res.name_is_ip)
        out.append(item)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
