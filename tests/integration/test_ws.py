"""WebSocket transports (realm's ``ws;host=H;path=P``, and wss with ``tls``) with real
parts: the `websockets` library as the standard client and server, snirelay on both
sides of a tunnel, nginx proxying the upgrade in the middle, and raw sockets for what
realm itself sends (masked client frames with a zero masking key). Certificates are made
at test time (trustme).

The byte stream is what counts, not the framing: each end compares the concatenated
payloads (or a sha256 of them) with what the other end sent.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as ws_serve

from helpers.peers import EchoServer, StreamServer, duplex, recv_all
from helpers.relay import RelayProcess, parse_text_record
from helpers.wait import wait_until
from integration.servers import Nginx, make_certs, nginx_available, pick_port
from integration.test_tls import endpoint, nginx_https, relay_cert

pytestmark = pytest.mark.integration

HOST = "relay.example.com"  # in relay_cert()'s leaf, with 127.0.0.1
PATH = "/tunnel"
WS = f"ws;host={HOST};path={PATH}"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3

# sha256-checked transfers each way: (bytes up, bytes down); down is odd so the last
# frame is a partial one
SIZES = [
    pytest.param(8 << 20, (6 << 20) + 333, id="8MiB"),
    pytest.param(256 << 20, (192 << 20) + 333, id="256MiB", marks=pytest.mark.slow),
]


def _messages() -> list[bytes]:
    """Binary messages of sizes that take each of the three length encodings."""
    return [os.urandom(n) for n in (1, 125, 126, 300, 65535, 65536, 200_000)]


def _recv_bytes(ws: ClientConnection, want: int) -> bytes:
    """Binary messages from a websockets connection until `want` bytes came."""
    got = bytearray()
    while len(got) < want:
        msg = ws.recv(timeout=10)
        assert isinstance(msg, bytes), f"a text message where binary was expected: {msg!r}"
        got += msg
    return bytes(got)


def _ws_socket(port: int) -> socket.socket:
    """A connection for `websockets.sync.client.connect(sock=...)`: blocking, as the
    library makes its own (its calls carry their own timeouts)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(None)
    return sock


def _log_after(relay: RelayProcess, start: int) -> str:
    """What the relay logged after offset `start`, with each connection record reduced
    to its close reason and hint (its key names, such as path=, are no reason)."""
    out = []
    for line in relay.log[start:].splitlines():
        rec = parse_text_record(line)
        if rec is None:
            out.append(line)
        else:
            out.append(f"{rec.get('close')} {rec.get('hint') or ''}")
    return "\n".join(out)


# -- 1, 2: the websockets client against a ws / wss listener ---------------------------------


@pytest.mark.parametrize("listener", ["ws", "wss-trustme", "wss-servername"])
def test_a_websockets_client_reaches_a_tcp_backend_through_a_ws_listener(
    tmp_path: Path, listener: str
) -> None:
    listen, ctx = WS, None
    if listener == "wss-trustme":
        ca, crt, key = relay_cert(tmp_path)
        listen = f"{WS};tls;cert={crt};key={key}"
        ctx = ssl.create_default_context(cafile=str(ca))
    elif listener == "wss-servername":  # a self-signed certificate: checked by its SAN
        listen = f"{WS};tls;servername={HOST}"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with EchoServer(timeout=30) as backend:
        config = endpoint(backend.port, f'listen_transport = "{listen}"')
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            sent = _messages()
            total = sum(map(len, sent))
            sock = _ws_socket(relay.port())
            # the URI's host and port make the Host header: HOST, default port (not written)
            url = f"{'wss' if ctx else 'ws'}://{HOST}{PATH}"
            with ws_connect(url, sock=sock, ssl=ctx, open_timeout=10) as ws:
                if ctx is not None:
                    tls = ws.socket
                    assert isinstance(tls, ssl.SSLSocket)
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    names = (
                        x509.load_der_x509_certificate(der)
                        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
                        .value.get_values_for_type(x509.DNSName)
                    )
                    assert HOST in names, names
                for msg in sent:
                    ws.send(msg)
                assert _recv_bytes(ws, total) == b"".join(sent)
                ws.close()
                # the relay answered our Close (after the backend's EOF)
                assert ws.protocol.close_rcvd is not None, relay.log
            [rec] = relay.wait_records(1)
            assert rec["bytes_up"] == total and rec["bytes_down"] == total, rec


# -- 3: a ws / wss remote against the websockets server --------------------------------------


@dataclass
class Upgraded:
    """What the websockets server saw of one connection."""

    path: str
    host: str
    kinds: list[str] = field(default_factory=list)  # "bytes" or "str", per message
    ended: str = ""  # "" while open; then "ok" (a Close exchanged) or the error
    done: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def websockets_echo(ctx: ssl.SSLContext | None, seen: list[Upgraded]) -> Iterator[int]:
    """A websockets sync server echoing each message, noting each connection in
    `seen`. Yields its port."""

    def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        up = Upgraded(ws.request.path, ws.request.headers["Host"])
        seen.append(up)
        try:
            for msg in ws:  # ends on a clean Close; ConnectionClosedError otherwise
                up.kinds.append(type(msg).__name__)
                ws.send(msg)
            up.ended = "ok"
        except ConnectionClosed as exc:
            up.ended = repr(exc)
        finally:
            up.done.set()

    server = ws_serve(handler, "127.0.0.1", 0, ssl=ctx, open_timeout=10)
    t = threading.Thread(target=server.serve_forever, name="ws-server", daemon=True)
    t.start()
    try:
        yield int(server.socket.getsockname()[1])
    finally:
        server.shutdown()
        t.join(10)


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_a_ws_remote_reaches_a_websockets_server_with_its_host_and_path(
    tmp_path: Path, tls: bool
) -> None:
    ca, crt, key = relay_cert(tmp_path)
    sctx: ssl.SSLContext | None = None
    remote = WS
    if tls:
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(crt, key)
        remote = f"{WS};tls;sni={HOST};ca={ca}"
    seen: list[Upgraded] = []
    with websockets_echo(sctx, seen) as port:
        config = endpoint(port, f'remote_transport = "{remote}"')
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            data = os.urandom(300_000)
            with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
                for i in range(0, len(data), 50_000):
                    c.sendall(data[i : i + 50_000])
                got = bytearray()
                while len(got) < len(data):
                    chunk = c.recv(65536)
                    assert chunk, f"EOF after {len(got)} of {len(data)} bytes\n{relay.log}"
                    got += chunk
                assert bytes(got) == data
                # our FIN: the relay closes the WebSocket with a Close frame
                c.shutdown(socket.SHUT_WR)
                assert c.recv(100) == b"", "data after the echo"
            [rec] = relay.wait_records(1)
            [up] = seen
            assert up.done.wait(10), "the server's connection did not end"
    assert (up.path, up.host) == (PATH, HOST)
    assert up.kinds and set(up.kinds) == {"bytes"}, up.kinds  # binary frames only
    assert rec["bytes_up"] == len(data) and rec["bytes_down"] == len(data), rec
    assert up.ended == "ok", f"the WebSocket did not end with a Close: {up.ended}"


# -- 4, 5: snirelay to snirelay, directly and through nginx ---------------------------------


def _transfer(port: int, server: StreamServer, up: int, timeout: float) -> None:
    """A client sends `up` bytes and shuts down writing, then reads to EOF what the
    backend (`server`, answering after our EOF) sends; both ends' sha256 must agree."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        res = duplex(c, up, "concurrent")
    assert res.error is None, repr(res.error)
    [srv] = server.wait_results(1, timeout=timeout)
    assert srv.error is None, repr(srv.error)
    assert (srv.received, srv.received_sha) == (up, res.sent_sha), "client -> backend"
    assert (res.received, res.received_sha) == (server.send_bytes, srv.sent_sha), (
        "backend -> client"
    )


@contextlib.contextmanager
def _relay(tmp: Path, name: str, remote: int, *lines: str) -> Iterator[RelayProcess]:
    """One of the relays of a test with two (A and B), started, in its own directory."""
    (tmp / name).mkdir()
    with RelayProcess(config=endpoint(remote, *lines), tmp_path=tmp / name) as relay:
        relay.start()
        yield relay


def _check_records(relays: tuple[RelayProcess, ...], up: int, down: int) -> None:
    for relay in relays:
        [rec] = relay.wait_records(1, timeout=30)
        assert (rec["bytes_up"], rec["bytes_down"]) == (up, down), rec


TUNNELS = {
    # A's remote_transport, B's listen_transport ({crt}, {key}, {ca}: relay_cert's files)
    "ws": (WS, WS),
    "wss": (f"{WS};tls;sni={HOST};ca={{ca}}", f"{WS};tls;cert={{crt}};key={{key}}"),
    "wss-insecure-alpn": (
        f"{WS};tls;sni={HOST};insecure;alpn=http/1.1",
        f"{WS};tls;servername={HOST}",
    ),
}


@pytest.mark.parametrize(("up", "down"), SIZES)
@pytest.mark.parametrize("tunnel", list(TUNNELS))
def test_relay_to_relay_over_ws_every_byte_both_ways_with_half_close(
    tmp_path: Path, tunnel: str, up: int, down: int
) -> None:
    """client -> A (remote ws) -> B (listen ws) -> backend. The client's FIN becomes a
    Close from A to B and a FIN from B to the backend; the backend's answer still
    flows back after it."""
    ca, crt, key = relay_cert(tmp_path)
    a_remote, b_listen = (s.format(ca=ca, crt=crt, key=key) for s in TUNNELS[tunnel])
    timeout = 60 if up < (64 << 20) else 300
    with (
        StreamServer(down, "after_eof", timeout=timeout) as backend,
        _relay(tmp_path, "b", backend.port, f'listen_transport = "{b_listen}"') as b,
        _relay(tmp_path, "a", b.port(), f'remote_transport = "{a_remote}"') as a,
    ):
        _transfer(a.port(), backend, up, timeout)
        _check_records((a, b), up, down)


def _nginx_tunnel(tmp: Path, relay_b: int, tls: bool) -> tuple[Nginx, int, Path | None]:
    """nginx on loopback proxying the upgrade on PATH to 127.0.0.1:`relay_b`; with
    `tls`, it terminates TLS itself with a trustme certificate for HOST. (nginx, its
    port, the CA file or None)."""
    port = pick_port()
    listen, ca = f"127.0.0.1:{port}", None
    certs_lines = ""
    if tls:
        certs = make_certs(tmp / "nginx-certs", (HOST,))
        listen += " ssl"
        certs_lines = (
            f"        ssl_certificate {certs[HOST].cert};\n"
            f"        ssl_certificate_key {certs[HOST].key};\n"
        )
        ca = certs.ca
    body = (
        "    server {\n"
        f"        listen {listen};\n"
        f"{certs_lines}"
        f"        location {PATH} {{\n"
        f"            proxy_pass http://127.0.0.1:{relay_b};\n"
        "            proxy_http_version 1.1;\n"
        "            proxy_set_header Upgrade $http_upgrade;\n"
        '            proxy_set_header Connection "upgrade";\n'
        "            proxy_set_header Host $host;\n"
        "        }\n"
        "    }\n"
    )
    return Nginx(tmp / "nginx", body, (port,)), port, ca


@pytest.mark.parametrize(("up", "down"), SIZES)
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss-ended-at-nginx"])
def test_through_nginx_every_byte_both_ways_with_half_close(
    tmp_path: Path, tls: bool, up: int, down: int
) -> None:
    """client -> A (remote ws[s]) -> nginx (proxies the upgrade; with wss it ends TLS)
    -> B (listen ws) -> backend. nginx carries one TCP connection each side for the
    whole exchange, so the half-close must travel as a WebSocket Close."""
    reason = nginx_available()
    if reason:
        pytest.skip(reason)
    timeout = 60 if up < (64 << 20) else 300
    with (
        StreamServer(down, "after_eof", timeout=timeout) as backend,
        _relay(tmp_path, "b", backend.port, f'listen_transport = "{WS}"') as b,
    ):
        nginx, nport, ca = _nginx_tunnel(tmp_path, b.port(), tls)
        a_remote = f"{WS};tls;sni={HOST};ca={ca}" if tls else WS
        with nginx, _relay(tmp_path, "a", nport, f'remote_transport = "{a_remote}"') as a:
            _transfer(a.port(), backend, up, timeout)
            _check_records((a, b), up, down)
            access = nginx.dir / "logs" / "access.log"
            wait_until(
                lambda: f'"GET {PATH} HTTP/1.1" 101' in access.read_text(),
                10,
                lambda: f"nginx did not log the upgrade:\n{access.read_text()}{nginx.error_log}",
            )


# -- 6: refusals ----------------------------------------------------------------------------


def _upgrade_request(path: str = PATH, host: str = HOST, key: str | None = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


REFUSALS = {
    # request, words of which the relay's reason must name one
    "wrong-path": (_upgrade_request(path="/tunnelx"), ("path",)),
    "wrong-path-root": (_upgrade_request(path="/"), ("path",)),
    "wrong-path-query": (_upgrade_request(path=f"{PATH}?x=1"), ("path",)),
    "wrong-host": (_upgrade_request(host="other.example.com"), ("host",)),
    "no-upgrade-root": (f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), ("upgrade", "path")),
    "no-upgrade": (f"GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), ("upgrade",)),
    "garbage": (
        b"\x00\xff\x16\x03 this is not HTTP at all \xfe\r\n\r\n",
        ("http", "request", "handshake", "malformed", "invalid", "bad", "upgrade", "websocket"),
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_upgrade_gets_an_http_error_and_is_closed(tmp_path: Path, case: str) -> None:
    request, words = REFUSALS[case]
    with EchoServer(timeout=10) as backend:
        config = endpoint(backend.port, f'listen_transport = "{WS}"')
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            start = len(relay.log)
            with socket.create_connection(("127.0.0.1", relay.port()), timeout=5) as c:
                c.sendall(request)
                answer = b""
                try:
                    answer = recv_all(c)  # each recv times out at 5 s: it must close
                except ConnectionResetError:
                    pass
            m = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
            assert m, f"no HTTP status line: {answer[:200]!r}\n{relay.log}"
            assert int(m.group(1)) >= 400, answer[:200]
            wait_until(
                lambda: any(w in _log_after(relay, start).lower() for w in words),
                10,
                lambda: f"no log line naming {words}:\n{relay.log[start:]}",
            )
        assert backend.connections == 0  # refused before any backend connection


def test_a_client_that_sends_nothing_is_closed_at_the_handshake_timeout(tmp_path: Path) -> None:
    with EchoServer(timeout=10) as backend:
        config = endpoint(
            backend.port,
            f'listen_transport = "{WS}"',
            "network = { tls_handshake_timeout = 0.5 }",
        )
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            start = len(relay.log)
            with socket.create_connection(("127.0.0.1", relay.port()), timeout=10) as c:
                t0 = time.monotonic()
                with contextlib.suppress(ConnectionResetError):
                    assert c.recv(100) == b""  # TimeoutError (10 s) if never closed
                waited = time.monotonic() - t0
            assert 0.45 <= waited < 5, f"closed after {waited:.2f} s, not at the 0.5 s deadline"
            wait_until(
                lambda: "timeout" in _log_after(relay, start).lower(),
                10,
                lambda: f"no log line naming the timeout:\n{relay.log[start:]}",
            )


# -- 7: realm's client frames: masked, with a zero masking key --------------------------------


def _frame(opcode: int, payload: bytes, key: bytes = b"\0\0\0\0") -> bytes:
    """One final client frame, masked with `key` (realm's: zero)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ key[i & 3] for i, b in enumerate(payload)) if any(key) else payload
    return head + key + masked


class _Frames:
    """Server frames read by hand from a socket: (fin, opcode, payload); a server
    frame must not be masked and uses no RSV bit (no extension was agreed)."""

    def __init__(self, sock: socket.socket, buf: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(buf)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)  # the socket's timeout bounds it
            assert chunk, f"EOF inside a frame ({len(self.buf)} of {n} bytes)"
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._take(2)
        assert not b1 & 0x80, "the server masked its frame"
        assert not b0 & 0x70, f"RSV bits set: {b0:#04x}"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return bool(b0 & 0x80), b0 & 0x0F, self._take(n)


def _upgrade(sock: socket.socket) -> _Frames:
    """The opening handshake by hand, its Sec-WebSocket-Accept checked."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(_upgrade_request(key=key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"EOF before the handshake's answer: {head!r}"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    assert status.split()[1] == "101", status
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers.get("sec-websocket-accept") == accept, headers
    assert headers.get("upgrade", "").lower() == "websocket", headers
    assert "sec-websocket-extensions" not in headers, headers  # none was offered
    return _Frames(sock, rest)


@contextlib.contextmanager
def _raw_ws_client(tmp_path: Path) -> Iterator[_Frames]:
    with EchoServer(timeout=10) as backend:
        config = endpoint(backend.port, f'listen_transport = "{WS}"')
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            with socket.create_connection(("127.0.0.1", relay.port()), timeout=5) as c:
                yield _upgrade(c)


def _read_binary(frames: _Frames, n: int) -> bytes:
    """Data frames until `n` bytes came: one binary message or several, each a binary
    frame and its continuations."""
    got = bytearray()
    inside = False  # within a fragmented message
    while len(got) < n:
        fin, opcode, payload = frames.read()
        assert opcode == (0x0 if inside else 0x2), f"opcode {opcode:#x} (inside={inside})"
        inside = not fin
        got += payload
    return bytes(got)


def test_realm_frames_with_a_zero_masking_key_are_unmasked_and_echoed(tmp_path: Path) -> None:
    with _raw_ws_client(tmp_path) as frames:
        sent = [os.urandom(n) for n in (5, 300, 70_000)]  # 7-bit, 16-bit, 64-bit lengths
        for payload in sent:
            frames.sock.sendall(_frame(0x2, payload))
        want = b"".join(sent)
        assert _read_binary(frames, len(want)) == want


def test_a_ping_with_a_zero_masking_key_gets_a_pong_with_its_payload(tmp_path: Path) -> None:
    with _raw_ws_client(tmp_path) as frames:
        frames.sock.sendall(_frame(0x2, b"before the ping"))
        assert _read_binary(frames, 15) == b"before the ping"  # the tunnel is up
        frames.sock.sendall(_frame(0x9, b"are you there?"))
        assert frames.read() == (True, 0xA, b"are you there?")


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_one_huge_frame_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    """A single 128 MiB binary frame (masked with realm's zero key) is passed on as it
    arrives: the relay's peak memory grows by far less than the frame."""
    size = 128 << 20
    with StreamServer(0, "after_eof", timeout=60) as backend:
        config = endpoint(backend.port, f'listen_transport = "{WS}"')
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            assert relay.proc is not None
            before = _peak_rss_kb(relay.proc.pid)
            with socket.create_connection(("127.0.0.1", relay.port()), timeout=30) as c:
                _upgrade(c)
                c.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, size) + b"\0\0\0\0")
                chunk, h = os.urandom(1 << 20), hashlib.sha256()
                for _ in range(size // len(chunk)):
                    c.sendall(chunk)
                    h.update(chunk)
                c.sendall(_frame(0x8, struct.pack("!H", 1000)))  # Close: the end of it
                [srv] = backend.wait_results(1, timeout=60)
            assert srv.error is None, repr(srv.error)
            assert (srv.received, srv.received_sha) == (size, h.hexdigest())
            grown = _peak_rss_kb(relay.proc.pid) - before
            assert grown < 32 * 1024, f"peak memory grew by {grown} KB for a {size >> 20} MiB frame"


def test_routes_by_host_each_with_its_own_ws_path(tmp_path: Path) -> None:
    """One listener, plain HTTP routed by Host as for any request: each route accepts
    the upgrade for its own host and path, and a client gets the route its Host names."""
    with EchoServer(timeout=30) as a, EchoServer(timeout=30) as b:
        routes = "".join(
            f'[[endpoints.routes]]\nserver_names = ["{name}.example.com"]\n'
            f'remote = "127.0.0.1:{srv.port}"\n'
            f'listen_transport = "ws;host={name}.example.com;path=/{name}"\n'
            for name, srv in (("a", a), ("b", b))
        )
        config = f'[[endpoints]]\nlisten = "127.0.0.1:0"\n{routes}'
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            sock = _ws_socket(relay.port())
            with ws_connect("ws://b.example.com/b", sock=sock, open_timeout=10) as ws:
                ws.send(b"to b")
                assert _recv_bytes(ws, 4) == b"to b"
            [rec] = relay.wait_records(1)
            assert rec["route"] == "endpoints[0].routes[1]" and rec["kind"] == "http", rec
            assert (a.connections, b.connections) == (0, 1)


def test_receive_ws_send_tls_the_backend_sees_its_name(tmp_path: Path) -> None:
    """A mix: WebSocket in, TLS out. The relay accepts the websockets client's upgrade
    and re-originates TLS with sni= to nginx, which answers the request carried in the
    frames with the name it was asked for."""
    reason = nginx_available()
    if reason:
        pytest.skip(reason)
    nginx, port, ca = nginx_https(tmp_path, "")
    config = endpoint(
        port,
        f'listen_transport = "{WS}"',
        f'remote_transport = "tls;sni=emby.example.com;ca={ca}"',
    )
    with nginx, RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        sock = _ws_socket(relay.port())
        with ws_connect(f"ws://{HOST}{PATH}", sock=sock, open_timeout=10) as ws:
            ws.send(b"GET / HTTP/1.1\r\nHost: emby.example.com\r\nConnection: close\r\n\r\n")
            answer = bytearray()
            with contextlib.suppress(ConnectionClosed):
                while b"\n" not in answer.partition(b"\r\n\r\n")[2]:
                    msg = ws.recv(timeout=10)
                    assert isinstance(msg, bytes)
                    answer += msg
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"sni=emby.example.com" in answer, answer
        [rec] = relay.wait_records(1)
        assert rec["client_ws"] == PATH and rec["upstream_sni"] == "emby.example.com", rec


def test_receive_tls_send_ws_through_a_second_relay(tmp_path: Path) -> None:
    """The other mix: TLS in (terminated at A), WebSocket from A to B, TCP out."""
    ca, crt, key = relay_cert(tmp_path)
    a_lines = (f'listen_transport = "tls;cert={crt};key={key}"', f'remote_transport = "{WS}"')
    with (
        EchoServer(timeout=30) as backend,
        _relay(tmp_path, "b", backend.port, f'listen_transport = "{WS}"') as b,
        _relay(tmp_path, "a", b.port(), *a_lines) as a,
    ):
        ctx = ssl.create_default_context(cafile=str(ca))
        payload = os.urandom(300_000)
        with (
            socket.create_connection(("127.0.0.1", a.port()), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as c,
        ):
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = c.recv(65536)
                assert chunk, f"EOF after {len(got)} bytes"
                got += chunk
        assert bytes(got) == payload
        [rec] = a.wait_records(1)
        assert rec["client_tls"] and rec["backend_ws"] == PATH, rec
