"""Backends the relays forward to, started once per benchmark run.

How it works: each backend listens on a loopback port chosen here and lives for the
whole run, so every relay sees the same backend.

- ``iperf3``: ``iperf3 -s`` for throughput (single and 8 streams).
- ``http``: nginx, 2 workers, answering every request with a tiny body on
  keep-alive connections (new-connection rate with ``ab``, persistent rate with ``wrk``).
- ``https``: nginx with TLS on two ports, one certificate each (``a.bench.test``,
  ``b.bench.test``, from a CA made at start), answering with the server name it saw;
  the SNI-routing target. One more port serves ``REORIG_NAME`` with resumption
  allowed (TLS 1.3 tickets, a shared session cache for TLS 1.2) and logs
  ``$ssl_session_reused`` per request to ``resume_log``: what the resumption load
  re-originates to (the other two allow none, so their handshakes are all full).
- relay certificate (for the ``terminate`` and ``reoriginate`` modes): an ECDSA P-256
  leaf for ``RELAY_NAME`` from the same CA, written where ``relay_tls_files(workdir)``
  says (certificate, key, both in one file for HAProxy, the CA); every relay that
  terminates TLS serves this one, and re-originates to the HTTPS backend of
  ``REORIG_NAME`` verified against the CA.
- ``integrity``: a Python thread that reads to EOF, then replies with the sha256 of
  what it got followed by the same bytes, then closes (client half-closes first). A
  connection starting with ``REVERSE_MAGIC`` gets the other order: the backend sends a
  payload and half-closes first, then hashes what the client sends until EOF.
- ``idle``: a Python thread that accepts and holds connections (memory at N idle).
- ``stream``: a Python thread that sends zeros (1 MiB writes, ``STREAM_BYTES`` at most)
  on every connection until the peer goes away: single-stream throughput through a
  terminating relay.
- ``stream_tls``, ``idle_tls``: the same two over TLS, with the certificate of
  ``REORIG_NAME`` (no tickets): what a re-originating relay connects to for the
  throughput and idle-memory loads. ``idle_tls`` counts a connection once its handshake
  is done.
- ``udp_echo``: a Python thread with one UDP socket that sends every datagram (up to
  65,535 bytes) back whole to where it came from: the UDP check and the UDP round-trip
  load. The UDP datagram-rate load uses the ``iperf3`` server (``-u`` on its client:
  the control connection is TCP, the data UDP, both to the same port).

Resource handling: ``Backends.close()`` stops every process and thread started here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field

from common import LOOPBACK, BenchError, free_port, start, stop, wait_port, which

SNI_NAMES = ("a.bench.test", "b.bench.test")
RELAY_NAME = "relay.example.com"  # the name clients ask a TLS-terminating relay for
REORIG_NAME = SNI_NAMES[0]  # the backend a re-originating relay connects to (its SNI)
HTTP_BODY = "ok\n"
REVERSE_MAGIC = b"REVERSE-HALF-CLOSE-CHECK\n"
STREAM_BYTES = 4 << 30  # what one "stream" connection sends at most
_STREAM_BLOCK = bytes(1 << 20)


class _Acceptor(threading.Thread):
    """Accept loop on a listening socket in a daemon thread; bounded by close()."""

    def __init__(self, handler: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(daemon=True)
        self.tls = tls  # server side: handshake first (in the connection's own thread)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(4096)
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.handler = handler
        self.held: list[socket.socket] = []
        self.reverse_payload = b""  # sent first by the reverse (server half-closes) check
        self.reverse_digests: list[bytes] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.closing.is_set():
                    return
                self.closing.wait(0.05)  # EMFILE and the like: back off, retry
                continue
            if self.handler == "idle" and self.tls is None:
                with self.lock:
                    self.held.append(conn)
            elif self.tls is not None or self.handler == "stream":
                threading.Thread(
                    target=self._serve_tls_or_stream, args=(conn,), daemon=True
                ).start()
            else:
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()

    def _serve_one(self, conn: socket.socket) -> None:
        """hash_echo, unless the client's first bytes ask for the reverse check."""
        conn.settimeout(30)
        try:
            head = conn.recv(len(REVERSE_MAGIC), socket.MSG_WAITALL)
        except OSError:
            conn.close()
            return
        if head == REVERSE_MAGIC:
            digest = _send_then_hash(conn, self.reverse_payload)
            with self.lock:
                self.reverse_digests.append(digest)
        else:
            _hash_echo(conn, head)

    def _serve_tls_or_stream(self, conn: socket.socket) -> None:
        """TLS handshake if ``tls`` (10 s at most), then hold (idle) or stream zeros."""
        conn.settimeout(10)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        if self.handler == "idle":
            with self.lock:
                if not self.closing.is_set():
                    self.held.append(conn)
                    return
            conn.close()
            return
        conn.settimeout(30)
        try:
            for _ in range(STREAM_BYTES // len(_STREAM_BLOCK)):  # bounded in bytes
                if self.closing.is_set():
                    break
                conn.sendall(_STREAM_BLOCK)
        except OSError:
            pass  # the client stopped reading and closed: the normal end
        finally:
            conn.close()

    def accepted(self) -> int:
        with self.lock:
            return len(self.held)

    def drop_held(self) -> None:
        with self.lock:
            held, self.held = self.held, []
        for c in held:
            c.close()

    def close(self) -> None:
        self.closing.set()
        self.join(2)
        self.sock.close()
        self.drop_held()


Acceptor = _Acceptor  # the type, for scenarios that pick one of the Python backends

UDP_MAX = 65535  # the largest datagram the UDP echo reads (and so sends back) whole


class UdpEcho(threading.Thread):
    """Every datagram back to its sender, whole, in a daemon thread; bounded by close()."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.5)
        self.port = int(self.sock.getsockname()[1])
        self.closing = threading.Event()

    def run(self) -> None:
        while not self.closing.is_set():
            try:
                data, peer = self.sock.recvfrom(UDP_MAX)
                self.sock.sendto(data, peer)
            except TimeoutError:
                continue
            except OSError:  # ECONNREFUSED from an earlier send, a closed socket: go on
                if self.closing.is_set():
                    return

    def close(self) -> None:
        self.closing.set()
        self.join(2)
        self.sock.close()


def _send_then_hash(conn: socket.socket, payload: bytes) -> bytes:
    """Send payload, SHUT_WR, then read the client's bytes to EOF: their sha256."""
    h = hashlib.sha256()
    try:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)  # the client's direction must keep flowing
        for _ in range(100_000):  # bounded: 256 MiB at most in 1 MiB reads ... and EOF
            data = conn.recv(1 << 20)
            if not data:
                break
            h.update(data)
    except OSError:
        return b""
    finally:
        conn.close()
    return h.digest()


def _hash_echo(conn: socket.socket, first: bytes = b"") -> None:
    """Read to EOF (max 256 MiB), reply sha256 digest + the bytes, then close."""
    conn.settimeout(30)
    chunks: list[bytes] = [first]
    total = len(first)
    try:
        while total < 256 << 20:
            data = conn.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
            total += len(data)
        body = b"".join(chunks)
        conn.sendall(hashlib.sha256(body).digest() + body)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(5)
        conn.recv(1)  # wait for the client to close
    except OSError:
        pass
    finally:
        conn.close()


def _nginx_conf(workdir: str, body: str) -> str:
    return f"""
worker_processes 2;
daemon off;
pid {workdir}/nginx-backend.pid;
error_log {workdir}/nginx-backend.err warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; multi_accept on; }}
http {{
  access_log off;
  log_format resume '$ssl_session_reused $ssl_server_name $ssl_protocol';
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {workdir}/tmp;
  proxy_temp_path {workdir}/tmp;
  fastcgi_temp_path {workdir}/tmp;
  uwsgi_temp_path {workdir}/tmp;
  scgi_temp_path {workdir}/tmp;
  ssl_session_cache off;
  ssl_session_tickets off;
  ssl_protocols TLSv1.2 TLSv1.3;
  default_type text/plain;
{body}
}}
"""


@dataclass(frozen=True)
class RelayTLS:
    """Where the terminating relays' certificate lives (made by Backends at start)."""

    cert: str  # leaf (+ chain) PEM
    key: str  # its private key PEM
    combined: str  # cert chain then key, one file (HAProxy's crt)
    ca: str  # the run's CA: what clients and re-originating relays verify against


def relay_tls_files(workdir: str) -> RelayTLS:
    return RelayTLS(
        f"{workdir}/relay-cert.pem",
        f"{workdir}/relay-key.pem",
        f"{workdir}/relay-combined.pem",
        f"{workdir}/ca.pem",
    )


@dataclass
class Backends:
    workdir: str
    notes: list[str] = field(default_factory=list)
    iperf_port: int | None = None
    http_port: int | None = None
    https_ports: dict[str, int] = field(default_factory=dict)
    resume_port: int | None = None  # HTTPS as REORIG_NAME, resumption allowed
    resume_log: str | None = None  # its access log: "r" (resumed) or "." per request
    ca_pem: str | None = None
    relay_tls: RelayTLS | None = None  # None: no certificate (nginx/trustme missing)
    integrity: _Acceptor | None = None
    idle: _Acceptor | None = None
    stream: _Acceptor | None = None
    stream_tls: _Acceptor | None = None  # TLS as REORIG_NAME (needs the CA: nginx path)
    idle_tls: _Acceptor | None = None
    udp_echo: UdpEcho | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_all(self) -> None:
        self.integrity = _Acceptor("hash_echo")
        self.integrity.start()
        self.idle = _Acceptor("idle")
        self.idle.start()
        self.stream = _Acceptor("stream")
        self.stream.start()
        self.udp_echo = UdpEcho()
        self.udp_echo.start()
        iperf = which("iperf3")
        if iperf:
            self.iperf_port = free_port()
            p = start([iperf, "-s", "-p", str(self.iperf_port)], f"{self.workdir}/iperf3.log")
            self._procs.append(p)
            wait_port(self.iperf_port, proc=p)
        else:
            self.notes.append("iperf3 not installed: throughput not measured (apt install iperf3)")
        nginx = which("nginx")
        if nginx:
            self._start_nginx(nginx)
        else:
            self.notes.append(
                "nginx not installed: no HTTP/HTTPS backend (apt install nginx-light)"
            )

    def _start_nginx(self, nginx: str) -> None:
        import trustme

        os.makedirs(f"{self.workdir}/tmp", exist_ok=True)
        ca = trustme.CA()
        self.ca_pem = f"{self.workdir}/ca.pem"
        ca.cert_pem.write_to_path(self.ca_pem)
        self._relay_cert(ca)
        self.http_port = free_port()
        servers = [
            f"  server {{ listen {LOOPBACK}:{self.http_port} backlog=4096;"
            f" location / {{ return 200 '{HTTP_BODY.strip()}\\n'; }} }}"
        ]
        for name in SNI_NAMES:
            cert = ca.issue_cert(name)
            crt, key = f"{self.workdir}/{name}.crt", f"{self.workdir}/{name}.key"
            cert.private_key_pem.write_to_path(key)
            with open(crt, "wb") as f:
                for blob in cert.cert_chain_pems:
                    f.write(blob.bytes())
            port = free_port()
            self.https_ports[name] = port
            servers.append(
                f"  server {{ listen {LOOPBACK}:{port} ssl backlog=4096; server_name {name};"
                f" ssl_certificate {crt}; ssl_certificate_key {key};"
                f" location / {{ return 200 '{name} $ssl_server_name\\n'; }} }}"
            )
        crt, key = f"{self.workdir}/{REORIG_NAME}.crt", f"{self.workdir}/{REORIG_NAME}.key"
        self.resume_port = resume_port = free_port()
        self.resume_log = f"{self.workdir}/nginx-resume.log"
        servers.append(
            f"  server {{ listen {LOOPBACK}:{resume_port} ssl backlog=4096;"
            f" server_name {REORIG_NAME}; ssl_certificate {crt}; ssl_certificate_key {key};"
            " ssl_session_tickets on; ssl_session_cache shared:resume:1m;"
            f" access_log {self.resume_log} resume;"
            f" location / {{ return 200 '{REORIG_NAME} $ssl_server_name\\n'; }} }}"
        )
        self._tls_acceptors(crt, key)
        conf = f"{self.workdir}/nginx-backend.conf"
        with open(conf, "w") as f:
            f.write(_nginx_conf(self.workdir, "\n".join(servers)))
        p = start(
            [nginx, "-e", f"{self.workdir}/nginx-backend.err", "-c", conf, "-p", self.workdir],
            f"{self.workdir}/nginx-backend.log",
        )
        self._procs.append(p)
        try:
            wait_port(self.http_port, proc=p)
            for port in (*self.https_ports.values(), resume_port):
                wait_port(port, proc=p)
        except BenchError as e:
            self.notes.append(f"nginx backend failed to start: {e}")
            self.http_port = None
            self.https_ports = {}
            self.resume_port = None

    def _tls_acceptors(self, crt: str, key: str) -> None:
        """Python TLS backends (stream, idle) serving REORIG_NAME's certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0  # like the nginx backend: no resumption
        self.stream_tls = _Acceptor("stream", ctx)
        self.stream_tls.start()
        self.idle_tls = _Acceptor("idle", ctx)
        self.idle_tls.start()

    def _relay_cert(self, ca: object) -> None:
        """An ECDSA P-256 leaf for RELAY_NAME, signed by the run's CA."""
        import trustme

        files = relay_tls_files(self.workdir)
        assert files.ca == self.ca_pem
        leaf = ca.issue_cert(RELAY_NAME, key_type=trustme.KeyType.ECDSA)  # type: ignore[attr-defined]
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        key = leaf.private_key_pem.bytes()
        for path, data in ((files.cert, chain), (files.key, key), (files.combined, chain + key)):
            with open(path, "wb") as f:
                f.write(data)
        os.chmod(files.key, 0o600)
        os.chmod(files.combined, 0o600)
        self.relay_tls = files

    def close(self) -> None:
        for p in self._procs:
            stop(p)
        for a in (self.integrity, self.idle, self.stream, self.stream_tls, self.idle_tls):
            if a is not None:
                a.close()
        if self.udp_echo is not None:
            self.udp_echo.close()
