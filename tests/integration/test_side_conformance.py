"""The conformance suite every side kind and pump path must pass (as trio's stream tests).

In process, on real loopback sockets: a `Server` runs in a thread and a test observer
(the core's observer interface) collects each connection's record. Each test runs for
every entry of `PATHS` x `SIDES`; a new side kind (TLS, WebSocket) joins the suite by
adding one entry to `SIDES` that builds its client/backend ends.

What each test checks: bytes arrive byte-exact both ways at once; half-close each way
(the other direction keeps flowing after an EOF); backpressure (a reader that does not
read stops the writer after a bounded amount, then every byte still arrives); a peer's
reset reaches the other peer as a reset (never as a clean end); the idle timeout
closes a silent connection (with a FIN) and spares one that trickles.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers.tlsend import TlsEnd
from snirelay.config.model import Addr, Config, Endpoint, NetworkConfig, Transport, Upstream
from snirelay.net.conn import Connection
from snirelay.net.loop import new_loop
from snirelay.net.pump import HAVE_SPLICE
from snirelay.server import Server

pytestmark = pytest.mark.integration

PATHS = ["splice", "copy"] if HAVE_SPLICE else ["copy"]
SIDES = ["raw", "tls", "ws", "wss"]
# (path, side) pairs: a TLS or WebSocket side is never spliced (its bytes are decoded
# in Python)
KINDS = [(p, s) for p in PATHS for s in SIDES if s == "raw" or p == "copy"]


class Collect:
    """A test observer: every closed connection's record (of the first endpoint: the
    one the test client talks to)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def closed(self, conn: Connection, record: dict[str, Any]) -> None:
        if record["listener"] != "endpoints[0]":
            return  # the ws kinds' second relay
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.records) >= count, timeout)
        assert ok, f"{len(self.records)} record(s) after {timeout}s, wanted {count}"
        return list(self.records)


class Pair:
    """A relay between a test client and a test backend; `accept()` gives the backend's end."""

    def __init__(self, path: str, side: str, idle: float = 0.0) -> None:
        """The ws kinds are two relays in one server, as a tunnel: endpoints[0] takes
        the test client's TCP and originates WebSocket (wss: over TLS) to endpoints[1],
        which accepts it and connects to the test backend; the test's observer and
        idle timeout are endpoints[0]'s. Both WebSocket sides, accepting and
        originating, carry every byte."""
        self.side = side
        self.backend = socket.create_server(("127.0.0.1", 0))
        self.backend.settimeout(10)
        net = replace(NetworkConfig(), tcp_idle_timeout=idle) if idle else NetworkConfig()
        listen = remote = None
        if side == "tls":  # terminated at the relay, re-originated to the backend
            self.tmp = tempfile.TemporaryDirectory(prefix="snirelay-conformance-")
            d = Path(self.tmp.name)
            ca = trustme.CA()
            ca.cert_pem.write_to_path(str(d / "ca.pem"))
            for name in ("relay.test", "backend.test"):
                leaf = ca.issue_cert(name)
                leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
                leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
            listen = Transport(
                raw="tls", tls=True, cert=str(d / "relay.test.crt"), key=str(d / "relay.test.key")
            )
            remote = Transport(raw="tls", tls=True, sni="backend.test", ca=str(d / "ca.pem"))
            self.client_ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
            self.backend_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.backend_ctx.load_cert_chain(d / "backend.test.crt", d / "backend.test.key")
        backend = Addr("127.0.0.1", self.backend.getsockname()[1])
        endpoints: tuple[Endpoint, ...]
        if side in ("ws", "wss"):
            endpoints = self._tunnel(backend, net, side == "wss")
        else:
            up = Upstream(
                remotes=(backend,), network=net, listen_transport=listen, remote_transport=remote
            )
            endpoints = (Endpoint(place="endpoints[0]", listen=Addr("127.0.0.1", 0), upstream=up),)
        config = Config(endpoints=endpoints)
        self.loop = new_loop()
        self.server = Server(config, self.loop)
        self.server.ctx.splice = path == "splice"
        self.seen = Collect()
        self.server.ctx.add(self.seen)
        self.server.bind()
        self.port = self.server.listeners[0].sock.getsockname()[1]
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "relay did not start"

    def _tunnel(self, backend: Addr, net: NetworkConfig, tls: bool) -> tuple[Endpoint, ...]:
        ws = "ws;host=tunnel.test;path=/t"
        t = {"raw": ws, "ws": True, "host": "tunnel.test", "path": "/t"}
        listen, remote = Transport(**t), Transport(**t)  # type: ignore[arg-type]
        if tls:
            self.tmp = tempfile.TemporaryDirectory(prefix="snirelay-conformance-")
            d = Path(self.tmp.name)
            ca = trustme.CA()
            ca.cert_pem.write_to_path(str(d / "ca.pem"))
            leaf = ca.issue_cert("tunnel.test")
            leaf.cert_chain_pems[0].write_to_path(str(d / "t.crt"))
            leaf.private_key_pem.write_to_path(str(d / "t.key"))
            listen = replace(listen, tls=True, cert=str(d / "t.crt"), key=str(d / "t.key"))
            remote = replace(remote, tls=True, sni="tunnel.test", ca=str(d / "ca.pem"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            inner = probe.getsockname()[1]  # endpoints[1]'s port, free a moment ago
        first = Upstream(remotes=(Addr("127.0.0.1", inner),), network=net, remote_transport=remote)
        second = Upstream(remotes=(backend,), listen_transport=listen)  # no idle timeout
        return (
            Endpoint(place="endpoints[0]", listen=Addr("127.0.0.1", 0), upstream=first),
            Endpoint(place="endpoints[1]", listen=Addr("127.0.0.1", inner), upstream=second),
        )

    def _run(self) -> None:
        self.loop.call_soon(self.ready.set)
        self.loop.run_until_complete(self.server.serve())

    def connect(self) -> tuple[Any, Any]:
        """The client's and the backend's ends (TlsEnd for the tls kind: the client's
        handshake runs beside the backend's, which the relay makes first)."""
        c = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if self.side != "tls":
            b, _ = self.backend.accept()
            b.settimeout(10)
            return c, b
        tc = TlsEnd(c, self.client_ctx, server_hostname="relay.test")
        hs = threading.Thread(target=tc.handshake, daemon=True)
        hs.start()
        raw, _ = self.backend.accept()
        raw.settimeout(10)
        tb = TlsEnd(raw, self.backend_ctx)
        tb.handshake()
        hs.join(10)
        assert not hs.is_alive(), "the client's handshake did not finish"
        return tc, tb

    def close(self) -> None:
        stopping = self.server.stopping
        if stopping is not None:
            self.loop.call_soon_threadsafe(stopping.set)
        self.thread.join(10)
        self.loop.close()
        self.backend.close()
        if self.side in ("tls", "wss"):
            self.tmp.cleanup()


@pytest.fixture(params=KINDS, ids=lambda ps: "-".join(ps))
def kind(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def pair(kind: tuple[str, str]) -> Iterator[Pair]:
    p = Pair(*kind)
    try:
        yield p
    finally:
        p.close()


def _pump_out(sock: Any, data: bytes, shut: bool = True) -> None:
    sock.sendall(data)
    if shut:
        sock.shutdown(socket.SHUT_WR)


def _drain(sock: Any) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    return bytes(out)


def test_byte_exact_both_ways_at_once(pair: Pair, kind: tuple[str, str]) -> None:
    up, down = os.urandom(16 << 20), os.urandom(16 << 20)
    c, b = pair.connect()
    got: dict[str, bytes] = {}
    threads = [
        threading.Thread(target=_pump_out, args=(c, up)),
        threading.Thread(target=_pump_out, args=(b, down)),
        threading.Thread(target=lambda: got.__setitem__("b", _drain(b))),
    ]
    for t in threads:
        t.start()
    got["c"] = _drain(c)
    for t in threads:
        t.join(30)
    c.close()
    b.close()
    assert hashlib.sha256(got["b"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["c"]).digest() == hashlib.sha256(down).digest()
    (rec,) = pair.seen.wait(1)
    assert rec["close"] == "eof" and rec["path"] == kind[0]
    assert rec["bytes_up"] == len(up) and rec["bytes_down"] == len(down)


@pytest.mark.parametrize("first", ["client", "backend"])
def test_half_close_each_way(pair: Pair, first: str) -> None:
    c, b = pair.connect()
    a, z = (c, b) if first == "client" else (b, c)
    one, two = os.urandom(3 << 20), os.urandom(2 << 20)
    sender = threading.Thread(target=_pump_out, args=(a, one))
    sender.start()
    assert _drain(z) == one  # the EOF arrived after every byte
    sender.join(10)
    _pump_out(z, two)  # the other direction still flows after the half-close
    assert _drain(a) == two
    c.close()
    b.close()
    (rec,) = pair.seen.wait(1)
    assert rec["close"] == "eof"


def test_slow_reader_is_backpressure(pair: Pair) -> None:
    """A client that reads nothing stops the backend's writes after a bounded amount
    (socket buffers, one pipe or buffer per direction): the relay does not buffer."""
    c, b = pair.connect()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    b.setblocking(False)
    stream = os.urandom(1 << 16) * 1024  # 64 MiB, more than any buffering on the way
    view = memoryview(stream)
    written = 0
    deadline = time.monotonic() + 10
    stalled_since: float | None = None
    while time.monotonic() < deadline:
        try:
            written += b.send(view[written : written + (1 << 16)])
            stalled_since = None
        except BlockingIOError:
            # stalled for a while: the relay has stopped taking bytes
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > 0.5:
                break
            threading.Event().wait(0.01)
    assert stalled_since is not None, f"the backend could write {written} bytes unhindered"
    assert written < 48 << 20, f"{written} bytes were taken in before the writer stalled"
    b.setblocking(True)
    b.shutdown(socket.SHUT_WR)
    got = _drain(c)  # and now every byte arrives
    assert len(got) == written and got == stream[:written]
    c.close()
    b.close()


@pytest.mark.parametrize("who", ["backend", "client"])
def test_a_reset_reaches_the_other_peer_as_a_reset(pair: Pair, who: str) -> None:
    c, b = pair.connect()
    resetter, other = (b, c) if who == "backend" else (c, b)
    resetter.sendall(b"x" * 100_000)
    got = 0
    while got < 100_000:
        got += len(other.recv(1 << 16))
    resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resetter.close()
    with pytest.raises(ConnectionResetError):
        while other.recv(1 << 16):
            pass
    other.close()
    (rec,) = pair.seen.wait(1)
    assert rec["close"] == "reset" and rec["phase"] == "pump"


@pytest.mark.parametrize("kind", KINDS, ids=lambda ps: "-".join(ps))
def test_idle_timeout_closes_silence_and_spares_a_trickle(kind: tuple[str, str]) -> None:
    p = Pair(*kind, idle=0.8)
    try:
        quiet_c, quiet_b = p.connect()
        busy_c, busy_b = p.connect()
        t0 = time.monotonic()
        ticker = threading.Event()
        # the busy connection moves a byte every 0.2 s for 2 s: never idle for 0.8 s
        while time.monotonic() - t0 < 2.0:
            busy_c.sendall(b".")
            assert busy_b.recv(1) == b"."
            ticker.wait(0.2)
        recs = p.seen.wait(1)
        assert [r["close"] for r in recs] == ["idle-timeout"]
        assert 0.8 <= recs[0]["duration"] <= 0.8 * 1.25 + 0.3, recs[0]["duration"]
        assert quiet_c.recv(1) == b""  # nothing was in flight: a clean end
        busy_c.sendall(b"!")
        assert busy_b.recv(1) == b"!"  # the trickling one is still up
        for s in (quiet_c, quiet_b, busy_c, busy_b):
            s.close()
    finally:
        p.close()
