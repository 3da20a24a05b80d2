"""The PROXY protocol at the relay's edges, with the relay's own parser as the peer
where no real one shows the detail (HAProxy and nginx peers: test_haproxy_peer.py).

- accept_proxy: a header in two writes, then the stream: the backend gets the
  stream only, the record names the client the header named; no header (plain bytes)
  is closed with the reason; nothing within accept_proxy_timeout is closed at it;
- send_proxy v2 from a terminating relay: the SSL TLV carries the client's TLS version,
  the authority TLV its SNI; v1 carries the addresses alone.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.peers import EchoServer, connect, recv_all
from helpers.relay import RelayProcess, free_port, relay_chain
from integration.test_tls import relay_cert
from snirelay.wire.errors import NeedData
from snirelay.wire.proxy import (
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    ProxyHeader,
    encode_v1,
    parse_proxy_header,
)

pytestmark = pytest.mark.integration


def accepting(remote: str, timeout: float = 5) -> str:
    port = free_port()
    return (
        f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{remote}"\n'
        f"network = {{ accept_proxy = true, accept_proxy_timeout = {timeout} }}\n"
    )


def test_a_header_across_segments_then_the_stream(tmp_path: Path) -> None:
    with EchoServer() as srv, RelayProcess(config=accepting(srv.addr), tmp_path=tmp_path) as relay:
        relay.start()
        header = encode_v1(("203.0.113.7", 41000), ("198.51.100.1", 443))
        with connect(relay.port()) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(header[:9])  # (every cut is tested on the parser: tests/unit/wire)
            s.sendall(header[9:] + b"hello")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"hello"  # the header is the relay's, not the backend's
        [rec] = relay.wait_records(1)
        assert rec["client"] == "203.0.113.7:41000" and rec["bytes_up"] == 5, rec


def test_no_header_or_a_late_one_is_closed_with_its_reason(tmp_path: Path) -> None:
    config = accepting("127.0.0.1:9", timeout=1)
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with connect(relay.port()) as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            recv_all(s)
        with connect(relay.port()) as s:
            t0 = time.monotonic()
            recv_all(s)  # sends nothing: closed at the deadline
            assert 0.5 < time.monotonic() - t0 < 5
        bad, late = relay.wait_records(2)
        assert bad["close"] == "proxy-header" and "not a valid PROXY header" in bad["hint"], bad
        assert late["close"] == "proxy-timeout" and late["phase"] == "proxy", late


class HeaderBackend:
    """Accepts one connection, reads a PROXY header with the relay's own parser, then
    answers one HTTP request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.header: ProxyHeader | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while True:
                got = parse_proxy_header(data)
                if not isinstance(got, NeedData):
                    break
                data += conn.recv(4096)
            self.header = got
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        self.sock.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_terminating_relay_sends_the_tls_version_and_the_sni(
    tmp_path: Path, version: int
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    backend = HeaderBackend()
    port = free_port()
    config = (
        f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "127.0.0.1:{backend.port}"\n'
        f'listen_transport = "tls;cert={cert};key={key}"\n'
        f"network = {{ send_proxy = true, send_proxy_version = {version} }}\n"
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        ctx = ssl.create_default_context(cafile=str(ca))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="relay.example.com") as tls,
        ):
            me = tls.getsockname()
            tls.sendall(b"GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n")
            assert recv_all(tls).endswith(b"ok")
            used = tls.version() or "?"
        backend.thread.join(10)
        h: Any = backend.header
        assert h is not None and h.src == (me[0], me[1]) and h.dst == ("127.0.0.1", port)
        if version == 1:
            assert h.tlvs == ()
            return
        assert h.tlv(PP2_TYPE_AUTHORITY) == b"relay.example.com"
        ssl_tlv = h.tlv(PP2_TYPE_SSL)
        assert ssl_tlv is not None and ssl_tlv[0] & 0x01  # the client used TLS
        assert ssl_tlv.endswith(b"\x21\x00\x07" + used.encode()), ssl_tlv  # and its version
        [rec] = relay.wait_records(1)
        assert rec["bytes_up"] == len(b"GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n")


def test_a_ws_tunnel_carries_the_client_address(tmp_path: Path) -> None:
    """A (send_proxy, ws out) -> B (accept_proxy, ws in) -> echo: B reads the header and
    the upgrade request that follows it in the same segment, and names the real client."""
    ws = "ws;host=tunnel.test;path=/t"
    with EchoServer() as srv:
        b_port, a_port = free_port(), free_port()
        b_cfg = (f'[[endpoints]]\nlisten = "127.0.0.1:{b_port}"\nremote = "{srv.addr}"\n'
                 f'listen_transport = "{ws}"\nnetwork = {{ accept_proxy = true }}\n')  # fmt: skip
        a_cfg = (f'[[endpoints]]\nlisten = "127.0.0.1:{a_port}"\nremote = "127.0.0.1:{b_port}"\n'
                 f'remote_transport = "{ws}"\nnetwork = {{ send_proxy = true }}\n')  # fmt: skip
        with relay_chain(tmp_path, a_cfg, b_cfg) as (a, b):
            with connect(a_port) as s:
                me = f"127.0.0.1:{s.getsockname()[1]}"
                s.sendall(b"through the tunnel")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"through the tunnel"
            [rec_b] = b.wait_records(1)
            assert rec_b["client"] == me and rec_b["close"] == "eof", rec_b
            [rec_a] = a.wait_records(1)
            assert rec_a["bytes_up"] == len(b"through the tunnel"), rec_a  # not the header
