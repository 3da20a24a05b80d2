"""Forwarding through the real relay process: byte-exact transfers with half-close.

256 MiB each way through `python -m snirelay -l ... -r ...`, sha256 compared at the
far end, in both half-close orders and full duplex; the connection record must say
the zero-copy path was used (Linux) and count the bytes.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from helpers.peers import EchoServer, Mode, StreamServer, connect, duplex, recv_all
from helpers.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration

BIG = 256 << 20


def start_cli_relay(tmp_path: Path, remote: str, *extra: str) -> tuple[RelayProcess, int]:
    port = free_port()
    relay = RelayProcess(["-l", f"127.0.0.1:{port}", "-r", remote, *extra], tmp_path=tmp_path)
    relay.start()
    return relay, port


@pytest.mark.slow
@pytest.mark.parametrize(
    ("client_mode", "server_mode"),
    [
        # client sends 256 MiB and half-closes; the server then answers with its own 256 MiB
        ("concurrent", "after_eof"),
        # the server sends first and half-closes; the client answers after that EOF
        ("after_eof", "concurrent"),
        # both at once, each half-closing when done
        ("concurrent", "concurrent"),
    ],
)
def test_256mib_each_way_with_half_close(
    tmp_path: Path, client_mode: Mode, server_mode: Mode
) -> None:
    with StreamServer(BIG, server_mode, timeout=45) as srv:
        relay, port = start_cli_relay(tmp_path, srv.addr)
        with relay:
            sock = connect(port, timeout=45)
            try:
                cres = duplex(sock, BIG, client_mode)
            finally:
                sock.close()
            (sres,) = srv.wait_results(1, timeout=45)
            assert cres.error is None, cres.error
            assert sres.error is None, sres.error
            assert sres.received == BIG and cres.received == BIG
            assert sres.received_sha == cres.sent_sha, "client->server stream corrupted"
            assert cres.received_sha == sres.sent_sha, "server->client stream corrupted"

            (rec,) = relay.wait_records(1, timeout=10)
            assert rec["bytes_up"] == BIG, rec
            assert rec["bytes_down"] == BIG, rec
            assert rec["close"] == "eof", rec
            if sys.platform == "linux":
                assert rec["path"] == "splice", rec
            assert relay.running, relay.log


def test_small_echo_and_text_record(tmp_path: Path) -> None:
    with EchoServer() as srv:
        relay, port = start_cli_relay(tmp_path, srv.addr)
        with relay:
            for i in range(5):
                with connect(port) as s:
                    msg = f"hello {i}\n".encode() * 100
                    s.sendall(msg)
                    s.shutdown(socket.SHUT_WR)
                    assert recv_all(s) == msg
            recs = relay.wait_records(5)
            ids = [r["id"] for r in recs]
            assert len(set(ids)) == 5, recs
            for r in recs:
                assert r["listener"] in ("endpoints[0]", "command line"), r
                assert r["backend"] == srv.addr, r
                assert r["client"].startswith("127.0.0.1:"), r
                assert r["bytes_up"] == r["bytes_down"] == len(b"hello 0\n") * 100, r
                assert r["close"] == "eof", r


def test_json_record_fields(tmp_path: Path) -> None:
    with EchoServer() as srv:
        relay, port = start_cli_relay(tmp_path, srv.addr, "--log-format", "json")
        with relay:
            with connect(port) as s:
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"ping"
            (rec,) = relay.wait_records(1)
            for key in (
                "id",
                "listener",
                "client",
                "backend",
                "sni",
                "route",
                "bytes_up",
                "bytes_down",
                "duration",
                "path",
                "close",
            ):
                assert key in rec, (key, rec)
            assert rec["sni"] is None
            assert rec["bytes_up"] == 4 and rec["bytes_down"] == 4
            assert isinstance(rec["duration"], int | float) and rec["duration"] >= 0
            assert rec["backend"] == srv.addr


def test_config_file_forwarding(tmp_path: Path) -> None:
    """The same through `-c relay.toml` (realm's format)."""
    with EchoServer() as srv:
        port = free_port()
        config = f"""
[log]
level = "info"
output = "stderr"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port) as s:
                s.sendall(b"x" * 100_000)
                s.shutdown(socket.SHUT_WR)
                assert recv_all(s) == b"x" * 100_000
            relay.wait_records(1)
