"""HAProxy as a real peer of the relay.

- SNI: HAProxy behind the relay routes on `req.ssl_sni`; it can only do so if the relay
  replayed the ClientHello byte-exact, and the nginx behind it must still see the name.
- PROXY protocol (both versions, both directions, and chained): HAProxy (and nginx, with
  `listen ... proxy_protocol`) answers with the
  client address it was told (`http-request return ... %[src]:%[src_port]`), or sends a
  header to the relay, whose record must then name the original client.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from helpers.relay import RelayProcess
from helpers.wait import wait_until
from integration.servers import BACKEND_NAMES, HAProxy, TlsBackends, pick_port

pytestmark = pytest.mark.integration

TIMEOUT = 10
StartHAProxy = Callable[[str, Iterable[int]], HAProxy]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
        check=False,
    )


def http_get(port: int, host: str = "peer.test") -> tuple[str, int]:
    """GET / over a plain socket; returns (body, our local port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        local_port = int(s.getsockname()[1])
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and (chunk := s.recv(65536)):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode(), local_port


def start_relay(config: str, tmp_path: Path, listeners: int = 1) -> RelayProcess:
    relay = RelayProcess(config=config, tmp_path=tmp_path)
    try:
        relay.start(wait_listen=listeners)
    except RuntimeError:
        if "not supported yet" in relay.log:  # a failure of the test, not of its set-up
            raise AssertionError(f"relay: {relay.log.strip().splitlines()[-1]}") from None
        raise
    return relay


def echo_src_frontend(port: int) -> str:
    """An HTTP frontend taking a PROXY header and answering with the address it carried."""
    return (
        "frontend fe_src\n"
        "    mode http\n"
        f"    bind 127.0.0.1:{port} accept-proxy\n"
        '    http-request return status 200 content-type text/plain lf-string "src=%[src]:%[src_port]\\n"\n'
    )


def test_haproxy_behind_relay_routes_on_the_replayed_sni(
    tls_backends: TlsBackends, haproxy: StartHAProxy, tmp_path: Path
) -> None:
    hp_port = pick_port()
    emby, jellyfin = BACKEND_NAMES
    haproxy(
        "frontend fe_sni\n"
        f"    bind 127.0.0.1:{hp_port}\n"
        "    tcp-request inspect-delay 5s\n"
        "    tcp-request content accept if { req_ssl_hello_type 1 }\n"
        f"    use_backend be_emby if {{ req.ssl_sni -i {emby} }}\n"
        f"    use_backend be_jellyfin if {{ req.ssl_sni -i {jellyfin} }}\n"
        "backend be_emby\n"
        f"    server s 127.0.0.1:{tls_backends.https[emby]}\n"
        "backend be_jellyfin\n"
        f"    server s 127.0.0.1:{tls_backends.https[jellyfin]}\n",
        [hp_port],
    )
    relay_port = pick_port()
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        f'  [[endpoints.routes]]\n  server_names = ["*.example.com"]\n'
        f'  remote = "127.0.0.1:{hp_port}"\n'
    )
    with start_relay(config, tmp_path) as relay:
        for name in BACKEND_NAMES:
            res = curl(
                "--resolve",
                f"{name}:{relay_port}:127.0.0.1",
                "--cacert",
                str(tls_backends.ca),
                f"https://{name}:{relay_port}/",
            )
            assert res.returncode == 0, (res.stderr, relay.log)
            assert res.stdout == f"name={name} sni={name}\n"
        recs = relay.wait_records(2)
        assert {r["sni"] for r in recs} == set(BACKEND_NAMES)
        assert {r["route"] for r in recs} == {"endpoints[0].routes[0]"}


@pytest.mark.parametrize("version", [1, 2])
def test_relay_sends_proxy_header_haproxy_reads_it(
    haproxy: StartHAProxy, tmp_path: Path, version: int
) -> None:
    hp_port, relay_port = pick_port(), pick_port()
    haproxy(echo_src_frontend(hp_port), [hp_port])
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        f'remote = "127.0.0.1:{hp_port}"\n'
        f"network = {{ send_proxy = true, send_proxy_version = {version} }}\n"
    )
    with start_relay(config, tmp_path) as relay:
        body, client_port = http_get(relay_port)
        assert body == f"src=127.0.0.1:{client_port}\n", relay.log
        assert relay.wait_records(1)[0]["client"] == f"127.0.0.1:{client_port}"


def test_relay_accepts_proxy_header_from_haproxy(
    tls_backends: TlsBackends, haproxy: StartHAProxy, tmp_path: Path
) -> None:
    hp_port, relay_port = pick_port(), pick_port()
    backend = tls_backends.http[BACKEND_NAMES[0]]
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        f'remote = "127.0.0.1:{backend}"\n'
        "network = { accept_proxy = true }\n"
    )
    with start_relay(config, tmp_path) as relay:
        haproxy(
            "listen front\n"
            f"    bind 127.0.0.1:{hp_port}\n"
            f"    server relay 127.0.0.1:{relay_port} send-proxy-v2\n",
            [hp_port],
        )
        body, client_port = http_get(hp_port, host=BACKEND_NAMES[0])
        assert body.startswith(f"http name={BACKEND_NAMES[0]} "), body
        # HAProxy's start-up probe (servers.wait_listening) made a connection too: find ours.
        wanted = f"127.0.0.1:{client_port}"
        wait_until(
            lambda: any(r["client"] == wanted for r in relay.records()), TIMEOUT, lambda: relay.log
        )


def test_proxy_chain_haproxy_relay_haproxy(haproxy: StartHAProxy, tmp_path: Path) -> None:
    front, back, relay_port = pick_port(), pick_port(), pick_port()
    haproxy(echo_src_frontend(back), [back])
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        f'remote = "127.0.0.1:{back}"\n'
        "network = { accept_proxy = true, send_proxy = true }\n"
    )
    with start_relay(config, tmp_path) as relay:
        haproxy(
            "listen front\n"
            f"    bind 127.0.0.1:{front}\n"
            f"    server relay 127.0.0.1:{relay_port} send-proxy\n",
            [front],
        )
        body, client_port = http_get(front)
        assert body == f"src=127.0.0.1:{client_port}\n", relay.log


def test_haproxy_in_front_of_sni_routing(
    tls_backends: TlsBackends, haproxy: StartHAProxy, tmp_path: Path
) -> None:
    """HAProxy (tcp mode, send-proxy-v2) -> the relay (accept_proxy, routes by SNI) ->
    nginx: the route follows the SNI after the header, the record names the client."""
    hp_port, relay_port = pick_port(), pick_port()
    emby = BACKEND_NAMES[0]
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        "network = { accept_proxy = true }\n"
        f'  [[endpoints.routes]]\n  server_names = ["{emby}"]\n'
        f'  remote = "127.0.0.1:{tls_backends.https[emby]}"\n'
    )
    with start_relay(config, tmp_path) as relay:
        haproxy(
            "listen front\n"
            "    mode tcp\n"
            f"    bind 127.0.0.1:{hp_port}\n"
            f"    server relay 127.0.0.1:{relay_port} send-proxy-v2\n",
            [hp_port],
        )
        res = curl("--resolve", f"{emby}:{hp_port}:127.0.0.1", "--cacert", str(tls_backends.ca),
                   "-w", " port=%{local_port}", f"https://{emby}:{hp_port}/")  # fmt: skip
        assert res.returncode == 0, (res.stderr, relay.log)
        body, _, port = res.stdout.rpartition(" port=")
        assert body == f"name={emby} sni={emby}\n"
        wanted = f"127.0.0.1:{port}"
        rec = wait_until(
            lambda: next((r for r in relay.records() if r["client"] == wanted), None),
            TIMEOUT,
            lambda: relay.log,
        )
        assert rec["sni"] == emby and rec["route"] == "endpoints[0].routes[0]", rec


def test_one_route_sends_the_header_another_does_not(
    tls_backends: TlsBackends, haproxy: StartHAProxy, tmp_path: Path
) -> None:
    hp_port, relay_port = pick_port(), pick_port()
    haproxy(echo_src_frontend(hp_port), [hp_port])
    plain = BACKEND_NAMES[0]
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        '  [[endpoints.routes]]\n  server_names = ["proxied.test"]\n'
        f'  remote = "127.0.0.1:{hp_port}"\n'
        "  network = { send_proxy = true }\n"
        f'  [[endpoints.routes]]\n  server_names = ["{plain}"]\n'
        f'  remote = "127.0.0.1:{tls_backends.http[plain]}"\n'
    )
    with start_relay(config, tmp_path):
        body, client_port = http_get(relay_port, host="proxied.test")
        assert body == f"src=127.0.0.1:{client_port}\n"
        body, _ = http_get(relay_port, host=plain)
        assert body.startswith(f"http name={plain} "), body  # no header: nginx read HTTP


@pytest.mark.parametrize("version", [1, 2])
def test_relay_sends_proxy_header_nginx_reads_it(tmp_path: Path, version: int) -> None:
    """nginx with `listen ... proxy_protocol` answers with the address the header gave."""
    from integration.servers import Nginx, nginx_available

    if reason := nginx_available():
        pytest.skip(reason)
    ng_port, relay_port = pick_port(), pick_port()
    nginx = Nginx(
        tmp_path / "nginx",
        "    server {\n"
        f"        listen 127.0.0.1:{ng_port} proxy_protocol;\n"
        '        location / { return 200 "pp=$proxy_protocol_addr:$proxy_protocol_port\\n"; }\n'
        "    }\n",
        [ng_port],
    )
    nginx.start()
    try:
        config = (
            '[log]\nformat = "json"\n\n'
            f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
            f'remote = "127.0.0.1:{ng_port}"\n'
            f"network = {{ send_proxy = true, send_proxy_version = {version} }}\n"
        )
        with start_relay(config, tmp_path):
            body, client_port = http_get(relay_port)
            assert body == f"pp=127.0.0.1:{client_port}\n"
    finally:
        nginx.stop()


@pytest.mark.parametrize("reoriginate", [False, True], ids=["terminate", "reoriginate"])
def test_a_tls_ending_relay_tells_haproxy_the_client_and_the_sni(
    haproxy: StartHAProxy, tmp_path: Path, reoriginate: bool
) -> None:
    """v2 toward HAProxy from a relay that ends the client's TLS: HAProxy reads the
    client's address and the authority TLV (the SNI). Re-originating, the header goes
    before the relay's own TLS handshake with HAProxy (`accept-proxy ssl`); the record
    counts the payload, not the header."""
    from integration.test_tls import relay_cert

    ca, cert, key = relay_cert(tmp_path)
    combined = tmp_path / "haproxy.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    hp_port, relay_port = pick_port(), pick_port()
    tls_bind = f" ssl crt {combined}" if reoriginate else ""
    haproxy(
        "frontend fe_authority\n"
        "    mode http\n"
        f"    bind 127.0.0.1:{hp_port} accept-proxy{tls_bind}\n"
        "    http-request return status 200 content-type text/plain lf-string"
        ' "authority=%[fc_pp_authority] src=%[src]:%[src_port]\\n"\n',
        [hp_port],
    )
    remote_tls = f'remote_transport = "tls;sni=relay.example.com;ca={ca}"\n' if reoriginate else ""
    config = (
        '[log]\nformat = "json"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{relay_port}"\n'
        f'remote = "127.0.0.1:{hp_port}"\n'
        f'listen_transport = "tls;cert={cert};key={key}"\n'
        f"{remote_tls}"
        "network = { send_proxy = true }\n"
    )
    with start_relay(config, tmp_path) as relay:
        res = curl("--resolve", f"relay.example.com:{relay_port}:127.0.0.1", "--cacert",
                   str(ca), "-w", " port=%{local_port}", f"https://relay.example.com:{relay_port}/")  # fmt: skip
        assert res.returncode == 0, (res.stderr, relay.log)
        body, _, port = res.stdout.rpartition(" port=")
        assert body == f"authority=relay.example.com src=127.0.0.1:{port}\n", res.stdout
        [rec] = relay.wait_records(1)
        assert 0 < rec["bytes_up"] < 500 and rec["close"] == "eof", rec
