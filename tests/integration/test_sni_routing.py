"""SNI passthrough routing against real peers: nginx backends, curl and openssl clients.

The relay runs as a subprocess (`helpers.relay.RelayProcess`) in front of the session's
nginx (`tls_backends`), with two endpoints:

- endpoints[0], TLS routing: emby.example.com and jellyfin.example.com to their own
  nginx https ports, `*.example.com` and `when = "no_sni"` to the default https server,
  and the endpoint's own `remote` (unmatched names) to the default server too; the JSON
  record's `route` tells these apart.
- endpoints[1], no `remote`: plaintext HTTP routed by `Host` to nginx http servers;
  anything unmatched (or silent) is closed.

Every client and every wait is bounded (curl --max-time, subprocess timeouts, socket
timeouts). The hand-made TLS clients (`tls_request`) drive Python's ssl through a
MemoryBIO so the test decides exactly how the ClientHello bytes hit the wire; they are
first checked straight against nginx so a failure through the relay is the relay's.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until
from integration.servers import BACKEND_NAMES, DEFAULT_NAME, TlsBackends

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT = 10
Sender = Callable[[socket.socket, bytes], None]


# -- clients -------------------------------------------------------------------------------


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(CLIENT_TIMEOUT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT + 5,
        check=False,
    )


def curl_https(name: str, port: int, ca: Path) -> subprocess.CompletedProcess[str]:
    return curl(
        "--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(ca), f"https://{name}:{port}/"
    )


def s_client(port: int, *args: str) -> str:
    """`openssl s_client` with stdin closed; its stdout (the certificate summary)."""
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    return proc.stdout


def subject_cn(s_client_out: str) -> str | None:
    for line in s_client_out.splitlines():
        if line.startswith("subject=") and "CN = " in line:
            return line.rsplit("CN = ", 1)[1].strip()
    return None


def send_whole(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def send_dribbled(sock: socket.socket, data: bytes) -> None:
    """One byte per send, Nagle off and a short pause, so each byte is its own segment."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        sock.sendall(data[i : i + 1])
        time.sleep(0.001)


def one_byte_records(data: bytes) -> bytes:
    """Re-frame TLS records so that every record carries a 1-byte body.

    The handshake transcript is over handshake messages, not records, so the server
    still completes the handshake.
    """
    out = bytearray()
    at = 0
    while at < len(data):
        header = data[at : at + 5]
        assert len(header) == 5, "truncated record header"
        length = int.from_bytes(header[3:5], "big")
        body = data[at + 5 : at + 5 + length]
        assert len(body) == length, "truncated record body"
        for byte in body:
            out += header[:3] + b"\x00\x01" + bytes([byte])
        at += 5 + length
    return bytes(out)


def send_one_byte_records(sock: socket.socket, data: bytes) -> None:
    sock.sendall(one_byte_records(data))


def tls_request(
    port: int, name: str, ca: Path, send_hello: Sender = send_whole, alpn: list[str] | None = None
) -> str:
    """HTTPS GET / to 127.0.0.1:port with SNI `name`; the hello is written by `send_hello`.

    Returns the response body. Raises on a failed handshake or verification.
    """
    ctx = ssl.create_default_context(cafile=str(ca))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    deadline = time.monotonic() + CLIENT_TIMEOUT
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:

        def pull() -> bool:
            data = sock.recv(65536)
            if not data:
                incoming.write_eof()
                return False
            incoming.write(data)
            return True

        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        assert hello[:1] == b"\x16", "expected a TLS handshake record"
        send_hello(sock, hello)
        while True:
            assert time.monotonic() < deadline, "handshake did not finish in time"
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                if not pull():
                    raise ConnectionError("peer closed during the handshake") from None
        sock.sendall(outgoing.read())
        tls.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        sock.sendall(outgoing.read())
        response = bytearray()
        while time.monotonic() < deadline:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    break
                response += chunk
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())  # post-handshake messages, key updates
                if not pull():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


# -- the relay in front of nginx -----------------------------------------------------------


@dataclass
class SniRelay:
    relay: RelayProcess
    tls_port: int  # endpoints[0]: TLS routing
    http_port: int  # endpoints[1]: Host routing, no default remote
    backends: TlsBackends

    def record(self, **match: Any) -> dict[str, Any]:
        """The first record whose fields equal `match`, waiting for it (bounded)."""

        def found() -> dict[str, Any] | None:
            for rec in self.relay.records():
                if all(rec.get(k) == v for k, v in match.items()):
                    return rec
            return None

        return wait_until(
            found, CLIENT_TIMEOUT, lambda: f"a record with {match}\n--- log ---\n{self.relay.log}"
        )


def relay_config(tls_port: int, http_port: int, b: TlsBackends) -> str:
    emby, jellyfin = (b.https[n] for n in BACKEND_NAMES)
    http_emby, http_jellyfin = (b.http[n] for n in BACKEND_NAMES)
    return f"""
[log]
level = "info"
format = "json"

[network]
sniff_timeout = 1

[[endpoints]]
listen = "127.0.0.1:{tls_port}"
remote = "127.0.0.1:{b.default_port}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:{emby}"

  [[endpoints.routes]]
  server_names = ["jellyfin.example.com"]
  remote = "127.0.0.1:{jellyfin}"

  [[endpoints.routes]]
  server_names = ["*.example.com"]
  remote = "127.0.0.1:{b.default_port}"

  [[endpoints.routes]]
  when = "no_sni"
  remote = "127.0.0.1:{b.default_port}"

[[endpoints]]
listen = "127.0.0.1:{http_port}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:{http_emby}"

  [[endpoints.routes]]
  server_names = ["jellyfin.example.com"]
  remote = "127.0.0.1:{http_jellyfin}"
"""


ROUTE_OF = {name: f"endpoints[0].routes[{i}]" for i, name in enumerate(BACKEND_NAMES)}
WILDCARD_ROUTE = "endpoints[0].routes[2]"
NO_SNI_ROUTE = "endpoints[0].routes[3]"


@pytest.fixture
def sni_relay(tls_backends: TlsBackends, tmp_path: Path) -> Iterator[SniRelay]:
    tls_port, http_port = free_port(), free_port()
    while http_port == tls_port:
        http_port = free_port()
    config = relay_config(tls_port, http_port, tls_backends)
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=2)
        yield SniRelay(relay, tls_port, http_port, tls_backends)


# -- the harness itself, straight to nginx -------------------------------------------------


@pytest.mark.parametrize("sender", [send_whole, send_dribbled, send_one_byte_records])
def test_hand_made_clients_work_without_relay(tls_backends: TlsBackends, sender: Sender) -> None:
    name = BACKEND_NAMES[0]
    body = tls_request(tls_backends.https[name], name, tls_backends.ca, sender)
    assert body == f"name={name} sni={name}\n"


def test_one_byte_records_reframes_every_byte() -> None:
    record = b"\x16\x03\x01\x00\x03abc" + b"\x16\x03\x01\x00\x01d"
    expected = b"".join(b"\x16\x03\x01\x00\x01" + bytes([c]) for c in b"abcd")
    assert one_byte_records(record) == expected


# -- through the relay ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_curl_reaches_the_backend_named_by_sni(sni_relay: SniRelay, name: str) -> None:
    res = curl_https(name, sni_relay.tls_port, sni_relay.backends.ca)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"name={name} sni={name}\n"
    rec = sni_relay.record(sni=name)
    assert rec["listener"] == "endpoints[0]"
    assert rec["route"] == ROUTE_OF[name]
    assert rec["backend"] == f"127.0.0.1:{sni_relay.backends.https[name]}"
    assert rec["ech"] is False
    assert "http/1.1" in (rec["alpn"] or [])  # curl offers h2 and http/1.1
    assert rec["bytes_up"] > 0 and rec["bytes_down"] > 0


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_s_client_sees_the_backend_certificate(sni_relay: SniRelay, name: str) -> None:
    out = s_client(sni_relay.tls_port, "-servername", name, "-CAfile", str(sni_relay.backends.ca))
    assert subject_cn(out) == name, out
    assert "Verify return code: 0 (ok)" in out
    assert sni_relay.record(sni=name)["route"] == ROUTE_OF[name]


def test_wildcard_route(sni_relay: SniRelay) -> None:
    name = "other.example.com"
    out = s_client(sni_relay.tls_port, "-servername", name)
    assert subject_cn(out) == DEFAULT_NAME, out
    res = curl(
        "-k",
        "--resolve",
        f"{name}:{sni_relay.tls_port}:127.0.0.1",
        f"https://{name}:{sni_relay.tls_port}/",
    )
    assert res.stdout == f"default sni={name}\n", res.stderr
    assert sni_relay.record(sni=name)["route"] == WILDCARD_ROUTE


def test_client_without_sni_lands_on_no_sni_route(sni_relay: SniRelay) -> None:
    out = s_client(sni_relay.tls_port, "-noservername")
    assert subject_cn(out) == DEFAULT_NAME, out
    res = curl("-k", f"https://127.0.0.1:{sni_relay.tls_port}/")  # an IP literal: no SNI
    assert res.returncode == 0, res.stderr
    assert res.stdout == "default sni=\n"
    recs = [r for r in sni_relay.relay.wait_records(2) if r["listener"] == "endpoints[0]"]
    assert len(recs) == 2, recs
    for rec in recs:
        assert rec["sni"] is None
        assert rec["route"] == NO_SNI_ROUTE


def test_unmatched_name_takes_endpoint_remote_with_hint(sni_relay: SniRelay) -> None:
    name = "unknown.test"
    res = curl(
        "-k",
        "--resolve",
        f"{name}:{sni_relay.tls_port}:127.0.0.1",
        f"https://{name}:{sni_relay.tls_port}/",
    )
    assert res.stdout == f"default sni={name}\n", res.stderr
    rec = sni_relay.record(sni=name)
    assert rec["route"] == "default"
    assert rec["hint"], rec


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_plain_http_routed_by_host(sni_relay: SniRelay, name: str) -> None:
    port = sni_relay.http_port
    res = curl("--resolve", f"{name}:{port}:127.0.0.1", f"http://{name}:{port}/")
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"http name={name} host={name}\n"
    rec = sni_relay.record(listener="endpoints[1]")
    assert rec["route"] == f"endpoints[1].routes[{BACKEND_NAMES.index(name)}]"
    assert rec["backend"] == f"127.0.0.1:{sni_relay.backends.http[name]}"


def test_unmatched_host_without_default_is_closed_with_hint(sni_relay: SniRelay) -> None:
    port = sni_relay.http_port
    res = curl("--resolve", f"nobody.test:{port}:127.0.0.1", f"http://nobody.test:{port}/")
    assert res.returncode != 0 and res.stdout == "", res
    rec = sni_relay.record(listener="endpoints[1]")
    assert rec["close"] == "no-route"
    assert rec["backend"] is None
    assert rec["hint"], rec
    assert sni_relay.relay.running


@pytest.mark.parametrize(
    ("sender", "name"),
    [(send_dribbled, BACKEND_NAMES[1]), (send_one_byte_records, BACKEND_NAMES[0])],
    ids=["one-byte-per-write", "one-byte-records"],
)
def test_split_hello_is_routed_and_handshake_completes(
    sni_relay: SniRelay, sender: Sender, name: str
) -> None:
    body = tls_request(sni_relay.tls_port, name, sni_relay.backends.ca, sender, alpn=["http/1.1"])
    assert body == f"name={name} sni={name}\n"
    rec = sni_relay.record(sni=name)
    assert rec["route"] == ROUTE_OF[name]
    assert rec["alpn"] == ["http/1.1"]


def test_silent_client_closed_at_deadline_while_others_served(sni_relay: SniRelay) -> None:
    name = BACKEND_NAMES[0]
    with socket.create_connection(
        ("127.0.0.1", sni_relay.http_port), timeout=CLIENT_TIMEOUT
    ) as silent:
        opened = time.monotonic()
        # Served meanwhile, on the same relay, while the silent client waits for its deadline.
        res = curl_https(name, sni_relay.tls_port, sni_relay.backends.ca)
        assert res.stdout == f"name={name} sni={name}\n", res.stderr
        served_after = time.monotonic() - opened
        try:
            data = silent.recv(1)
        except ConnectionResetError:
            data = b""
        closed_after = time.monotonic() - opened
    assert data == b""
    assert served_after < closed_after, "the other client waited for the silent one"
    assert 0.8 <= closed_after < 5, closed_after
    rec = sni_relay.record(listener="endpoints[1]")
    assert rec["close"] == "sniff-timeout"
    assert rec["bytes_up"] == 0 and rec["backend"] is None
