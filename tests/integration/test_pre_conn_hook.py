"""realm's pre-connect hook (`-j PATH` / `pre_conn_hook`) through the real relay.

The hook is built with gcc from helpers.hooklib's source: it reads 4 bytes and answers
by the first ('A' -> remote, 'B' -> extra_remotes[0], 'C' -> extra_remotes[1], 'M' ->
max_remote_idx, 'X' -> refuse, 'Z' -> 99, out of range). The backends greet with their
port and echo, so the client learns where it went without trusting the relay's log,
and that every byte it sent (the 4 the hook peeked at included) arrived. The waits
are on the records, with deadlines; the timeout case measures the sniff deadline
rather than sleeping through it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from helpers.hooklib import build_hook
from helpers.peers import recv_all
from helpers.ports import PortEchoes, port_echoes
from helpers.relay import RelayProcess, run_relay

pytestmark = pytest.mark.integration

JSON = ["--log-format", "json"]


@pytest.fixture
def echoes() -> Iterator[PortEchoes]:
    with port_echoes(3) as srv:
        yield srv


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    return build_hook(tmp_path)


def config(ports: list[int], top: str = "", lines: str = "") -> str:
    """One endpoint: remote = ports[0], extra_remotes = the rest; `top`: top-level
    keys, `lines`: more of the endpoint's keys; sniff_timeout 0.5 s."""
    extras = ", ".join(f'"127.0.0.1:{p}"' for p in ports[1:])
    return f"""{top}
[network]
sniff_timeout = 0.5

[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{ports[0]}"
extra_remotes = [{extras}]
{lines}
"""


def through(port: int, payload: bytes) -> bytes:
    """One connection: send `payload`, half-close, read until the relay closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            return recv_all(s)
        except ConnectionResetError:
            return b""


def greeted(reply: bytes, payload: bytes) -> int:
    """The port of the backend that answered; its echo must be `payload`, whole."""
    head, sep, rest = reply.partition(b"\n")
    assert sep, reply[:100]
    assert rest == payload, (len(rest), len(payload))
    return int(head)


def last_record(relay: RelayProcess, count: int) -> dict[str, Any]:
    return relay.wait_records(count)[-1]


def test_each_answer_with_the_flag(tmp_path: Path, echoes: PortEchoes, hook: Path) -> None:
    ports = echoes.ports
    with RelayProcess(config=config(ports), args=[*JSON, "-j", str(hook)], tmp_path=tmp_path) as r:
        r.start()
        port = r.port()
        for n, (first, want) in enumerate(((b"A", 0), (b"B", 1), (b"C", 2), (b"M", 2)), 1):
            payload = first + b"123 and the rest"
            assert greeted(through(port, payload), payload) == ports[want]
            rec = last_record(r, n)
            assert rec["close"] == "eof" and rec["backend"] == f"127.0.0.1:{ports[want]}", rec
            assert rec["bytes_up"] == len(payload), rec

        assert through(port, b"X123") == b""
        rec = last_record(r, 5)
        assert (rec["close"], rec["phase"], rec["backend"]) == ("hook-refused", "hook", None)
        assert "answered -1" in rec["hint"]
        assert "the pre-connect hook refused it (answer -1, endpoints[0])" in r.log

        assert through(port, b"Z123") == b""
        rec = last_record(r, 6)
        assert (rec["close"], rec["phase"]) == ("hook-refused", "hook"), rec
        assert rec["hint"] == "the pre-connect hook answered 99, outside 0..2"
        warning = [line for line in r.log.splitlines() if "answered 99" in line and "conn" in line]
        assert any("outside 0..2 (endpoints[0]: remote and 2 extra_remotes)" in w for w in warning)


def test_the_config_key_and_no_balancing(tmp_path: Path, echoes: PortEchoes, hook: Path) -> None:
    """`pre_conn_hook` in the config; a balance strategy does not override the hook's
    pick (realm's hook chooses), and nothing fails over from the remote it chose."""
    ports = echoes.ports
    text = config(
        [*ports, 9],  # extra_remotes[2]: port 9 on loopback, nothing listens
        top=f"pre_conn_hook = {json.dumps(str(hook))}",
        lines='balance = "roundrobin: 1, 1, 1, 1"',
    )
    with RelayProcess(config=text, args=JSON, tmp_path=tmp_path) as r:
        r.start()
        port = r.port()
        for _ in range(4):
            assert greeted(through(port, b"Bbbb"), b"Bbbb") == ports[1]
        for _ in range(4):
            assert greeted(through(port, b"Aaaa"), b"Aaaa") == ports[0]
        # 'M' is max_remote_idx: 3 here, the dead remote; no other remote is tried
        assert through(port, b"Mmmm") == b""
        rec = last_record(r, 9)
        assert (rec["close"], rec["phase"]) == ("connect-failed", "connect"), rec
        assert len(rec["failed_remotes"]) == 1 and "127.0.0.1:9" in rec["failed_remotes"][0]


def test_the_peeked_bytes_reach_the_backend(tmp_path: Path, echoes: PortEchoes, hook: Path) -> None:
    """The first bytes in small writes, then a large stream: every byte arrives, in
    order (nothing the hook read is consumed)."""
    ports = echoes.ports
    with RelayProcess(config=config(ports), args=[*JSON, "-j", str(hook)], tmp_path=tmp_path) as r:
        r.start()
        body = bytes(range(256)) * 4096  # 1 MiB
        with socket.create_connection(("127.0.0.1", r.port()), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in (b"C", b"x", b"yz"):
                s.sendall(piece)
            s.sendall(body)
            s.shutdown(socket.SHUT_WR)
            reply = recv_all(s)
        assert greeted(reply, b"Cxyz" + body) == ports[2]
        rec = last_record(r, 1)
        assert rec["bytes_up"] == 4 + len(body), rec


def test_a_client_that_stalls_is_closed_at_the_sniff_deadline(
    tmp_path: Path, echoes: PortEchoes, hook: Path
) -> None:
    with RelayProcess(
        config=config(echoes.ports), args=[*JSON, "-j", str(hook)], tmp_path=tmp_path
    ) as r:
        r.start()
        with socket.create_connection(("127.0.0.1", r.port()), timeout=10) as s:
            t0 = time.monotonic()
            s.sendall(b"AB")  # 2 of the 4 bytes, then nothing
            rec = last_record(r, 1)
            took = time.monotonic() - t0
            assert s.recv(10) == b""  # closed by the relay, not by us
        assert (rec["close"], rec["phase"], rec["backend"]) == ("hook-timeout", "hook", None)
        assert rec["hint"] == (
            "the client sent 2 of the 4 bytes the pre-connect hook reads within 0.5s"
            " (sniff_timeout)"
        )
        assert 0.4 <= took < 5, took

        with socket.create_connection(("127.0.0.1", r.port()), timeout=10) as s:
            s.sendall(b"B")
            s.shutdown(socket.SHUT_WR)  # and closes before the other 3
            assert recv_all(s) == b""
        rec = last_record(r, 2)
        assert (rec["close"], rec["phase"]) == ("hook-eof", "hook"), rec


def test_a_length_of_zero_decides_at_once(tmp_path: Path, echoes: PortEchoes) -> None:
    """`realm_first_pkt_len() == 0`: the hook is asked with no bytes before the client
    sends any (this one answers max_remote_idx: the last remote)."""
    lib = build_hook(tmp_path, first_len=0)
    ports = echoes.ports
    with RelayProcess(config=config(ports), args=[*JSON, "-j", str(lib)], tmp_path=tmp_path) as r:
        r.start()
        with socket.create_connection(("127.0.0.1", r.port()), timeout=10) as s:
            assert s.recv(16) == f"{ports[2]}\n".encode()  # before the client sent a byte
            s.sendall(b"hi")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"hi"


def test_after_routing_for_the_route_chosen(tmp_path: Path, echoes: PortEchoes, hook: Path) -> None:
    """A routed endpoint: the sniff phase reads first, the route decides the upstream,
    then the hook picks among that route's remotes (max_remote_idx is the route's)."""
    p = echoes.ports
    text = f"""
pre_conn_hook = {json.dumps(str(hook))}

[[endpoints]]
listen = "127.0.0.1:0"
remote = "127.0.0.1:{p[2]}"

[[endpoints.routes]]
when = "not_tls"
remote = "127.0.0.1:{p[0]}"
extra_remotes = ["127.0.0.1:{p[1]}"]
"""
    with RelayProcess(config=text, args=JSON, tmp_path=tmp_path) as r:
        r.start()
        assert greeted(through(r.port(), b"M and more"), b"M and more") == p[1]
        rec = last_record(r, 1)
        assert rec["route"] == "endpoints[0].routes[0]", rec


def test_a_terminating_listener_shows_the_hook_the_raw_client_hello(
    tmp_path: Path, echoes: PortEchoes, hook: Path
) -> None:
    """A TLS listener (the relay ends the client's TLS): the hook reads the raw bytes
    (the ClientHello's record header, 0x16 -> extra_remotes[0]), and they still go
    to the client's TLS side: the handshake completes and the backend greets."""
    ca = trustme.CA()
    leaf = ca.issue_cert("relay.example.com")
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    p = echoes.ports
    text = config(p[:2], lines=f'listen_transport = "tls;cert={cert};key={key}"')
    with RelayProcess(config=text, args=[*JSON, "-j", str(hook)], tmp_path=tmp_path) as r:
        r.start()
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        with (
            socket.create_connection(("127.0.0.1", r.port()), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="relay.example.com") as s,
        ):
            assert s.recv(16) == f"{p[1]}\n".encode()
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
        rec = last_record(r, 1)
        assert rec["backend"] == f"127.0.0.1:{p[1]}", rec


def test_workers_inherit_the_hook(tmp_path: Path, echoes: PortEchoes, hook: Path) -> None:
    ports = echoes.ports
    args = [*JSON, "-j", str(hook), "-w", "2"]
    with RelayProcess(config=config(ports), args=args, tmp_path=tmp_path) as r:
        r.start(wait_listen=2)
        port = r.port()
        for _ in range(6):
            assert greeted(through(port, b"Bbbb"), b"Bbbb") == ports[1]


def test_a_reload_keeps_the_hook_loaded_at_start(
    tmp_path: Path, echoes: PortEchoes, hook: Path
) -> None:
    """A changed `pre_conn_hook` takes a restart: the reload says so, and the library
    loaded at start goes on deciding."""
    ports = echoes.ports
    other = build_hook(tmp_path, name="other.so", first_len=0)  # would send all to the last
    with RelayProcess(
        config=config(ports, top=f"pre_conn_hook = {json.dumps(str(hook))}"),
        args=JSON,
        tmp_path=tmp_path,
    ) as r:
        r.start()
        assert r.config_path is not None
        r.config_path.write_text(config(ports, top=f"pre_conn_hook = {json.dumps(str(other))}"))
        os.kill(r.pid, signal.SIGHUP)
        log = r.wait_log("reloaded: ")
        assert "reload: pre_conn_hook changed: that takes a restart; kept as it was" in log
        assert greeted(through(r.port(), b"Aaaa"), b"Aaaa") == ports[0]


@pytest.mark.parametrize("how", ["flag", "key"])
def test_a_bad_library_exits_2_with_one_line(tmp_path: Path, how: str) -> None:
    missing = tmp_path / "missing.so"
    cfg = tmp_path / "relay.toml"
    if how == "flag":
        cfg.write_text(config([9]))
        args = ["-c", str(cfg), "-j", str(missing)]
    else:
        cfg.write_text(config([9], top=f"pre_conn_hook = {json.dumps(str(missing))}"))
        args = ["-c", str(cfg)]
    res = run_relay(args)
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert lines == [f"snirelay: pre_conn_hook (-j/--pre-conn-hook): {missing}: no such file"]

    notlib = tmp_path / "hook.so"
    notlib.write_text("int main;\n")
    res = run_relay(["-c", str(cfg), "-j", str(notlib)])
    assert res.returncode == 2, res
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"snirelay: pre_conn_hook (-j/--pre-conn-hook): {notlib}: cannot load")
