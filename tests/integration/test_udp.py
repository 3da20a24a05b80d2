"""UDP relaying (`use_udp`) with real datagrams, and dig against a real dnsmasq.

- datagrams of 1, 1,500, 9,000 and 65,507 bytes arrive whole, both ways;
- `udp_timeout`: a few hundred short associations all end (one record each) once
  quiet, traffic either way keeps one alive;
- `udp_max_sessions`: clients past it are refused (their datagrams dropped, a log
  line), the ones admitted are served;
- failover: a first remote that answers with ICMP port unreachable is left for the next;
- dig through the relay to dnsmasq: an answer, and a TXT answer over 1,500 bytes whole
  (EDNS), not truncated;
- iperf3 -u through one endpoint (its control connection over TCP, its datagrams over
  UDP): 50 Mbit/s of 1,200-byte datagrams for 2 s, none lost.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.relay import RelayProcess, free_port, relay_chain, run_relay
from helpers.wait import wait_until

pytestmark = pytest.mark.integration


class UdpEcho:
    """Echoes every datagram to its sender, on 127.0.0.1 (a thread; `close()` ends it)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(data, peer)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[UdpEcho]:
    srv = UdpEcho()
    try:
        yield srv
    finally:
        srv.close()


def udp_config(port: int, remote: str, extra: str = "", network: str = "") -> str:
    return (
        '[log]\nformat = "json"\n'
        f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{remote}"\n{extra}'
        f"network = {{ use_udp = true, no_tcp = true{network} }}\n"
    )


def udp_records(relay: RelayProcess) -> list[dict[str, Any]]:
    out = []
    for line in relay.log.splitlines():
        if line.startswith("{") and '"event":"udp"' in line:
            out.append(json.loads(line))
    return out


def client(timeout: float = 5) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(timeout)
    s.bind(("127.0.0.1", 0))
    return s


def test_datagrams_of_every_size_arrive_whole(tmp_path: Path, echo: UdpEcho) -> None:
    port = free_port()
    with RelayProcess(
        config=udp_config(port, f"127.0.0.1:{echo.port}"), tmp_path=tmp_path
    ) as relay:
        relay.start()
        with client() as c:
            for size in (1, 1500, 9000, 65507):
                data = os.urandom(size)
                c.sendto(data, ("127.0.0.1", port))
                got, peer = c.recvfrom(65535)
                assert got == data and peer == ("127.0.0.1", port), size


def test_quiet_associations_end_and_busy_ones_stay(tmp_path: Path, echo: UdpEcho) -> None:
    port = free_port()
    config = udp_config(port, f"127.0.0.1:{echo.port}", network=", udp_timeout = 1")
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        clients = [client() for _ in range(300)]
        try:
            for c in clients:
                c.sendto(b"once", ("127.0.0.1", port))
            for c in clients:
                assert c.recv(100) == b"once"
            with client() as busy:
                ends: list[dict[str, Any]] = wait_until(
                    lambda: udp_records(relay) if len(udp_records(relay)) >= 300 else None,
                    15,
                    lambda: relay.log[-2000:],
                )
                busy.sendto(b"x", ("127.0.0.1", port))
                for _ in range(6):  # 3 s of traffic every 0.5 s: longer than udp_timeout
                    assert busy.recv(10) == b"x"
                    busy.settimeout(0.5)
                    try:
                        busy.recv(10)
                    except TimeoutError:
                        pass
                    busy.settimeout(5)
                    busy.sendto(b"x", ("127.0.0.1", port))
                assert busy.recv(10) == b"x"
                mine = f"127.0.0.1:{busy.getsockname()[1]}"
                assert not any(r["client"] == mine for r in udp_records(relay))  # still open
        finally:
            for c in clients:
                c.close()
        assert len(ends) == 300 and all(r["close"] == "idle-timeout" for r in ends)
        assert all(r["datagrams_up"] == r["datagrams_down"] == 1 for r in ends)


def test_clients_past_the_limit_are_refused(tmp_path: Path, echo: UdpEcho) -> None:
    port = free_port()
    config = udp_config(port, f"127.0.0.1:{echo.port}", network=", udp_max_sessions = 5")
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        clients = [client(timeout=1) for _ in range(8)]
        try:
            answered = 0
            for c in clients:
                c.sendto(b"hi", ("127.0.0.1", port))
                try:
                    answered += c.recv(10) == b"hi"
                except TimeoutError:
                    pass
            assert answered == 5
            relay.wait_log("udp_max_sessions (5) reached")
        finally:
            for c in clients:
                c.close()


def test_a_remote_that_refuses_is_left_for_the_next(tmp_path: Path, echo: UdpEcho) -> None:
    port, dead = free_port(), free_port()
    extra = f'extra_remotes = ["127.0.0.1:{echo.port}"]\nbalance = "roundrobin"\n'
    config = udp_config(port, f"127.0.0.1:{dead}", extra)
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start()
        with client(timeout=0.5) as c:

            def answered() -> bool:
                c.sendto(b"retry", ("127.0.0.1", port))  # as a DNS client retries
                try:
                    return c.recv(10) == b"retry"
                except TimeoutError:
                    return False

            wait_until(answered, 10, lambda: relay.log[-2000:])


def test_a_client_of_dead_backends_is_held_not_retried_per_datagram(tmp_path: Path) -> None:
    """No remote answers: the association ends `connect-failed`, and that client's next
    datagrams (within FAILED_HOLD) are dropped instead of each making an association
    (and a record) that fails again. Another client's datagram, sent after them, is the
    marker: once its record is written, the relay has read everything sent before."""
    port, dead = free_port(), free_port()
    with RelayProcess(config=udp_config(port, f"127.0.0.1:{dead}"), tmp_path=tmp_path) as relay:
        relay.start()
        with client() as c1, client() as c2:
            c1.sendto(b"first", ("127.0.0.1", port))
            wait_until(lambda: len(udp_records(relay)) == 1, 10, lambda: relay.log[-2000:])
            for i in range(20):
                c1.sendto(b"again %d" % i, ("127.0.0.1", port))
            c2.sendto(b"marker", ("127.0.0.1", port))
            mark = fmt(c2.getsockname())
            wait_until(
                lambda: any(r["client"] == mark for r in udp_records(relay)),
                10,
                lambda: relay.log[-2000:],
            )
            mine = [r for r in udp_records(relay) if r["client"] == fmt(c1.getsockname())]
            assert len(mine) == 1, mine
            assert mine[0]["close"].startswith("connect-failed"), mine


def fmt(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}"


# ---------------------------------------------------------------- dig and dnsmasq

BIG = [f"t{i:02d}" + "x" * 240 for i in range(8)]  # 8 strings, about 2 KB of TXT


def dnsmasq_cmd(port: int) -> list[str] | None:
    binary = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")
    if binary is None:
        return None
    return [
        binary, "--no-daemon", "--conf-file=/dev/null", f"--port={port}",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--pid-file=", "--local=/test/", "--host-record=backend.test,127.0.0.1",
        "--txt-record=big.test," + ",".join(BIG), "--edns-packet-max=4096",
    ]  # fmt: skip


def dig(port: int, *args: str) -> str:
    res = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+tries=3", "+time=2", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dig_through_the_relay_to_dnsmasq(tmp_path: Path) -> None:
    if shutil.which("dig") is None:
        pytest.skip("dig not installed (Debian: dnsutils; `make system-deps`)")
    dns_port = free_port()
    cmd = dnsmasq_cmd(dns_port)
    if cmd is None:
        pytest.skip("dnsmasq not installed (Debian: dnsmasq-base; `make system-deps`)")
    log = (tmp_path / "dnsmasq.log").open("wb")
    dm = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "backend.test" in _try_dig(dns_port), 10, "dnsmasq answers")
        port = free_port()
        with RelayProcess(
            config=udp_config(port, f"127.0.0.1:{dns_port}"), tmp_path=tmp_path
        ) as relay:
            relay.start()
            out = dig(port, "backend.test", "A", "+short")
            assert out.strip() == "127.0.0.1", out
            out = dig(port, "big.test", "TXT", "+bufsize=4096", "+norec")
            assert "flags: qr aa" in out and " tc" not in out.split("flags:")[1].split(";")[0], out
            for s in BIG:
                assert f'"{s}"' in out, out
            size = int(out.split("MSG SIZE  rcvd: ")[1].split()[0])
            assert size > 1500, size
    finally:
        dm.terminate()
        dm.wait(10)
        log.close()


def _try_dig(port: int) -> str:
    try:
        return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=1", "+tries=1",
                               "backend.test"], capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except subprocess.TimeoutExpired:
        return ""


def test_the_association_count_goes_back_to_zero(tmp_path: Path, echo: UdpEcho) -> None:
    """Seen in the admin API's metrics: up with the clients, down to 0 once they are
    quiet; the refusals past the limit are counted."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    port, api = free_port(), free_port()
    config = f'[api]\nlisten = "127.0.0.1:{api}"\n' + udp_config(
        port, f"127.0.0.1:{echo.port}", network=", udp_timeout = 1, udp_max_sessions = 40"
    )

    def sample(name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=10) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name:
                    return float(s.value)
        raise AssertionError(f"{name} not in /metrics")

    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=2)
        clients = [client(timeout=0.5) for _ in range(50)]
        try:
            for c in clients:
                c.sendto(b"hi", ("127.0.0.1", port))
            wait_until(lambda: sample("snirelay_udp_refused_total") == 10, 5, "refused")
            assert sample("snirelay_udp_associations") == 40  # (udp_timeout is 1 s)
            wait_until(lambda: sample("snirelay_udp_associations") == 0, 10, relay.log[-1000:])
            answers = 0
            for c in clients:
                c.setblocking(False)
                try:
                    answers += c.recv(10) == b"hi"
                except BlockingIOError:
                    pass
            assert answers == 40  # the admitted ones were answered, the others not
        finally:
            for c in clients:
                c.close()


def test_iperf3_udp_through_the_relay_loses_nothing(tmp_path: Path) -> None:
    """iperf3 -u: its control connection over TCP and its datagrams over UDP, both
    through one endpoint (`use_udp` with TCP kept), at a rate this machine sustains."""
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed (Debian: iperf3; `make system-deps`)")
    srv_port, port = free_port(), free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(srv_port)],  # until killed
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        config = (f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "127.0.0.1:{srv_port}"\n'
                  "network = { use_udp = true }\n")  # fmt: skip
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=2)
            wait_until(lambda: _listening_tcp(srv_port), 10, "iperf3 server")
            res = subprocess.run(
                ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", "50M", "-l", "1200",
                 "-t", "2", "-J"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr
            end = json.loads(res.stdout)["end"]["sum"]
            assert end["packets"] > 5000, end
            assert end["lost_packets"] == 0, end
    finally:
        server.kill()
        server.wait(10)


def _listening_tcp(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the PROXY protocol


def test_a_proxy_header_on_every_datagram_and_a_chain(tmp_path: Path, echo: UdpEcho) -> None:
    """client -> A (send_proxy) -> B (accept_proxy) -> echo and back: B takes each
    datagram's header off and names the real client; a datagram without one is dropped."""
    a_port, b_port = free_port(), free_port()
    b_cfg = udp_config(b_port, f"127.0.0.1:{echo.port}", network=", accept_proxy = true")
    a_cfg = udp_config(a_port, f"127.0.0.1:{b_port}", network=", send_proxy = true")
    with relay_chain(tmp_path, a_cfg, b_cfg) as (a, b):
        with client() as c:
            me = f"127.0.0.1:{c.getsockname()[1]}"
            for size in (1, 1200, 60000):
                data = os.urandom(size)
                c.sendto(data, ("127.0.0.1", a_port))
                assert c.recv(65535) == data, size
        with client(timeout=0.5) as bare:  # straight to B, without a header: dropped
            bare.sendto(b"no header", ("127.0.0.1", b_port))
            with pytest.raises(TimeoutError):
                bare.recv(100)
        b.wait_log("dropped: malformed: not a PROXY protocol header")
        a.stop()
        b.stop()
        [rec_b] = udp_records(b)
        assert rec_b["client"] == me and rec_b["datagrams_up"] == 3, rec_b
        [rec_a] = udp_records(a)
        assert rec_a["client"] == me and rec_a["bytes_up"] == 61201, rec_a


def test_a_v1_header_cannot_go_on_udp(tmp_path: Path) -> None:
    config = udp_config(
        free_port(), "127.0.0.1:9", network=", send_proxy = true, send_proxy_version = 1"
    )
    (tmp_path / "relay.toml").write_text(config)
    res = run_relay(["-c", str(tmp_path / "relay.toml")])
    assert res.returncode == 2 and "send_proxy_version" in res.stderr, res
    errors = [line for line in res.stderr.splitlines() if "snirelay: warning:" not in line]
    assert len(errors) == 1, res.stderr


def test_thousands_of_short_associations_all_go(tmp_path: Path, echo: UdpEcho) -> None:
    """2,000 clients, one datagram each, one after another: the associations' count in
    the API goes back to zero, and every client address has its record."""
    import urllib.request

    port, api = free_port(), free_port()
    config = f'[api]\nlisten = "127.0.0.1:{api}"\n' + udp_config(
        port, f"127.0.0.1:{echo.port}", network=", udp_timeout = 1"
    )

    def open_now() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("snirelay_udp_associations{"):
                    return int(float(line.rsplit(" ", 1)[1]))
        raise AssertionError("no snirelay_udp_associations in /metrics")

    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=2)
        ports = set()
        for i in range(2000):
            with client() as c:
                ports.add(c.getsockname()[1])
                c.sendto(b"%d" % i, ("127.0.0.1", port))
                assert c.recv(10) == b"%d" % i
        assert open_now() > 0
        wait_until(lambda: open_now() == 0, 15, lambda: relay.log[-1000:])
        # a port the system gave out again within udp_timeout was the same association
        ended = {r["client"] for r in udp_records(relay)}
        assert ended == {f"127.0.0.1:{p}" for p in ports} and len(ports) > 1000


def test_udp_needs_the_endpoints_own_remote(tmp_path: Path) -> None:
    """Routes are by name and a datagram has none: an endpoint with routes and no remote
    of its own cannot relay UDP, and says so at start."""
    config = (f'[[endpoints]]\nlisten = "127.0.0.1:{free_port()}"\nnetwork = {{ use_udp = true }}\n'
              '  [[endpoints.routes]]\n  server_names = ["a.test"]\n  remote = "127.0.0.1:9"\n')  # fmt: skip
    (tmp_path / "relay.toml").write_text(config)
    res = run_relay(["-c", str(tmp_path / "relay.toml")])
    assert res.returncode == 2 and "endpoints[0].remote: use_udp" in res.stderr, res
