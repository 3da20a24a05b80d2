"""TLS termination and re-origination (the SNI rewrite) with real parts: nginx backends
with certificates from a test CA, curl and openssl s_client as clients, certificates
made at test time.

The seed scenario: the client reaches the relay by IP (no SNI it could send); the relay
answers with a certificate for 127.0.0.1 and relay.example.com and opens TLS to the
backend with the SNI the backend needs, verified against the test CA.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from helpers.relay import RelayProcess, run_relay
from integration.servers import Nginx, TlsBackends, make_certs, pick_port

pytestmark = pytest.mark.integration


def relay_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA of the relay's own and a leaf for 127.0.0.1 and relay.example.com:
    (ca, cert, key)."""
    ca = trustme.CA(organization_name="relay test CA")
    leaf = ca.issue_cert("127.0.0.1", "relay.example.com")
    paths = tmp / "relay-ca.pem", tmp / "relay.crt", tmp / "relay.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    paths[1].write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(paths[2]))
    return paths


def client_hello(name: str = "relay.example.com") -> bytes:
    """The first flight of a real TLS client (Python's ssl) for `name`."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(inc, out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class BioClient:
    """A TLS client over a memory BIO on a blocking socket, for tests that must choose
    what goes into each segment: `handshake()` stops before the client's last flight
    is sent (it waits in `out`); `read_head()` reads an HTTP answer's head."""

    def __init__(self, raw: socket.socket, ca: Path, name: str = "relay.example.com") -> None:
        self.raw = raw
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = ssl.create_default_context(cafile=str(ca))
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=name)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                return
            except ssl.SSLWantReadError:
                if self.out.pending:
                    self.raw.sendall(self.out.read())
                self.inc.write(self.raw.recv(65536))

    def read_head(self) -> bytes:
        body = b""
        while b"\r\n\r\n" not in body:
            try:
                body += self.obj.read(65536)
            except ssl.SSLWantReadError:
                self.inc.write(self.raw.recv(65536))  # the socket's timeout bounds it
        return body


def endpoint(remote: object, *lines: str) -> str:
    """One endpoint listening on a port of the kernel's choice, to 127.0.0.1:`remote`,
    with `lines` (transports) added."""
    body = "".join(f"{line}\n" for line in lines)
    return f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:{remote}"\n{body}'


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_seed_scenario_client_by_ip_backend_gets_its_name(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    port = tls_backends.https["emby.example.com"]
    config = endpoint(
        port,
        f'listen_transport = "tls;cert={cert};key={key}"',
        f'remote_transport = "tls;sni=emby.example.com;ca={tls_backends.ca}"',
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        res = curl(f"https://127.0.0.1:{relay.port()}/", "--cacert", str(ca))
        assert res.returncode == 0, res.stderr + relay.log
        assert res.stdout.strip() == "name=emby.example.com sni=emby.example.com"
        [rec] = relay.wait_records(1)
        assert rec["upstream_sni"] == "emby.example.com"
        assert rec["client_tls"] in ("TLSv1.3", "TLSv1.2") and rec["backend_tls"]
        assert rec["verified"] in (True, "yes") and rec["close"] == "eof"


def test_a_backend_certificate_for_another_name_fails_the_client_handshake(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    port = tls_backends.https["jellyfin.example.com"]  # its certificate: jellyfin only
    config = endpoint(
        port,
        f'listen_transport = "tls;cert={cert};key={key}"',
        f'remote_transport = "tls;sni=emby.example.com;ca={tls_backends.ca}"',
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        res = curl(f"https://127.0.0.1:{relay.port()}/", "--cacert", str(ca))
        assert res.returncode == 35, (res.returncode, res.stderr)  # handshake failed
        assert "alert handshake failure" in res.stderr or "handshake" in res.stderr
        [rec] = relay.wait_records(1)
        assert rec["close"] == "tls-backend: certificate verify failed"
        assert rec["verified"] in (None, "-"), rec  # the handshake never finished
        assert "emby.example.com" in rec["hint"] and "jellyfin.example.com" in rec["hint"]


def test_one_listener_passes_one_name_through_and_terminates_another(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    emby = tls_backends.https["emby.example.com"]
    jelly = tls_backends.https["jellyfin.example.com"]
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{emby}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:{emby}"

  [[endpoints.routes]]
  server_names = ["relay.example.com"]
  remote = "127.0.0.1:{jelly}"
  listen_transport = "tls;cert={cert};key={key}"
  remote_transport = "tls;sni=jellyfin.example.com;ca={tls_backends.ca}"
"""
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        p = relay.port()
        passed = curl(
            f"https://emby.example.com:{p}/",
            "--resolve", f"emby.example.com:{p}:127.0.0.1",
            "--cacert", str(tls_backends.ca),
        )  # fmt: skip
        assert passed.stdout.strip() == "name=emby.example.com sni=emby.example.com", (
            passed.stderr + relay.log
        )
        ended = curl(
            f"https://relay.example.com:{p}/",
            "--resolve", f"relay.example.com:{p}:127.0.0.1",
            "--cacert", str(ca),
        )  # fmt: skip
        assert ended.stdout.strip() == "name=jellyfin.example.com sni=jellyfin.example.com"
        s_client = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{p}",
             "-servername", "relay.example.com", "-CAfile", str(ca), "-verify_return_error"],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert "Verify return code: 0 (ok)" in s_client.stdout, s_client.stdout
        recs = relay.wait_records(3)
        assert {r["route"] for r in recs} == {
            "endpoints[0].routes[0]",
            "endpoints[0].routes[1]",
        }
        assert all("client_tls" not in r for r in recs if r["route"].endswith("[0]"))


def test_a_client_that_stalls_mid_handshake_is_closed_at_the_deadline(tmp_path: Path) -> None:
    _, cert, key = relay_cert(tmp_path)
    backend = socket.create_server(("127.0.0.1", 0))
    config = f"""
[network]
tls_handshake_timeout = 0.5
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{backend.getsockname()[1]}"
listen_transport = "tls;cert={cert};key={key}"
"""
    with backend, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
            c.sendall(client_hello())  # then nothing: no Finished ever
            [rec] = relay.wait_records(1, timeout=10)
        assert rec["close"] == "tls-handshake-timeout" and rec["phase"] == "handshake"


def test_garbage_after_the_hello_closes_with_the_tls_reason(tmp_path: Path) -> None:
    _, cert, key = relay_cert(tmp_path)
    backend = socket.create_server(("127.0.0.1", 0))
    config = endpoint(backend.getsockname()[1], f'listen_transport = "tls;cert={cert};key={key}"')
    with backend, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
            c.sendall(client_hello())
            c.sendall(b"\x17\x03\x03\x00\x05hello")  # application data before Finished
            [rec] = relay.wait_records(1, timeout=10)
        assert rec["close"].startswith("tls-client: "), rec
        assert rec["phase"] == "handshake"


@pytest.mark.slow
@pytest.mark.parametrize("reoriginate", [False, True], ids=["terminate", "terminate+reoriginate"])
def test_every_byte_both_ways_with_half_close(tmp_path: Path, reoriginate: bool) -> None:
    """256 MiB each way, sha256-checked, the client's EOF first (close_notify then FIN):
    the backend's answer still flows after it."""
    ca, cert, key = relay_cert(tmp_path)
    size = 256 << 20
    up_data, down_data = os.urandom(1 << 20), os.urandom(1 << 20)
    backend = socket.create_server(("127.0.0.1", 0))
    bctx: ssl.SSLContext | None = None
    if reoriginate:
        bctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        bctx.load_cert_chain(cert, key)
    seen: dict[str, str] = {}

    def serve() -> None:
        raw, _ = backend.accept()
        conn = bctx.wrap_socket(raw, server_side=True) if bctx else raw
        with conn:
            conn.settimeout(60)
            h = hashlib.sha256()
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                h.update(chunk)
            seen["up"] = h.hexdigest()
            for _ in range(size // len(down_data)):
                conn.sendall(down_data)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()  # close_notify, as a TLS server ends its stream

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    remote = f'remote_transport = "tls;sni=relay.example.com;ca={ca}"' if reoriginate else ""
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{backend.getsockname()[1]}"
listen_transport = "tls;cert={cert};key={key}"
{remote}
"""
    with backend, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        down = drive_client(relay.port(), ca, up_data, size)
        t.join(60)
        assert seen["up"] == _expected(up_data, size)
        assert down == _expected(down_data, size)
        [rec] = relay.wait_records(1, timeout=30)
        assert rec["bytes_up"] == size and rec["bytes_down"] == size


def _expected(block: bytes, size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // len(block)):
        h.update(block)
    return h.hexdigest()


def drive_client(port: int, ca: Path, block: bytes, size: int) -> str:
    """A TLS client of the relay on `port` (verified against `ca`, SNI
    relay.example.com) that sends `size` bytes of `block` repeated, half-closes and
    reads to the end (`_drive`): the sha256 of what it read."""
    cctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        c = cctx.wrap_bio(inc, out, server_hostname="relay.example.com")
        down = hashlib.sha256()
        _drive(raw, c, inc, out, block, size, down)
    return down.hexdigest()


def _drive(
    raw: socket.socket,
    c: ssl.SSLObject,
    inc: ssl.MemoryBIO,
    out: ssl.MemoryBIO,
    block: bytes,
    size: int,
    down: hashlib._Hash,
) -> None:
    """A blocking client on a memory BIO: handshake, send `size` bytes, close_notify
    (unwrap once, with nothing buffered) and FIN-less half-close, then read to the end."""

    def pump_in() -> bool:
        data = raw.recv(1 << 18)
        if not data:
            inc.write_eof()
            return False
        inc.write(data)
        return True

    def flush() -> None:
        if out.pending:
            raw.sendall(out.read())

    while True:
        try:
            c.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            pump_in()
    flush()
    for _ in range(size // len(block)):
        c.write(block)
        flush()
    try:
        c.unwrap()
    except ssl.SSLWantReadError:
        pass
    flush()
    got = 0
    while got < size:
        try:
            chunk = c.read(1 << 16)
        except ssl.SSLWantReadError:
            if not pump_in():
                break
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
        if not chunk:
            break
        down.update(chunk)
        got += len(chunk)
    assert got == size, got


def nginx_https(
    tmp: Path, extra: str, leaf_name: str = "emby.example.com"
) -> tuple[Nginx, int, Path]:
    """A dedicated nginx https server for `leaf_name` (a fresh test CA), with `extra`
    directives in its server block; (nginx, port, CA file)."""
    certs = make_certs(tmp / "certs", (leaf_name, "client.example.com"))
    port = pick_port()
    leaf = certs[leaf_name]
    body = (
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl{extra.split('|')[0]};\n"
        f"        ssl_certificate {leaf.cert};\n"
        f"        ssl_certificate_key {leaf.key};\n"
        f"{extra.split('|')[1] if '|' in extra else ''}\n"
        '        location / { return 200 "proto=$server_protocol sni=$ssl_server_name'
        ' client=$ssl_client_s_dn\\n"; }\n'
        "    }\n"
    )
    return Nginx(tmp / "nginx", body, (port,)), port, certs.ca


@pytest.mark.parametrize("backend_h2", [True, False], ids=["backend-h2", "backend-http1.1"])
def test_alpn_agrees_end_to_end(tmp_path: Path, backend_h2: bool) -> None:
    """curl offers h2 and http/1.1; the relay offers them to the backend and selects
    toward curl what the backend chose: HTTP/2 end to end when nginx speaks it, HTTP/1.1
    when it does not."""
    ca, cert, key = relay_cert(tmp_path)
    nginx, port, bca = nginx_https(tmp_path, " http2|" if backend_h2 else "|")
    config = endpoint(
        port,
        f'listen_transport = "tls;cert={cert};key={key}"',
        f'remote_transport = "tls;sni=emby.example.com;ca={bca}"',
    )
    with nginx, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        res = curl(f"https://127.0.0.1:{relay.port()}/", "--http2", "--cacert", str(ca), "-w",
                   " %{http_version}")  # fmt: skip
        assert res.returncode == 0, res.stderr + relay.log
        want = ("HTTP/2.0", "2") if backend_h2 else ("HTTP/1.1", "1.1")
        assert res.stdout.split()[0] == f"proto={want[0]}", res.stdout
        assert res.stdout.split()[-1] == want[1], res.stdout
        [rec] = relay.wait_records(1)
        alpn = "h2" if backend_h2 else "http/1.1"
        assert rec["client_alpn"] == alpn and rec["backend_alpn"] == alpn, rec


def test_mutual_tls_to_a_backend_that_requires_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = relay_cert(tmp_path)
    nginx, port, bca = nginx_https(
        tmp_path,
        f"|        ssl_verify_client on;\n        ssl_client_certificate {tmp_path}/certs/ca.pem;",
    )
    client = tmp_path / "certs"
    base = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{port}"
listen_transport = "tls;cert={cert};key={key}"
"""
    with_cert = base + (
        f'remote_transport = "tls;sni=emby.example.com;ca={bca};'
        f'client_cert={client}/client.example.com.crt;client_key={client}/client.example.com.key"\n'
    )
    without = base + f'remote_transport = "tls;sni=emby.example.com;ca={bca}"\n'
    with nginx:
        for text, ok in ((with_cert, True), (without, False)):
            work = tmp_path / ("with" if ok else "without")
            work.mkdir()
            with RelayProcess(config=text, tmp_path=work) as relay:
                relay.start()
                res = curl(f"https://127.0.0.1:{relay.port()}/", "--cacert", str(ca))
                if ok:
                    assert res.returncode == 0, res.stderr + relay.log
                    assert "client=CN=client.example.com" in res.stdout, res.stdout
                else:  # nginx answers 400 "No required SSL certificate was sent"
                    assert "400" in res.stdout or res.returncode != 0, res.stdout


@pytest.mark.parametrize(
    ("transport", "needle"),
    [
        (
            "tls;cert={d}/missing.pem;key={d}/missing.key",
            "cert file '{d}/missing.pem': no such file",
        ),
        (
            "tls;cert={d}/relay.key;key={d}/relay.key",
            "cert file '{d}/relay.key': not a PEM certificate",
        ),
        (
            "tls;cert={d}/relay.crt;key={d}/relay.crt",
            "key file '{d}/relay.crt': not a PEM private key",
        ),
        ("tls;cert={d}/relay.crt;key={d}/other.key", "the key does not match the certificate"),
    ],
)
def test_a_bad_certificate_or_key_stops_the_start_naming_the_key_and_file(
    tmp_path: Path, transport: str, needle: str
) -> None:
    relay_cert(tmp_path)
    other = trustme.CA().issue_cert("x.example.com")
    other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:9"
listen_transport = "{transport.format(d=tmp_path)}"
"""
    path = tmp_path / "bad.toml"
    path.write_text(config)
    res = run_relay(["-c", str(path)], timeout=15)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "endpoints[0].listen_transport" in lines[0], res.stderr
    assert needle.format(d=tmp_path) in lines[0], lines[0]


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "no-tickets"])
def test_clients_resume_their_sessions_unless_tickets_are_off(
    tls_backends: TlsBackends, tmp_path: Path, tickets: bool
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{tls_backends.http["emby.example.com"]}"
listen_transport = "tls;cert={cert};key={key}"
network = {{ tls_session_tickets = {"true" if tickets else "false"} }}
"""
    ctx = ssl.create_default_context(cafile=str(ca))
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        session: ssl.SSLSession | None = None
        reused: list[bool | None] = []
        for _ in range(2):
            with (
                socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="relay.example.com", session=session) as s,
            ):
                s.sendall(b"GET / HTTP/1.0\r\nHost: relay.example.com\r\n\r\n")
                body = b""
                while chunk := s.recv(4096):
                    body += chunk
                assert b"http name=emby.example.com" in body
                reused.append(s.session_reused)
                session = s.session
        assert reused == [False, tickets]


def test_a_route_with_an_empty_listen_transport_passes_through_a_terminating_endpoint(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    emby = tls_backends.https["emby.example.com"]
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{tls_backends.http["jellyfin.example.com"]}"
listen_transport = "tls;cert={cert};key={key}"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:{emby}"
  listen_transport = ""
"""
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        p = relay.port()
        passed = curl(
            f"https://emby.example.com:{p}/",
            "--resolve", f"emby.example.com:{p}:127.0.0.1",
            "--cacert", str(tls_backends.ca),
        )  # fmt: skip
        assert passed.stdout.strip() == "name=emby.example.com sni=emby.example.com", passed.stderr
        ended = curl(f"https://127.0.0.1:{p}/", "--cacert", str(ca))  # by IP: terminated
        assert ended.stdout.strip() == "http name=jellyfin.example.com host=127.0.0.1", (
            ended.stderr + relay.log
        )


def test_upstream_sessions_are_resumed_per_backend(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    ca, cert, key = relay_cert(tmp_path)
    config = endpoint(
        tls_backends.https["emby.example.com"],
        f'listen_transport = "tls;cert={cert};key={key}"',
        f'remote_transport = "tls;sni=emby.example.com;ca={tls_backends.ca}"',
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        for _ in range(3):
            res = curl(f"https://127.0.0.1:{relay.port()}/", "--cacert", str(ca))
            assert res.returncode == 0, res.stderr
        recs = relay.wait_records(3)
    assert [r["backend_resumed"] in (True, "yes") for r in recs] == [False, True, True], recs


@contextlib.contextmanager
def terminated_client(
    tls_backends: TlsBackends, tmp_path: Path
) -> Iterator[tuple[RelayProcess, socket.socket, BioClient]]:
    """A relay terminating TLS in front of the emby HTTP backend, and a client whose
    handshake is done up to its Finished (still in `c.out`, not sent)."""
    ca, cert, key = relay_cert(tmp_path)
    config = endpoint(
        tls_backends.http["emby.example.com"], f'listen_transport = "tls;cert={cert};key={key}"'
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=5) as raw:
            c = BioClient(raw, ca)
            c.handshake()
            yield relay, raw, c


def test_a_request_sent_with_the_clients_finished_is_answered(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    """The request arrives in the same segment as the client's Finished: the relay's
    TLS side reads both at once and must forward the request although no readiness
    event follows (a client that sends nothing more would wait for ever)."""
    with terminated_client(tls_backends, tmp_path) as (_, raw, c):
        c.obj.write(b"GET / HTTP/1.0\r\nHost: relay.example.com\r\n\r\n")
        raw.sendall(c.out.read())  # Finished and the request: one segment
        body = c.read_head()  # times out (5 s) if the request is stuck
        assert b"200 OK" in body


def test_each_route_serves_its_own_certificate_and_no_sni_gets_the_endpoints(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    """Three certificates on one listener, chosen by the client's SNI through the
    routes: an exact name, a wildcard, and the endpoint's own for a client that sends
    no SNI (it connects by IP)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    files = {}
    for tag, names in (
        ("a", ["a.example.net"]),
        ("w", ["*.wild.example.net"]),
        ("ip", ["127.0.0.1"]),
    ):
        leaf = ca.issue_cert(*names)
        cert, key = tmp_path / f"{tag}.crt", tmp_path / f"{tag}.key"
        cert.write_bytes(leaf.cert_chain_pems[0].bytes())
        leaf.private_key_pem.write_to_path(str(key))
        files[tag] = f"tls;cert={cert};key={key}"
    http = tls_backends.http["emby.example.com"]
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{http}"
listen_transport = "{files["ip"]}"

  [[endpoints.routes]]
  server_names = ["a.example.net"]
  listen_transport = "{files["a"]}"

  [[endpoints.routes]]
  server_names = ["*.wild.example.net"]
  listen_transport = "{files["w"]}"
"""
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        for name in ("a.example.net", "x.wild.example.net", "127.0.0.1"):
            with (
                socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=name) as s,  # verifies name vs cert
            ):
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                assert b"http name=emby.example.com" in s.recv(4096)


def test_an_ip_as_sni_sends_none_and_verifies_the_ip(tmp_path: Path) -> None:
    """remote_transport sni=127.0.0.1: no SNI goes to the backend, and its certificate
    must carry the IP (one for a name only fails the handshake)."""
    ca, cert, key = relay_cert(tmp_path)  # the backend uses the same kind: 127.0.0.1 + a name
    backend = socket.create_server(("127.0.0.1", 0))
    bctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    bctx.load_cert_chain(cert, key)
    seen: list[str | None] = []

    def note(obj: object, name: str | None, ctx: ssl.SSLContext) -> None:
        seen.append(name)

    bctx.sni_callback = note

    def serve() -> None:
        raw, _ = backend.accept()
        with bctx.wrap_socket(raw, server_side=True) as s:
            s.settimeout(10)
            s.recv(100)
            s.sendall(b"hello from the backend")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    config = endpoint(backend.getsockname()[1], f'remote_transport = "tls;sni=127.0.0.1;ca={ca}"')
    with backend, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
            c.sendall(b"hi")
            assert c.recv(100) == b"hello from the backend"
        t.join(10)
        [rec] = relay.wait_records(1)
    assert seen == [None] and rec["upstream_sni"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("days", "needle"), [(3, "expires in 2 day(s)"), (-2, "expired 2 day(s) ago")]
)
def test_a_certificate_near_or_past_its_expiry_is_a_warning_at_start(
    tmp_path: Path, days: int, needle: str
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=days, hours=-1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = f"""
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:9"
listen_transport = "tls;cert={tmp_path}/c.pem;key={tmp_path}/k.pem"
"""
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        assert f"endpoints[0].listen_transport: certificate {tmp_path}/c.pem {needle}" in relay.log


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_half_a_record_does_not_make_the_relay_spin(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    """A client sends the first bytes of a record and stalls: the relay waits for the
    rest (the socket's readiness announces it) instead of polling its own buffer."""
    with terminated_client(tls_backends, tmp_path) as (relay, raw, c):
        raw.sendall(c.out.read())
        c.obj.write(b"GET / HTTP/1.0\r\nHost: relay.example.com\r\n\r\n")
        record = c.out.read()
        raw.sendall(record[:10])  # the record's header and a little: the rest later
        before = _cpu_seconds(relay.pid)
        window = threading.Event()
        window.wait(0.5)  # a measuring window, not a wait for a condition
        spent = _cpu_seconds(relay.pid) - before
        raw.sendall(record[10:])
        body = c.read_head()
        assert b"200 OK" in body
        assert spent < 0.2, f"the relay used {spent:.2f} s of CPU in 0.5 s while waiting"


def test_workers_serve_one_self_signed_certificate_and_warn_once(
    tls_backends: TlsBackends, tmp_path: Path
) -> None:
    """servername= makes its certificate once, before the workers fork: every worker
    serves the same one, and the start-up warning is logged once, not per worker."""
    config = f"""
workers = 2
[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{tls_backends.http["emby.example.com"]}"
listen_transport = "tls;servername=relay.example.com"
"""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed: compared by fingerprint below
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=2)
        seen: set[bytes] = set()
        for _ in range(24):  # SO_REUSEPORT spreads them (all on one worker: p = 2^-23)
            with (
                socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="relay.example.com") as s,
            ):
                der = s.getpeercert(binary_form=True)
                assert der is not None
                seen.add(hashlib.sha256(der).digest())
                s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                assert b"http name=emby.example.com" in s.recv(4096)
        workers = {r.get("worker") for r in relay.wait_records(24)}
    assert len(seen) == 1
    assert len(workers) == 2, workers  # both served (and so both had the certificate)
    assert relay.log.count("serving a self-signed certificate") == 1


def test_a_plain_request_to_a_terminating_route_costs_no_backend_connection(
    tmp_path: Path,
) -> None:
    """Plain HTTP (or anything not TLS) where the route terminates TLS is refused at the
    decision, before the relay connects (and, re-originating, handshakes) upstream."""
    ca, cert, key = relay_cert(tmp_path)
    backend = socket.create_server(("127.0.0.1", 0))
    backend.setblocking(False)
    config = endpoint(
        backend.getsockname()[1],
        f'listen_transport = "tls;cert={cert};key={key}"',
        f'remote_transport = "tls;sni=relay.example.com;ca={ca}"',
    )
    with backend, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: relay.example.com\r\n\r\n")
            assert c.recv(100) == b""  # closed
        [rec] = relay.wait_records(1)
        assert rec["close"] == "tls-client: http request" and rec["backend"] is None, rec
        with pytest.raises(BlockingIOError):
            backend.accept()  # the backend never heard of it
