"""`snirelay demo`: the relay on a built-in setup that needs no network.

How it works:

1. A throw-away CA and leaf certificates for emby.example.com, jellyfin.example.com and
   default.example.com are made with `cryptography` in a temporary directory.
2. Local backends start in a background thread with their own asyncio loop: a plain TCP
   echo server, and one TLS server per name answering any request with a tiny HTTP
   response that names itself and the SNI it received (`name=... sni=...`).
3. A relay config is written next to the certificates: endpoints[0] forwards to the echo
   server (realm's plain forwarding); endpoints[1] routes on SNI to the two named TLS
   backends with a `no_sni` route to the default one and no `remote`, so an unknown name
   is closed and the log says why.
4. What to try is printed, then the relay runs in the foreground (it owns the main
   thread and its event loop) until Ctrl-C, or for `--duration S` seconds.

Ports: `--ports BASE` uses BASE (echo backend), BASE+1 (forward endpoint), BASE+2 (SNI
endpoint), BASE+3..BASE+5 (TLS backends), BASE+6 (the rewrite endpoint) and BASE+7,
BASE+8 (the WebSocket tunnel's entry and exit: plain TCP in, realm's `ws` transport
between them, plain TCP out to the echo server) and BASE+9 (the admin API); without it
every port is chosen by the kernel.

Resource handling: the backend thread is stopped and joined, and the temporary directory
removed, however the relay returns (Ctrl-C, duration elapsed, error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAMES = ("emby.example.com", "jellyfin.example.com")
DEFAULT_NAME = "default.example.com"
RELAY_NAME = "relay.example.com"  # the relay's own certificate: this name and 127.0.0.1
REQUEST_TIMEOUT = 5.0


# -- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    leaves: dict[str, tuple[Path, Path]]  # name -> (cert, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sans(name: str) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if name == RELAY_NAME:  # clients reach the relay by IP: its certificate says so
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return sans


def make_certs(directory: Path, names: Sequence[str]) -> Certs:
    """A CA (`ca.pem`) and per name `NAME.crt` / `NAME.key`, valid for 90 days
    (they live as long as the demo does; a shorter life would make `check` warn)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=90)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name("snirelay demo CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    leaves: dict[str, tuple[Path, Path]] = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(_sans(name)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        leaves[name] = (cert_path, key_path)
    return Certs(ca_path, leaves)


# -- backends ------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo every byte back; an HTTP request (e.g. from curl) gets its head back as a 200."""
    try:
        first = await reader.read(65536)
        if first.split(b" ", 1)[0] in (b"GET", b"HEAD", b"POST", b"PUT"):
            head = first.split(b"\r\n\r\n", 1)[0] + b"\r\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(head) + 19, b"echo backend got:\r\n" + head)
            )
            await writer.drain()
            return
        data = first
        while data:
            writer.write(data)
            await writer.drain()
            data = await reader.read(65536)
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass
    finally:
        writer.close()


class _NamedTls:
    """A TLS server that answers one HTTP request with its name and the SNI it saw."""

    def __init__(self, name: str, cert: Path, key: Path) -> None:
        self.name = name
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.context.set_alpn_protocols(["http/1.1"])
        self.seen: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
        self.context.sni_callback = self._on_sni

    def _on_sni(self, conn: object, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name is not None:
            self.seen[conn] = server_name

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sni = self.seen.get(writer.get_extra_info("ssl_object"), "")
            with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            body = f"name={self.name} sni={sni}\n".encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


class Backends:
    """The demo backends on a private event loop in a daemon thread.

    `start()` returns once every server listens; `ports` maps "echo" and each TLS name to
    its port. `stop()` closes the servers, stops the loop and joins the thread.
    """

    def __init__(self, certs: Certs, base_port: int = 0) -> None:
        self.certs = certs
        self.base_port = base_port
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="demo-backends", daemon=True)
        self._servers: list[asyncio.Server] = []

    def _port(self, index: int) -> int:
        return self.base_port + index if self.base_port else 0

    async def _serve(self) -> None:
        echo = await asyncio.start_server(_echo, "127.0.0.1", self._port(0))
        self._servers.append(echo)
        self.ports["echo"] = echo.sockets[0].getsockname()[1]
        served = [(n, pair) for n, pair in self.certs.leaves.items() if n != RELAY_NAME]
        for i, (name, (cert, key)) in enumerate(served):
            tls = _NamedTls(name, cert, key)
            server = await asyncio.start_server(
                tls.handle, "127.0.0.1", self._port(3 + i), ssl=tls.context
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() in the main thread
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            self._loop.run_until_complete(self._cancel_rest())
            self._loop.close()

    async def _cancel_rest(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self, timeout: float = 10) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("demo backends did not start in time")
        if self._error is not None:
            raise RuntimeError(f"demo backends: {self._error}") from self._error

    def stop(self, timeout: float = 5) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


# -- relay config and instructions ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    """`count` distinct ports the kernel gave as free just now."""
    out: list[int] = []
    while len(out) < count:
        port = _free_port()
        if port not in out:
            out.append(port)
    return out


def relay_config(
    forward_port: int,
    sni_port: int,
    ports: dict[str, int],
    rewrite_port: int | None = None,
    certs: Certs | None = None,
    tunnel: tuple[int, int] | None = None,
    api_port: int | None = None,
) -> str:
    api = f'[api]\nlisten = "127.0.0.1:{api_port}"\n\n' if api_port else ""
    routes = "".join(
        f'  [[endpoints.routes]]\n  server_names = ["{name}"]\n'
        f'  remote = "127.0.0.1:{ports[name]}"\n\n'
        for name in NAMES
    )
    return (
        '[log]\nlevel = "info"\noutput = "stderr"\n\n'
        + api
        + f'[[endpoints]]\nlisten = "127.0.0.1:{forward_port}"\n'
        f'remote = "127.0.0.1:{ports["echo"]}"\n\n'
        "# SNI routing; no `remote`: a name that matches no route is closed, with a hint logged\n"
        f'[[endpoints]]\nlisten = "127.0.0.1:{sni_port}"\n\n'
        f"{routes}"
        f'  [[endpoints.routes]]\n  when = "no_sni"\n'
        f'  remote = "127.0.0.1:{ports[DEFAULT_NAME]}"\n'
        + (_rewrite(rewrite_port, ports, certs) if rewrite_port and certs else "")
        + (_tunnel(*tunnel, ports["echo"]) if tunnel else "")
    )


TUNNEL_WS = "ws;host=tunnel.example.com;path=/tunnel"


def _tunnel(entry: int, exit_: int, echo: int) -> str:
    return (
        "\n# A WebSocket tunnel (realm's ws transport): TCP in at the entry, WebSocket binary\n"
        "# frames between entry and exit (what a CDN or an HTTP proxy would carry), TCP out\n"
        f'[[endpoints]]\nlisten = "127.0.0.1:{entry}"\nremote = "127.0.0.1:{exit_}"\n'
        f'remote_transport = "{TUNNEL_WS}"\n\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{exit_}"\nremote = "127.0.0.1:{echo}"\n'
        f'listen_transport = "{TUNNEL_WS}"\n'
    )


def _rewrite(port: int, ports: dict[str, int], certs: Certs) -> str:
    cert, key = certs.leaves[RELAY_NAME]
    emby = NAMES[0]
    return (
        "\n# The SNI rewrite: clients reach the relay by IP (or as relay.example.com); the\n"
        "# relay answers with its own certificate and asks the backend for its name\n"
        f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\n'
        f'remote = "127.0.0.1:{ports[emby]}"\n'
        f'listen_transport = "tls;cert={cert};key={key}"\n'
        f'remote_transport = "tls;sni={emby};ca={certs.ca}"\n'
    )


def instructions(
    forward_port: int,
    sni_port: int,
    ca: Path,
    config: Path,
    rewrite_port: int,
    tunnel: tuple[int, int] | None = None,
    api_port: int | None = None,
) -> str:
    emby, jellyfin = NAMES
    return f"""\
snirelay demo: forward=127.0.0.1:{forward_port} sni=127.0.0.1:{sni_port} ca={ca} \
rewrite=127.0.0.1:{rewrite_port}
config: {config}

The SNI rewrite (127.0.0.1:{rewrite_port}): reach the relay by IP, the backend still gets
its own name ({emby}) as SNI, verified:
  curl --cacert {ca} https://127.0.0.1:{rewrite_port}/

Plain forwarding (127.0.0.1:{forward_port} -> a local echo server):
  curl http://127.0.0.1:{forward_port}/      (any TCP client works: the backend echoes)

SNI routing on one port (127.0.0.1:{sni_port}), TLS passed through untouched:
  curl --resolve {emby}:{sni_port}:127.0.0.1 --cacert {ca} https://{emby}:{sni_port}/
  curl --resolve {jellyfin}:{sni_port}:127.0.0.1 --cacert {ca} https://{jellyfin}:{sni_port}/
  openssl s_client -connect 127.0.0.1:{sni_port} -servername {jellyfin} -CAfile {ca} </dev/null
No SNI (connecting by IP) goes to the no_sni route; an unknown name is closed with a hint:
  curl -k https://127.0.0.1:{sni_port}/
  openssl s_client -connect 127.0.0.1:{sni_port} -servername other.example.net </dev/null

{_tunnel_lines(tunnel)}{_api_lines(api_port, config)}Ask the doctor what a client with the name, and one by IP, gets (and why); review
the config in plain words:
  snirelay check {emby}:{sni_port} --connect 127.0.0.1 --ca {ca}
  snirelay explain -c {config}

Running; Ctrl-C to stop.
"""


def _api_lines(port: int | None, config: Path) -> str:
    if port is None:
        return ""
    return f"""The admin API (127.0.0.1:{port}): the status page at http://127.0.0.1:{port}/ and
  curl -s http://127.0.0.1:{port}/metrics
  curl -s http://127.0.0.1:{port}/handshakes      (the SNI each client sent, and what went upstream)
  curl -s -X POST http://127.0.0.1:{port}/reload   (reads {config} again; so does SIGHUP)

"""


def _tunnel_lines(tunnel: tuple[int, int] | None) -> str:
    if tunnel is None:
        return ""
    entry, exit_ = tunnel
    return f"""A WebSocket tunnel (127.0.0.1:{entry} -> ws frames -> 127.0.0.1:{exit_} -> the echo server):
  curl http://127.0.0.1:{entry}/      (the echo comes back through both relays)

"""


def _check_once(
    port: int, what: str, attempt: Callable[[socket.socket], str], timeout: float
) -> None:
    """Once the relay listens on `port`, run `attempt` on one connection to it and print
    its line (bounded: gives up after `timeout` seconds)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
                line = attempt(c)
        except ConnectionRefusedError:
            time.sleep(0.05)  # not listening yet
            continue
        except OSError as exc:  # ssl.SSLError included
            print(f"{what} check failed: {exc}", flush=True)
            return
        print(f"{what} check: {line}", flush=True)
        return
    print(f"{what} check: the relay did not listen in time", flush=True)


def _read_to_eof(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def show_tunnel(port: int, timeout: float = 10) -> None:
    """64 KiB through the WebSocket tunnel and back, with a half-close."""
    data = os.urandom(64 * 1024)

    def attempt(c: socket.socket) -> str:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        back = _read_to_eof(c)
        verdict = "every byte back" if back == data else f"{len(back)} of {len(data)} bytes back"
        return f"64 KiB in at 127.0.0.1:{port}, through ws, echoed: {verdict}"

    _check_once(port, "tunnel", attempt, timeout)


def show_rewrite(port: int, ca: Path, timeout: float = 10) -> None:
    """One request to the rewrite endpoint by IP, printed side by side with what the
    backend saw."""
    ctx = ssl.create_default_context(cafile=str(ca))

    def attempt(raw: socket.socket) -> str:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = _read_to_eof(tls)
        seen = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
        return f"client -> https://127.0.0.1:{port}/ (by IP, no SNI)  |  backend answered: {seen}"

    _check_once(port, "rewrite", attempt, timeout)


def show_doctor(port: int, ca: Path, timeout: float = 10) -> None:
    """`snirelay check` on the SNI port, as a user would run it, summed up in one line."""
    import time

    from snirelay.diagnose import check
    from snirelay.diagnose.findings import Target, findings

    name = NAMES[0]
    target = Target(name, port, name, connect="127.0.0.1", ca=str(ca))
    deadline = time.monotonic() + timeout
    while True:  # until the relay listens: a refused probe is a finding, not an exception
        probes = check.run(target, (), 5.0)
        if probes[0].outcome != "connect-refused" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    found = findings(target, probes, datetime.datetime.now(datetime.UTC))
    said = "; ".join(f"{f.severity} [{f.code}]" for f in found) or "no problems found"
    print(f"doctor check: {name}:{port} -> {said} (the check above shows why)", flush=True)


def _run_relay(config_path: Path) -> int:
    """Load the written config and run the relay; expected failures become one line."""
    from snirelay.config.load import load_config
    from snirelay.config.model import ConfigError
    from snirelay.server import StartupError, run

    try:
        return run(load_config(str(config_path)))
    except ConfigError as exc:
        print(f"snirelay demo: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"snirelay demo: {exc}", file=sys.stderr)
        return exc.exit_code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="snirelay demo", description="Run the relay in front of local demo backends."
    )
    parser.add_argument(
        "--ports",
        type=int,
        default=0,
        metavar="BASE",
        help="use ports BASE..BASE+9 (default: ports chosen by the system)",
    )
    parser.add_argument(
        "--duration", type=float, default=0, metavar="S", help="stop after S seconds"
    )
    args = parser.parse_args(argv)
    if args.ports and not 1 <= args.ports <= 65526:
        parser.error("--ports: BASE must be between 1 and 65526")

    with tempfile.TemporaryDirectory(prefix="snirelay-demo-") as tmp:
        directory = Path(tmp)
        certs = make_certs(directory, (*NAMES, DEFAULT_NAME, RELAY_NAME))
        backends = Backends(certs, args.ports)
        try:
            backends.start()
        except RuntimeError as exc:
            print(f"snirelay demo: {exc}", file=sys.stderr)
            return 3
        timer: threading.Timer | None = None
        try:
            # the relay's ports: forward, SNI, rewrite, the tunnel's entry and exit, the API
            base = args.ports
            ports = [base + i for i in (1, 2, 6, 7, 8, 9)] if base else _free_ports(6)
            forward_port, sni_port, rewrite_port = ports[:3]
            tunnel = (ports[3], ports[4])
            api_port = ports[5]
            config_path = directory / "relay.toml"
            config_path.write_text(
                relay_config(
                    forward_port, sni_port, backends.ports, rewrite_port, certs, tunnel, api_port
                )
            )
            text = instructions(
                forward_port, sni_port, certs.ca, config_path, rewrite_port, tunnel, api_port
            )
            print(text, flush=True)
            for check, check_args in (
                (show_rewrite, (rewrite_port, certs.ca)),
                (show_tunnel, (tunnel[0],)),
                (show_doctor, (sni_port, certs.ca)),
            ):
                threading.Thread(target=check, args=check_args, daemon=True).start()
            if args.duration > 0:
                # SIGINT, as Ctrl-C would: the relay drains and returns.
                timer = threading.Timer(args.duration, os.kill, (os.getpid(), signal.SIGINT))
                timer.daemon = True
                timer.start()
            try:
                return _run_relay(config_path)
            except KeyboardInterrupt:
                return 0
        finally:
            if timer is not None:
                timer.cancel()
            backends.stop()
