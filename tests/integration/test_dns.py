"""`[dns] nameservers`: the relay asks a real DNS server (dnsmasq on loopback) itself.

dnsmasq runs as our own child (`--no-daemon`, no resolv.conf, no hosts file, no pid
file) on a free loopback port, answering `backend.test` (A 127.0.0.1, TTL 1 s),
`alias.test` (CNAME to backend.test) and NXDOMAIN for anything else under `.test`.
The relay forwards `remote = "backend.test:PORT"` to an echo server; an unknown name
gives a connect-failed record naming the remote, with the reason in the log; with
`min_ttl = 60` a second connection resolves from the cache after dnsmasq is gone, and
with `max_ttl = 0` (nothing kept) it fails, saying why.

How long an answer is kept is tested on the resolver itself, in this process, against
the same dnsmasq, with a `FakeClock` moved past the record's 1 s TTL and past `min_ttl`
(a relay subprocess would have to sleep through them).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.clock import FakeClock
from helpers.peers import EchoServer, connect, recv_all
from helpers.relay import RelayProcess, free_port
from helpers.wait import poll
from snirelay.config.model import Addr, DnsConfig
from snirelay.net.resolve import Resolver, SockTarget
from snirelay.wire.dns import A, build_query, parse_response

pytestmark = pytest.mark.integration


def dnsmasq_binary() -> str | None:
    """dnsmasq's path; /usr/sbin is searched too (it is not on a user's PATH)."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


class Dnsmasq:
    def __init__(self, tmp_path: Path) -> None:
        self.port = self._free_port()
        self.log_path = tmp_path / "dnsmasq.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cmd = [
            str(dnsmasq_binary()),
            "--no-daemon",
            "--conf-file=/dev/null",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--local=/test/",
            "--host-record=backend.test,127.0.0.1,1",
            "--cname=alias.test,backend.test,1",
            "--log-queries",
        ]

    @staticmethod
    def _free_port() -> int:
        for _ in range(20):
            port = free_port()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no port free for both TCP and UDP")

    def start(self, timeout: float = 10) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        proc = self.proc
        if not poll(lambda: self.answers() or proc.poll() is not None, timeout) or (
            proc.poll() is not None
        ):
            self.stop()
            raise RuntimeError(f"dnsmasq did not start:\n{self.log_path.read_text()}")

    def answers(self) -> bool:
        qid = secrets.randbits(16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(build_query(qid, "backend.test", A), ("127.0.0.1", self.port))
                data = s.recv(4096)
            except OSError:
                return False
        return bool(parse_response(data, qid, "backend.test", A).addresses)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    if dnsmasq_binary() is None:
        pytest.skip("dnsmasq not installed (Debian: dnsmasq-base; `make system-deps`)")
    dm = Dnsmasq(tmp_path)
    dm.start()
    try:
        yield dm
    finally:
        dm.stop()


def config(dm: Dnsmasq, port: int, remote: str, dns: str = "") -> str:
    return f"""
[dns]
nameservers = ["{dm.server}"]
{dns}

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{remote}"
"""


def echo_once(port: int, msg: bytes) -> bytes:
    with connect(port) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


@pytest.mark.parametrize("protocol", ["tcp_and_udp", "udp", "tcp"])
def test_forward_to_a_name_from_the_nameserver(
    tmp_path: Path, dnsmasq: Dnsmasq, protocol: str
) -> None:
    with EchoServer() as srv:
        port = free_port()
        text = config(dnsmasq, port, f"alias.test:{srv.port}", f'protocol = "{protocol}"')
        with RelayProcess(config=text, tmp_path=tmp_path) as relay:
            relay.start()
            assert "custom name servers are not used" not in relay.log
            assert echo_once(port, b"hello dns\n") == b"hello dns\n"
            (rec,) = relay.wait_records(1)
            assert rec["close"] == "eof", rec
            assert rec["backend"] == f"127.0.0.1:{srv.port}", rec
        assert "query[A] alias.test from 127.0.0.1" in dnsmasq.log_path.read_text()


def test_unknown_name_is_a_connect_failure_with_the_reason(
    tmp_path: Path, dnsmasq: Dnsmasq
) -> None:
    port = free_port()
    text = config(dnsmasq, port, "nope.test:9")
    with RelayProcess(["--log-level", "debug"], config=text, tmp_path=tmp_path) as relay:
        relay.start()
        with connect(port) as s:
            s.settimeout(10)
            assert recv_all(s) == b""
        (rec,) = relay.wait_records(1)
        assert rec["close"] == "connect-failed", rec
        why = f"nope.test:9 (nope.test: NXDOMAIN from {dnsmasq.server})"
        assert rec.get("failed_remotes") in ([why], why), rec  # the record says why
        assert relay.running


def test_cached_answer_outlives_the_nameserver(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    with EchoServer() as srv:
        port = free_port()
        text = config(dnsmasq, port, f"backend.test:{srv.port}", "min_ttl = 60")
        with RelayProcess(config=text, tmp_path=tmp_path) as relay:
            relay.start()
            assert echo_once(port, b"one") == b"one"
            dnsmasq.stop()
            assert echo_once(port, b"two") == b"two"
            recs = relay.wait_records(2)
            assert [r["close"] for r in recs] == ["eof", "eof"], recs


def test_an_answer_not_kept_is_asked_again(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = free_port()
    with EchoServer() as srv:
        dns = 'protocol = "udp"\nmax_ttl = 0'
        text = config(dnsmasq, port, f"backend.test:{srv.port}", dns)
        with RelayProcess(["--log-level", "debug"], config=text, tmp_path=tmp_path) as relay:
            relay.start()
            assert echo_once(port, b"one") == b"one"
            dnsmasq.stop()
            with connect(port) as s, contextlib.suppress(OSError):
                s.settimeout(15)
                assert recv_all(s) == b""
            recs = relay.wait_records(2, timeout=15)
            assert recs[1]["close"] == "connect-failed", recs
            assert f"backend.test: A: {dnsmasq.server}: " in relay.log


# ---- how long the resolver keeps an answer: a fake clock, the real dnsmasq ------------


def resolver(dm: Dnsmasq, clock: FakeClock, *, min_ttl: int = 0, protocol: str = "udp") -> Resolver:
    server = Addr("127.0.0.1", dm.port)
    cfg = DnsConfig(nameservers=(server,), mode="ipv4_only", min_ttl=min_ttl, protocol=protocol)
    return Resolver(asyncio.get_running_loop(), cfg, clock=clock, timeout=1)


async def ask(r: Resolver, host: str) -> list[SockTarget] | OSError:
    fut: asyncio.Future[list[SockTarget] | OSError] = asyncio.get_running_loop().create_future()
    r.resolve(host, 80, fut.set_result)
    return await asyncio.wait_for(fut, 10)


BACKEND = [(socket.AF_INET, ("127.0.0.1", 80))]


def test_min_ttl_keeps_an_answer_past_its_own_ttl(dnsmasq: Dnsmasq) -> None:
    async def main() -> None:
        clock = FakeClock()
        r = resolver(dnsmasq, clock, min_ttl=60)
        assert await ask(r, "backend.test") == BACKEND
        dnsmasq.stop()
        clock.advance(1.5)  # past the record's own 1 s TTL: only min_ttl keeps it
        assert await ask(r, "backend.test") == BACKEND
        clock.advance(58.5)  # 60 s: expired, and the name server is gone
        gone = await ask(r, "backend.test")
        assert isinstance(gone, OSError), gone
        assert str(gone).startswith(f"backend.test: A: {dnsmasq.server}: "), gone

    asyncio.run(main())


def test_without_min_ttl_the_answer_expires(dnsmasq: Dnsmasq) -> None:
    async def main() -> None:
        clock = FakeClock()
        r = resolver(dnsmasq, clock, protocol="tcp_and_udp")
        assert await ask(r, "backend.test") == BACKEND
        dnsmasq.stop()
        clock.advance(0.5)
        assert await ask(r, "backend.test") == BACKEND  # within the record's 1 s: cached
        clock.advance(0.5)  # 1 s: the record's TTL is over
        gone = await ask(r, "backend.test")
        assert isinstance(gone, OSError), gone
        assert str(gone).startswith(f"backend.test: A: {dnsmasq.server}: "), gone

    asyncio.run(main())
