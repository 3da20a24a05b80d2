"""Log injection through a real relay: ALPN protocol names with control bytes.

A ClientHello (the curl capture, SNI emby.example.com) has its ALPN extension replaced
by protocol names carrying every byte 0x00-0x1f and 0x7f, non-ASCII bytes, a quote and
a backslash, and, in one connection, a CR LF followed by a forged record. Each is sent
through a routing relay (`helpers.relay.RelayProcess`) to an echo backend. The log must
hold exactly one record line per connection, the ALPN escaped, and read back to what
the relay decoded (the ClientHello parser keeps bytes below 0x80 and writes bytes above
as ``\\xNN``). Without the escaping, the CR LF and the other line breaks split the text
record and the forged line reads as a second record.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import struct
import time
from pathlib import Path
from types import ModuleType

import pytest

from helpers.logtext import as_list, parse_record
from helpers.peers import EchoServer
from helpers.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VECTOR = VECTORS / "clienthello" / "curl_sni_http2.bin"


def _load_make_variants() -> ModuleType:
    """tests/vectors/make_variants.py (not a package): its ClientHello editing helpers."""
    spec = importlib.util.spec_from_file_location("make_variants", VECTORS / "make_variants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_variants = _load_make_variants()
FORGED = b"h2\r\n2026-12-01T00:00:00 INFO conn id=999 listener=endpoints[0] close=forged"
CONNECTIONS = [
    [FORGED, b"http/1.1"],
    [b"p" + bytes([c]) + b"q" for c in (*range(0x20), 0x7F)],
    [b"\x80\xff", b'a"b', b"a\\b", b"a,b", b"a b", b"-"],
]


def hello_with_alpn(protocols: list[bytes]) -> bytes:
    hello = make_variants.Hello.parse(VECTOR.read_bytes())
    names = b"".join(bytes([len(p)]) + p for p in protocols)
    hello.replace_ext(make_variants.EXT_ALPN, struct.pack("!H", len(names)) + names)
    out: bytes = make_variants.records(hello.handshake(), [16384])
    return out


def send(port: int, data: bytes) -> None:
    """Send `data`, read the echo of all of it back (so the relay routed and replayed
    it), then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(data) and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == data


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_alpn_gives_one_escaped_record_per_connection(tmp_path: Path, fmt: str) -> None:
    with EchoServer() as backend:
        port = free_port()
        config = f"""
[log]
format = "{fmt}"
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "127.0.0.1:9"
  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "{backend.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            for protocols in CONNECTIONS:
                send(port, hello_with_alpn(protocols))
            relay.wait_log('"event":"conn"' if fmt == "json" else " conn ", count=len(CONNECTIONS))
            relay.stop()
            text = relay.log
    # no line of the log may be split by what the client sent
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), [ln for ln in lines if not ln.isprintable()]
    if fmt == "json":
        records = [json.loads(ln) for ln in lines if '"event":"conn"' in ln]
        alpns = [r["alpn"] for r in records]
    else:
        record_lines = [ln for ln in lines if " conn " in ln]
        records = [parse_record(ln) for ln in record_lines]
        alpns = [as_list(r["alpn"]) for r in records]
        assert all(ln.split(" ", 2)[1:2] == ["INFO"] for ln in record_lines), record_lines
    assert len(records) == len(CONNECTIONS), text
    assert [r["route"] for r in records] == ["endpoints[0].routes[0]"] * len(CONNECTIONS)
    expected = [[p.decode("ascii", "backslashreplace") for p in c] for c in CONNECTIONS]
    # a record is written at its connection's close, and the closes of connections made
    # one after the other can still come out of order on a busy machine
    assert sorted(alpns) == sorted(expected)
    assert "close=forged" not in text.replace('close=forged"', "")  # only inside the quotes
