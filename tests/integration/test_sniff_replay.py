"""Every captured first flight, through a routing relay: right route, bytes replayed exactly.

Each complete vector in tests/vectors/clienthello (real ClientHellos from 16 clients,
0-RTT data included, plus the derived variants: SSLv2, IP-literal SNI, 20 KB hello,
plaintext HTTP, SSH, malformed hellos) is sent to a relay whose routes send every kind
of first message to its own capture backend. The backend that should get the connection
must receive the vector's bytes, plus what the client sent after them, byte for byte;
the connection record must name the route and the server name the relay read.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers.peers import TcpServer, connect, recv_all
from helpers.relay import RelayProcess, free_port

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "clienthello"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())["vectors"]
COMPLETE = [v for v in MANIFEST if v["kind"] != "incomplete"]
TRAILER = b"\x17\x03\x03\x00\x05after"  # what a client sends after its first message

ROUTES = {  # route index in the config below -> capture backend tag
    0: "emby",
    1: "wildcard",
    2: "no_sni",
    3: "ip_sni",
    4: "not_tls",
}


class Capture(TcpServer):
    """Keeps every byte of each connection until the client's EOF, then closes."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.got: list[bytes] = []
        self.lock = threading.Lock()
        super().__init__(timeout=15)

    def handle(self, sock: socket.socket) -> None:
        data = recv_all(sock)
        with self.lock:
            self.got.append(data)


def expected_tag(v: dict[str, Any]) -> str:
    """Where the design says this first message goes, decided from the manifest alone."""
    if v["kind"] in ("tls", "sslv2"):
        name = v.get("sni_normalized")
        if name is None:
            return "no_sni"
        if v.get("sni_is_ip_literal"):
            return "ip_sni"
    elif v.get("http_host"):
        name = v["http_host"].rsplit(":", 1)[0].lower().rstrip(".")
    else:
        return "not_tls"  # not TLS, or a malformed hello: the not_tls route
    if name == "emby.example.com":
        return "emby"
    if name.endswith((".example.com", ".example.org")):
        return "wildcard"
    return "not_tls" if v["kind"] not in ("tls", "sslv2") else "default"


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tags = ["emby", "wildcard", "no_sni", "ip_sni", "not_tls", "default"]
    caps = {t: Capture(t) for t in tags}
    port = free_port()
    config = f"""
[log]
format = "json"

[network]
sniff_timeout = 5

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{caps["default"].addr}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "{caps["emby"].addr}"

  [[endpoints.routes]]
  server_names = ["*.example.com", "*.example.org"]
  remote = "{caps["wildcard"].addr}"

  [[endpoints.routes]]
  when = "no_sni"
  remote = "{caps["no_sni"].addr}"

  [[endpoints.routes]]
  when = "ip_sni"
  remote = "{caps["ip_sni"].addr}"

  [[endpoints.routes]]
  when = "not_tls"
  remote = "{caps["not_tls"].addr}"
"""
    relay = RelayProcess(config=config, tmp_path=tmp_path_factory.mktemp("replay"))
    with relay:
        relay.start()
        yield port, caps, relay
    for c in caps.values():
        c.close()


@pytest.mark.integration
@pytest.mark.parametrize("v", COMPLETE, ids=lambda v: v["file"])
def test_vector_routed_and_replayed_byte_exact(routed: Any, v: dict[str, Any]) -> None:
    port, caps, relay = routed
    data = (VECTORS / v["file"]).read_bytes() + TRAILER
    before = {t: len(c.got) for t, c in caps.items()}
    n_records = len(relay.records())
    with connect(port, timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        assert recv_all(s) == b""  # the capture backend answers nothing and closes
    rec = relay.wait_records(n_records + 1, timeout=10)[n_records]
    want = expected_tag(v)
    landed = {t: c.got[before[t] :] for t, c in caps.items() if len(c.got) > before[t]}
    assert list(landed) == [want], (landed.keys(), rec)
    assert landed[want] == [data], rec  # every byte, in order, nothing added
    route = rec["route"]
    if want == "default":
        assert route == "default" and rec.get("hint"), rec
    else:
        index = next(i for i, tag in ROUTES.items() if tag == want)
        assert route == f"endpoints[0].routes[{index}]", rec
    if v["kind"] in ("tls", "sslv2"):
        assert rec["sni"] == v.get("sni_normalized"), rec
        assert rec["alpn"] == v.get("alpn"), rec
        assert rec["ech"] == bool(v.get("ech")), rec
    assert rec["close"] == "eof", rec
    assert rec["bytes_up"] == len(data), rec
