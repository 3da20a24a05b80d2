"""The relay and `snirelay hello -c` agree: same input bytes, same route or close reason.

Issue 7 ("one routing decision"): both must call `routing.decide`, so the doctor can
never disagree with the relay. This test holds them to it from the outside.

One relay with two endpoints, each route with its own backend:

- endpoints[0]: exact, wildcard, regex, no_sni, ip_sni and not_tls routes, and a
  default remote;
- endpoints[1]: an exact and a regex route, no not_tls route, no default remote, and a
  small `sniff_max_bytes` (4096, so the 20 KB hello is too large there only).

Inputs: every file in tests/vectors/clienthello (the manifest's list: complete hellos,
malformed ones, truncated ones, plaintext, SSH, nothing), plus an SSH banner, HTTP/1.1
requests with a matching and an unknown Host, 64 seeded random bytes, a proper prefix
of a hello, nothing, and hellos rewritten to a wildcard, a regex and an unknown name.

For each input and endpoint, `snirelay hello -c` (its `main`, in this process) says
what the relay does; then a client connects to the relay, sends the bytes and waits.
Each backend greets with its tag, so the client learns where it was routed; it then
half-closes and reads to EOF. A client the relay closes instead reads EOF (or a reset)
and no greeting. The relay's record for that client (found by listener and address) must have
hello's `route`, and hello's `close`; hello's close null ("connects") means the record
ends "eof" at the backend of that route, which received the bytes exactly. All clients
run in parallel against the one relay, with `network.sniff_timeout = 0.5` so the
timeout cases end fast; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.peers import TcpServer, recv_all
from helpers.relay import RelayProcess, free_port
from snirelay.diagnose import hello

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "clienthello"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())["vectors"]
CURL = (VECTORS / "curl_sni_http2.bin").read_bytes()  # SNI emby.example.com

INPUTS: dict[str, bytes] = {v["file"]: (VECTORS / v["file"]).read_bytes() for v in MANIFEST}
INPUTS |= {
    "ssh-banner": b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
    "http-known-host": b"GET / HTTP/1.1\r\nHost: emby.example.com\r\nAccept: */*\r\n\r\n",
    "http-regex-host": b"GET /x HTTP/1.1\r\nHost: MEDIA7.example.net:8096\r\n\r\n",
    "http-unknown-host": b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    "random-64": random.Random(7).randbytes(64),
    "truncated-hello": CURL[:200],
    "nothing": b"",
    # same length as emby.example.com, so the hello stays well-formed
    "sni-wildcard": CURL.replace(b"emby.example.com", b"jfin.example.org"),
    "sni-regex": CURL.replace(b"emby.example.com", b"med1.example.net"),
    "sni-unknown": CURL.replace(b"emby.example.com", b"zzzz.example.com"),
}
ENDPOINTS = ("endpoints[0]", "endpoints[1]")
TAGS = ("default", "exact", "wildcard", "regex", "no_sni", "ip_sni", "not_tls", "exact1", "regex1")
ROUTE_TAG = {  # the record's / hello's `route` -> the backend it connects to
    ("endpoints[0]", "default"): "default",
    ("endpoints[0]", "endpoints[0].routes[0]"): "exact",
    ("endpoints[0]", "endpoints[0].routes[1]"): "wildcard",
    ("endpoints[0]", "endpoints[0].routes[2]"): "regex",
    ("endpoints[0]", "endpoints[0].routes[3]"): "no_sni",
    ("endpoints[0]", "endpoints[0].routes[4]"): "ip_sni",
    ("endpoints[0]", "endpoints[0].routes[5]"): "not_tls",
    ("endpoints[1]", "endpoints[1].routes[0]"): "exact1",
    ("endpoints[1]", "endpoints[1].routes[1]"): "regex1",
}
DEADLINE = 15.0  # for any one client's exchange, and for its record to appear


class Tagged(TcpServer):
    """Greets with ``b"<tag>\\n"``, then keeps what the relay sends until EOF."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.got: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(timeout=DEADLINE)

    def handle(self, sock: socket.socket) -> None:
        sock.sendall(self.tag.encode() + b"\n")
        data = recv_all(sock)
        with self.lock:
            self.got.append(data)


def config_text(ports: tuple[int, int], b: dict[str, Tagged]) -> str:
    return f"""
[log]
format = "json"

[network]
sniff_timeout = 0.5

[[endpoints]]
listen = "127.0.0.1:{ports[0]}"
remote = "{b["default"].addr}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "{b["exact"].addr}"

  [[endpoints.routes]]
  server_names = ["*.example.org"]
  remote = "{b["wildcard"].addr}"

  [[endpoints.routes]]
  server_names = ["~^med(ia)?[0-9]+\\\\.example\\\\.net$"]
  remote = "{b["regex"].addr}"

  [[endpoints.routes]]
  when = "no_sni"
  remote = "{b["no_sni"].addr}"

  [[endpoints.routes]]
  when = "ip_sni"
  remote = "{b["ip_sni"].addr}"

  [[endpoints.routes]]
  when = "not_tls"
  remote = "{b["not_tls"].addr}"

[[endpoints]]
listen = "127.0.0.1:{ports[1]}"
network = {{ sniff_max_bytes = 4096 }}

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "{b["exact1"].addr}"

  [[endpoints.routes]]
  server_names = ["~^med(ia)?[0-9]+\\\\.example\\\\.net$"]
  remote = "{b["regex1"].addr}"
"""


def run_hello(path: Path, data: bytes, config: Path) -> dict[str, Any]:
    """`snirelay hello -c CONFIG FILE` on `data`: its JSON (exit code must be 0)."""
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = hello.main([str(path), "-c", str(config)])
    assert code == 0, (path.name, code, err.getvalue())
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


@dataclass
class Seen:
    """What one client saw: its address (the record's `client`) and the greeting, if any."""

    client: str
    tag: str | None


def exchange(port: int, data: bytes) -> Seen:
    """Connect, send `data`, wait: for a backend's greeting (then half-close and read to
    EOF) or for the relay to close the connection. Every step has the deadline."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        host, cport = s.getsockname()[:2]
        if data:
            s.sendall(data)
        got = b""
        try:
            while b"\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:  # closed with our bytes unread: the kernel resets
            got = b""
        tag = None
        if b"\n" in got:
            tag = got.split(b"\n", 1)[0].decode()
            s.shutdown(socket.SHUT_WR)
            recv_all(s)
        return Seen(f"{host}:{cport}", tag)


@dataclass
class Case:
    hello: dict[str, Any]  # hello's entry for this endpoint
    seen: Seen
    record: dict[str, Any]
    data: bytes


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("decide-agrees")
    backends = {tag: Tagged(tag) for tag in TAGS}
    try:
        ports = (free_port(), free_port())
        relay = RelayProcess(config=config_text(ports, backends), tmp_path=tmp)
        assert relay.config_path is not None
        answers = {
            name: run_hello(tmp / f"in-{i}.bin", data, relay.config_path)
            for i, (name, data) in enumerate(INPUTS.items())
        }
        jobs = [(name, ep) for name in INPUTS for ep in range(len(ENDPOINTS))]
        with relay:
            relay.start(wait_listen=2)
            with ThreadPoolExecutor(max_workers=32) as pool:
                seen = list(pool.map(lambda j: exchange(ports[j[1]], INPUTS[j[0]]), jobs))
            records = relay.wait_records(len(jobs), timeout=DEADLINE)
        # one source port may serve two connections at once, one to each listener
        by_client = {(r["listener"], r["client"]): r for r in records}
        out: dict[tuple[str, str], Case] = {}
        for (name, ep), s in zip(jobs, seen, strict=True):
            entry = answers[name]["routes"][ep]
            assert entry["endpoint"] == ENDPOINTS[ep]
            out[(name, ENDPOINTS[ep])] = Case(
                entry, s, by_client[ENDPOINTS[ep], s.client], INPUTS[name]
            )
        yield out, backends
    finally:
        for b in backends.values():
            b.close()


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("name", list(INPUTS))
def test_relay_and_hello_agree(cases: Any, name: str, endpoint: str) -> None:
    table, backends = cases
    c = table[(name, endpoint)]
    want_route, want_close = c.hello["route"], c.hello["close"]
    rec = c.record
    assert rec["listener"] == endpoint, rec
    assert (rec["route"], rec["close"] if want_close else None) == (want_route, want_close), (
        f"hello: {c.hello}\nrelay: {rec}"
    )
    if want_close is None:  # connects: the record ends when the client is done
        tag = ROUTE_TAG[(endpoint, want_route)]
        assert c.seen.tag == tag, (c.hello, rec)
        assert rec["close"] == "eof", rec
        with backends[tag].lock:
            assert c.data in backends[tag].got, "the backend did not get the bytes exactly"
    else:
        assert c.seen.tag is None, (c.hello, rec)
        assert rec["backend"] is None and c.hello["remotes"] == [], rec


def test_inputs_cover_every_kind_of_decision(cases: Any) -> None:
    """The table exercises every route and every close reason `decide` can give."""
    table, _ = cases
    routes = {(ep, c.hello["route"]) for (_, ep), c in table.items() if c.hello["close"] is None}
    closes = {c.hello["close"] for c in table.values()} - {None}
    assert routes == set(ROUTE_TAG), set(ROUTE_TAG) - routes
    assert closes == {"no-route", "malformed", "too-large", "sniff-timeout"}
