"""Reload without dropping anything, certificates renewed in place, systemd's notify.

- A 256 MiB transfer each way (sha256 both ways, half-close) through each of forward,
  passthrough and terminate keeps going while the config is reloaded three times (POST
  /reload, SIGHUP, POST /reload): an endpoint added, then removed while a route of
  another one goes to another backend, then back; each reload's effect is visible to new
  connections at once, and the transfer finishes intact.
- An invalid new config is refused with its error (in the API's answer and the log),
  and the running one stays.
- A certificate file replaced on disk (written aside and renamed, as ACME clients do):
  new handshakes get the new certificate within a few seconds, a connection opened
  before goes on; a broken file is refused with a log line and the last good one stays.
- `$NOTIFY_SOCKET`: READY=1 once serving, RELOADING=1 then READY=1 around a reload,
  STOPPING=1 at the stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers.peers import EchoServer, Hold, StreamServer, connect, duplex, recv_all
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until
from integration.test_tls import _drive, _expected, relay_cert

pytestmark = pytest.mark.integration

SIZE = 256 << 20


def post_reload(api: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{api}/reload", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        result = json.loads(err.read())
    return result


def banner(port: int) -> bytes:
    """The banner of the echo server a new connection to `port` reaches (an HTTP request
    for pick.example.com, which E2's route takes)."""
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: pick.example.com\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)[:1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class Backend:
    """One connection's backend for the TLS modes: reads to EOF (sha256; paused at
    16 MiB until `go` is set), then sends SIZE bytes; over TLS with `ctx`."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.go = threading.Event()
        self.paused = threading.Event()
        self.up_sha = ""
        self.error: BaseException | None = None
        self.block = os.urandom(1 << 20)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.sock.accept()
            conn = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
            with conn:
                conn.settimeout(60)
                h, got = hashlib.sha256(), 0
                while True:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    h.update(chunk)
                    got += len(chunk)
                    if got >= 16 << 20 and not self.go.is_set():
                        self.paused.set()
                        if not self.go.wait(60):
                            raise TimeoutError("not released")
                self.up_sha = h.hexdigest()
                for _ in range(SIZE // len(self.block)):
                    conn.sendall(self.block)
                if isinstance(conn, ssl.SSLSocket):
                    conn.unwrap()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
        finally:
            self.sock.close()


def config(mode: str, ports: dict[str, int], step: int, backend: int, tls: tuple[Path, ...]) -> str:
    """The relay's config at `step` (0: start; 1: E3 added; 2: E3 removed, a route of E2
    sent elsewhere; 3: that route back, E1 changed)."""
    ca, cert, key = tls
    e1 = f'[[endpoints]]\nlisten = "127.0.0.1:{ports["e1"]}"\n'
    if step == 3:
        e1 += "network = { tcp_idle_timeout = 600 }\n"
    if mode == "passthrough":
        e1 += (
            'remote = "127.0.0.1:9"\n'
            f'  [[endpoints.routes]]\n  server_names = ["relay.example.com"]\n'
            f'  remote = "127.0.0.1:{backend}"\n'
        )
    else:
        e1 += f'remote = "127.0.0.1:{backend}"\n'
        if mode == "terminate":
            e1 += f'listen_transport = "tls;cert={cert};key={key}"\n'
    route_to = ports["b"] if step == 2 else ports["a"]  # the route that changes
    e2 = (
        f'[[endpoints]]\nlisten = "127.0.0.1:{ports["e2"]}"\nremote = "127.0.0.1:{ports["a"]}"\n'
        f'  [[endpoints.routes]]\n  server_names = ["pick.example.com"]\n'
        f'  remote = "127.0.0.1:{route_to}"\n'
    )
    e3 = f'[[endpoints]]\nlisten = "127.0.0.1:{ports["e3"]}"\nremote = "127.0.0.1:{ports["b"]}"\n'
    api = f'[api]\nlisten = "127.0.0.1:{ports["api"]}"\n'
    return api + e2 + (e3 if step == 1 else "") + e1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["forward", "passthrough", "terminate"])
def test_a_transfer_goes_on_across_three_reloads(tmp_path: Path, mode: str) -> None:
    tls = relay_cert(tmp_path)
    ca, cert, key = tls
    with EchoServer(banner=b"A") as a, EchoServer(banner=b"B") as b:
        ports = {k: free_port() for k in ("e1", "e2", "e3", "api")}
        ports["a"], ports["b"] = int(a.addr.rsplit(":", 1)[1]), int(b.addr.rsplit(":", 1)[1])
        stream: StreamServer | None = None
        backend: Backend | None = None
        hold = Hold(16 << 20, timeout=60)
        if mode == "forward":
            stream = StreamServer(SIZE, "concurrent", hold=hold)
            bport = int(stream.addr.rsplit(":", 1)[1])
        else:
            bctx = None
            if mode == "passthrough":
                bctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                bctx.load_cert_chain(cert, key)
            backend = Backend(bctx)
            bport = backend.port
        relay = RelayProcess(config=config(mode, ports, 0, bport, tls), tmp_path=tmp_path)
        assert relay.config_path is not None
        with relay:
            relay.start(wait_listen=3)
            result: dict[str, Any] = {}
            client = threading.Thread(
                target=_client, args=(mode, ports["e1"], ca, backend, result), daemon=True
            )
            client.start()
            # the transfer is running (and held mid-way) while the config changes
            if stream is not None:
                assert hold.reached.wait(30)
            else:
                assert backend is not None and backend.paused.wait(30)
            assert banner(ports["e2"]) == b"A"

            relay.config_path.write_text(config(mode, ports, 1, bport, tls))
            answer = post_reload(ports["api"])
            assert answer["ok"] and answer["added"] == [f"127.0.0.1:{ports['e3']}"], answer
            assert banner(ports["e3"]) == b"B"

            relay.config_path.write_text(config(mode, ports, 2, bport, tls))
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("reloaded: ", count=2)
            assert refused(ports["e3"]) and banner(ports["e2"]) == b"B"

            relay.config_path.write_text(config(mode, ports, 3, bport, tls))
            answer = post_reload(ports["api"])
            assert answer["ok"] and not answer["added"] and not answer["removed"], answer
            assert banner(ports["e2"]) == b"A"

            # an invalid config changes nothing
            relay.config_path.write_text(config(mode, ports, 3, bport, tls) + "bogus = 1\n")
            answer = post_reload(ports["api"])
            assert not answer["ok"] and "bogus" in answer["error"], answer
            assert banner(ports["e2"]) == b"A"

            hold.release()
            if backend is not None:
                backend.go.set()
            client.join(120)
            assert not client.is_alive()
            assert result.get("error") is None, result
            if stream is not None:
                [srv_res] = stream.wait_results(1, timeout=60)
                res = result["res"]
                assert srv_res.error is None and res.error is None, (srv_res, res)
                assert srv_res.received == res.sent == SIZE
                assert srv_res.received_sha == res.sent_sha
                assert res.received == SIZE and res.received_sha == srv_res.sent_sha
                stream.close()
            else:
                assert backend is not None
                backend.thread.join(60)
                assert backend.error is None, backend.error
                assert backend.up_sha == _expected(result["up_block"], SIZE)
                assert result["down_sha"] == _expected(backend.block, SIZE)
            assert relay.running, relay.log
            # (in passthrough the relay counts TLS records: more than the payload)
            records = [r for r in relay.records() if r["bytes_up"] >= SIZE]
            assert len(records) == 1 and records[0]["close"] == "eof", relay.records()
            assert records[0]["bytes_down"] >= SIZE


def _client(mode: str, port: int, ca: Path, backend: Backend | None, out: dict[str, Any]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
            if mode == "forward":
                out["res"] = duplex(raw, SIZE, "concurrent")
                return
            ctx = ssl.create_default_context(cafile=str(ca))
            inc, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            c = ctx.wrap_bio(inc, outgoing, server_hostname="relay.example.com")
            block = os.urandom(1 << 20)
            out["up_block"] = block
            down = hashlib.sha256()
            _drive(raw, c, inc, outgoing, block, SIZE, down)
            out["down_sha"] = down.hexdigest()
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out["error"] = exc


# ---------------------------------------------------------------- certificates


def served_der(port: int, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="relay.example.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def install(leaf: trustme.LeafCert, cert: Path, key: Path) -> bytes:
    """Write the leaf's files aside and rename them into place; its DER."""
    for path, pem in ((key, leaf.private_key_pem.bytes()),
                      (cert, b"".join(p.bytes() for p in leaf.cert_chain_pems))):  # fmt: skip
        aside = path.with_suffix(".new")
        aside.write_bytes(pem)
        os.rename(aside, path)
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_a_renewed_certificate_reaches_new_handshakes(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_path, cert, key = tmp_path / "ca.pem", tmp_path / "relay.crt", tmp_path / "relay.key"
    ca.cert_pem.write_to_path(str(ca_path))
    first = install(ca.issue_cert("relay.example.com"), cert, key)
    with EchoServer() as srv:
        text = (f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{srv.addr}"\n'
                f'listen_transport = "tls;cert={cert};key={key}"\n')  # fmt: skip
        with RelayProcess(config=text, tmp_path=tmp_path) as relay:
            relay.start()
            port = relay.port()
            assert served_der(port, ca_path) == first
            ctx = ssl.create_default_context(cafile=str(ca_path))
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname="relay.example.com") as running:
                assert running.getpeercert(binary_form=True) == first
                renewed = install(ca.issue_cert("relay.example.com"), cert, key)
                assert renewed != first
                wait_until(lambda: served_der(port, ca_path) == renewed, 15, relay.log)
                running.sendall(b"still here")  # the connection opened before goes on
                assert running.recv(64) == b"still here"
                before = relay.log.count("cannot be used")
                cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
                relay.wait_log("cannot be used", count=before + 1, timeout=15)
                assert served_der(port, ca_path) == renewed  # the last good one stays
                assert relay.running


# ---------------------------------------------------------------- systemd notify


def test_systemd_hears_ready_reloading_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(15)
    with sock, EchoServer() as srv:
        relay = RelayProcess(["-l", "127.0.0.1:0", "-r", srv.addr], tmp_path=tmp_path,
                             env={"NOTIFY_SOCKET": str(path)})  # fmt: skip
        with relay:
            relay.start()
            assert sock.recv(4096) == b"READY=1"
            os.kill(relay.pid, signal.SIGHUP)
            reloading = sock.recv(4096).decode()
            assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC="), reloading
            assert sock.recv(4096) == b"READY=1"
            os.kill(relay.pid, signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert relay.wait(timeout=15) == 0


# ---------------------------------------------------------------- with workers


def test_workers_keep_a_port_0_endpoint_across_a_reload(tmp_path: Path) -> None:
    api = free_port()
    with EchoServer() as srv:
        text = (f'workers = 2\n[api]\nlisten = "127.0.0.1:{api}"\n'
                f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{srv.addr}"\n')  # fmt: skip
        with RelayProcess(config=text, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=3)
            port = relay.port("endpoints[0]")
            answer = post_reload(api)
            assert answer["ok"] and len(answer["workers"]) == 2, answer
            for r in answer["workers"].values():
                assert r["switched"] == [f"127.0.0.1:{port}"] and not r["added"], answer
            ports = {p for _, p, where in relay.listening() if where == "endpoints[0]"}
            assert ports == {port}, relay.log
            for i in range(10):
                with connect(port) as s:
                    s.sendall(b"%d" % i)
                    s.shutdown(socket.SHUT_WR)
                    assert recv_all(s) == b"%d" % i


def test_a_config_the_workers_refuse_is_not_kept_for_restarts(tmp_path: Path) -> None:
    from helpers.procs import children_of

    with EchoServer() as srv:
        port = free_port()
        text = f'workers = 2\n[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n'
        with RelayProcess(config=text, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=2)
            assert relay.config_path is not None
            relay.config_path.write_text(
                text + 'listen_transport = "tls;cert=/nonexistent.pem;key=/nonexistent.key"\n'
            )
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("/nonexistent.pem", count=3)  # the supervisor and both workers
            victim = children_of(relay.pid)[0]
            os.kill(victim, signal.SIGKILL)
            relay.wait_log("in its place")  # restarted, with the config that runs
            relay.wait_log("listening on ", count=3)
            assert "giving up" not in relay.log and relay.running, relay.log
            with connect(port) as s:
                s.sendall(b"plain tcp still")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"plain tcp still"


def test_a_reload_adds_a_second_port_zero_endpoint(tmp_path: Path) -> None:
    """Two endpoints on 127.0.0.1:0 are two listeners: a reload that adds the second
    starts it (it was once taken for the running one, and switched it instead)."""
    with EchoServer(banner=b"a") as a, EchoServer(banner=b"b") as b:
        one = f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:{a.port}"\n'
        two = one + f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:{b.port}"\n'
        with RelayProcess(config=one, tmp_path=tmp_path) as relay:
            relay.start()
            first = relay.port("endpoints[0]")
            assert relay.config_path is not None
            relay.config_path.write_text(two)
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("1 endpoint(s) switched, 1 added")
            wait_until(lambda: len(relay.listening()) == 2, timeout=10)
            assert relay.port("endpoints[0]") == first
            for place, want in (("endpoints[0]", b"a"), ("endpoints[1]", b"b")):
                with connect(relay.port(place)) as s:
                    s.shutdown(socket.SHUT_WR)
                    assert recv_all(s)[:1] == want


def test_a_reload_with_a_log_file_it_cannot_open_changes_nothing(tmp_path: Path) -> None:
    with EchoServer(banner=b"a") as a:
        one = f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:{a.port}"\n'
        head = '[log]\nlevel = "info"\noutput = "stderr"\n'
        with RelayProcess(config=head + one, tmp_path=tmp_path, log_flags=False) as relay:
            relay.start()
            assert relay.config_path is not None
            bad = f'[log]\nlevel = "info"\noutput = "{tmp_path}/no/such/dir/x.log"\n'
            bad += one + one.replace("127.0.0.1:0", f"127.0.0.1:{free_port()}")
            relay.config_path.write_text(bad)
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("reload refused: log.output: cannot open")
            assert len(relay.listening()) == 1  # the second endpoint was not started
