"""Real servers for the integration tests: certificates, nginx and HAProxy on loopback.

How it works:

- `make_certs(dir)` builds a throw-away CA with trustme and one leaf certificate per name
  (subject CN = the name, SAN = the name), writing PEM files the servers and the clients
  (curl --cacert, openssl s_client -CAfile) read.
- `Nginx` renders a configuration whose every path (pid, logs, temp dirs) lives in one
  temporary directory, starts `nginx -g 'daemon off;'` as our own child, waits until every
  port it should listen on accepts a connection, and stops it by PID.
- `start_tls_backends(dir)` is what the `tls_backends` fixture uses: one nginx with an
  https server per name on its own loopback port, each answering
  `name=<name> sni=$ssl_server_name`, a default https server (`default sni=...`) and
  plaintext servers answering `http name=<name> host=$host`.
- `HAProxy` does the same for `haproxy -f CFG -db` (used for PROXY protocol peers).

Ports: each is taken from the kernel (bind port 0, read it back, close) just before the
server starts; a collision shows up as a start failure with the server's own log.

Resource handling: every process is started by us and stopped by PID (SIGTERM, then
SIGKILL after a deadline); temporary files live under the caller's directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from helpers.wait import poll

NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
BACKEND_NAMES = ("emby.example.com", "jellyfin.example.com")
DEFAULT_NAME = "default.example.com"


def pick_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (bind 0, read it back, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(
    ports: Iterable[int], proc: subprocess.Popen[bytes], timeout: float = 10
) -> None:
    """Wait until every port accepts a TCP connection on 127.0.0.1, or raise RuntimeError."""
    pending = set(ports)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        for port in sorted(pending):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pending.discard(port)
            except OSError:
                pass
        return not pending

    if not poll(listening, timeout):
        raise RuntimeError(f"ports {sorted(pending)} not listening after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM our child by PID, SIGKILL it if it outlives the deadline, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    name: str
    cert: Path  # leaf certificate followed by nothing else (the CA is a single root)
    key: Path


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path  # CA certificate (PEM), for --cacert / -CAfile / ssl.create_default_context
    leaves: dict[str, Leaf] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Leaf:
        return self.leaves[name]


def make_certs(directory: Path, names: Iterable[str]) -> Certs:
    """A fresh CA and one leaf per name, written as PEM files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="snirelay test CA")
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaves: dict[str, Leaf] = {}
    for name in names:
        leaf = ca.issue_cert(name, common_name=name)
        cert = directory / f"{name}.crt"
        key = directory / f"{name}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        leaves[name] = Leaf(name, cert, key)
    return Certs(directory, ca_path, leaves)


# -- nginx ---------------------------------------------------------------------------------


def nginx_available() -> str | None:
    """None when nginx can run here, else the reason it cannot."""
    if shutil.which("nginx") is None:
        return "nginx not installed (Debian: nginx-light; `make system-deps`)"
    return None


class Nginx:
    """One nginx process with `http_body` (and optional `stream_body`) as its config.

    `ports` are the loopback ports the config listens on; `start()` returns when all accept.
    """

    def __init__(
        self, directory: Path, http_body: str, ports: Iterable[int], stream_body: str = ""
    ) -> None:
        self.dir = directory
        self.ports = tuple(ports)
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("logs", "tmp"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        tmp = directory / "tmp"
        temps = "\n".join(
            f"    {kind}_temp_path {tmp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        load = ""
        if stream_body:
            load = f"load_module {NGINX_STREAM_MODULE};\n"
        stream = f"stream {{\n{stream_body}\n}}\n" if stream_body else ""
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf = directory / "nginx.conf"
        self.conf.write_text(
            f"{load}{user}worker_processes 1;\n"
            f"pid {directory / 'nginx.pid'};\n"
            f"error_log {directory / 'logs' / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {directory / 'logs' / 'access.log'};\n"
            f"{temps}\n"
            "    default_type text/plain;\n"
            f"{http_body}\n"
            "}\n"
            f"{stream}"
        )

    @property
    def error_log(self) -> str:
        path = self.dir / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 10) -> None:
        with open(self.dir / "logs" / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            wait_listening(self.ports, self.proc, timeout)
        except RuntimeError as exc:
            self.stop()
            stderr = (self.dir / "logs" / "stderr.log").read_text(errors="replace")
            raise RuntimeError(f"nginx: {exc}\n{stderr}\n{self.error_log}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class TlsBackends:
    """What `tls_backends` yields: the running nginx, its ports and the certificates."""

    certs: Certs
    https: dict[str, int]  # name -> port of the https server for that name
    default_port: int  # https server with the default.example.com certificate
    http: dict[
        str, int
    ]  # name -> port of a plaintext server answering `http name=<name> host=$host`
    nginx: Nginx

    @property
    def ca(self) -> Path:
        return self.certs.ca


def _https_server(port: int, leaf: Leaf, body: str) -> str:
    return (
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl;\n"
        f"        server_name {leaf.name};\n"
        f"        ssl_certificate {leaf.cert};\n"
        f"        ssl_certificate_key {leaf.key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        f'        location / {{ return 200 "{body}\\n"; }}\n'
        "    }\n"
    )


def start_tls_backends(directory: Path) -> TlsBackends:
    """Certificates plus one nginx serving the https and http backends (see module doc)."""
    certs = make_certs(directory / "certs", (*BACKEND_NAMES, DEFAULT_NAME))
    https = {name: pick_port() for name in BACKEND_NAMES}
    default_port = pick_port()
    http = {name: pick_port() for name in BACKEND_NAMES}
    blocks = [
        _https_server(port, certs[name], f"name={name} sni=$ssl_server_name")
        for name, port in https.items()
    ]
    blocks.append(_https_server(default_port, certs[DEFAULT_NAME], "default sni=$ssl_server_name"))
    blocks += [
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        f'        location / {{ return 200 "http name={name} host=$host\\n"; }}\n'
        "    }\n"
        for name, port in http.items()
    ]
    nginx = Nginx(
        directory / "nginx", "".join(blocks), (*https.values(), default_port, *http.values())
    )
    nginx.start()
    return TlsBackends(certs, https, default_port, http, nginx)


# -- HAProxy -------------------------------------------------------------------------------


def haproxy_available() -> str | None:
    if shutil.which("haproxy") is None:
        return "haproxy not installed (Debian: haproxy; `make system-deps`)"
    return None


class HAProxy:
    """`haproxy -f CFG -db` as our child; `body` holds frontends/backends/listens."""

    def __init__(self, directory: Path, body: str, ports: Iterable[int]) -> None:
        self.dir = directory
        self.ports = tuple(ports)
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.cfg = directory / "haproxy.cfg"
        self.cfg.write_text(
            "global\n"
            "    maxconn 512\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            f"{body}\n"
        )
        self.log_path = directory / "haproxy.log"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 10) -> None:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["haproxy", "-f", str(self.cfg), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_listening(self.ports, self.proc, timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"haproxy: {exc}\n{self.log}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> HAProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
