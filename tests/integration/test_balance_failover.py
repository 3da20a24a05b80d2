"""Balancing and failover through the real relay process.

Backends are `EchoServer`s that greet with their name, so each client learns which
backend served it without trusting the relay's own log. roundrobin is smooth
weighted (as nginx), so 60 connections over weights 3, 2, 1 are exactly 30/20/10;
iphash must keep a client IP on one backend (clients bind 127.0.0.x, all loopback).
A dead remote (a port with nothing listening) among live ones must never surface to
a client, and the relay must say it skipped it.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from helpers.peers import EchoServer, recv_all
from helpers.relay import RelayProcess, free_port

pytestmark = pytest.mark.integration

BANNER_LEN = 3  # b"b0\n"


@pytest.fixture
def backends() -> Iterator[list[EchoServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(EchoServer(banner=f"b{i}\n".encode())) for i in range(3)]


def balance_config(port: int, remotes: list[str], balance: str) -> str:
    extras = ", ".join(f'"{r}"' for r in remotes[1:])
    return f"""
[log]
level = "info"
output = "stderr"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{remotes[0]}"
extra_remotes = [{extras}]
balance = "{balance}"
"""


def which_backend(port: int, source_ip: str = "127.0.0.1", payload: bytes = b"ping") -> str:
    """One connection through the relay: returns the backend's banner (e.g. "b1"),
    checking the echo of `payload` comes back intact after the banner."""
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source_ip, 0)
    ) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    assert len(reply) == BANNER_LEN + len(payload), reply
    assert reply[BANNER_LEN:] == payload, reply
    return reply[: BANNER_LEN - 1].decode()


def test_roundrobin_weights_3_2_1(tmp_path: Path, backends: list[EchoServer]) -> None:
    port = free_port()
    config = balance_config(port, [b.addr for b in backends], "roundrobin: 3, 2, 1")
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        counts = Counter(which_backend(port) for _ in range(60))
        # smooth weighted round robin: every 6 picks are 3/2/1, so 60 are exact
        assert counts == {"b0": 30, "b1": 20, "b2": 10}, counts
        recs = relay.wait_records(60)
        by_backend = Counter(r["backend"] for r in recs)
        assert by_backend == {
            backends[0].addr: 30,
            backends[1].addr: 20,
            backends[2].addr: 10,
        }, by_backend


def test_iphash_is_sticky_per_client_ip(tmp_path: Path, backends: list[EchoServer]) -> None:
    port = free_port()
    config = balance_config(port, [b.addr for b in backends], "iphash: 1, 1, 1")
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        chosen: dict[str, str] = {}
        for i in range(1, 21):
            ip = f"127.0.0.{i}"
            seen = {which_backend(port, ip) for _ in range(3)}
            assert len(seen) == 1, (ip, seen)
            chosen[ip] = seen.pop()
        # 20 addresses on 3 equal backends: all on one would mean no hashing at all
        assert len(set(chosen.values())) >= 2, chosen
        relay.wait_records(60)


@pytest.mark.parametrize("strategy", ["roundrobin: 1, 1, 1", "iphash: 1, 1, 1"])
def test_dead_remote_is_skipped(tmp_path: Path, backends: list[EchoServer], strategy: str) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    live = [backends[0].addr, backends[1].addr]
    port = free_port()
    config = balance_config(port, [live[0], dead, live[1]], strategy)
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        served: Counter[str] = Counter()
        for i in range(30):
            ip = f"127.0.0.{1 + i % 10}"
            # every client gets its echo: the dead remote never shows
            served[which_backend(port, ip, payload=f"hello {i}".encode())] += 1
        assert set(served) <= {"b0", "b1"}, served
        assert sum(served.values()) == 30
        recs = relay.wait_records(30)
        assert all(r["backend"] in live for r in recs), [r["backend"] for r in recs]
        assert all(r["close"] == "eof" for r in recs), [r["close"] for r in recs]
        # the relay says it tried the dead one and moved on
        assert dead in relay.log, relay.log
        assert relay.running
