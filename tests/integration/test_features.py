"""Forwarding features of issue 2 through the real relay process, one test each.

Every test starts `python -m snirelay` on loopback ports read back from port 0 and
talks to it with real sockets (every operation has a timeout):

- ``through`` / ``-x``: the backend sees the relay's outbound connection coming from
  127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux).
- IPv6: ``[::1]`` on both sides (skipped when ::1 cannot be bound); ``ipv6_only`` is
  checked with ``ss -tlne`` (``v6only:1``) and by listening on the v4-mapped address
  ``[::ffff:127.0.0.1]``, which a V6ONLY socket refuses (exit 3) and a dual-stack one
  serves to IPv4 clients.
- Port ranges: ``listen = "127.0.0.1:A-A+2"`` with ``remote = "127.0.0.1:B-B+2"`` pairs
  the ports in order, a single remote port serves the whole range, and a legacy v1
  JSON file with ranges runs end to end. Backends on fixed ports greet with their
  port number, so each client learns where it landed.
- ``remote = "localhost:Q"`` is resolved per connection (``dns.mode = "ipv4_only"``).
- Logging: ``[log] output = FILE`` with ``format = "json"`` writes the records to the
  file; ``level = "off"`` writes nothing; ``--log-level warn`` hides the records.
- ``-p 64`` forwards 64 MiB byte-exact on the splice path, and the relay's pooled
  pipes are 256 KiB (F_GETPIPE_SZ on the pipes opened through /proc/PID/fd); ``-n 4096`` shows up as the
  soft open-file limit in /proc/PID/limits.
- ``-d``: the command returns at once, the daemon (found by its unique config path in
  /proc/*/cmdline) keeps serving, and is killed by that pid whatever happens.
- ``interface`` / ``listen_interface`` (``-i lo -e lo``) where SO_BINDTODEVICE is
  permitted; an unknown outbound device fails each connection (not the relay), an
  unknown listen device exits 3.
- ``network.tcp_keepalive = 7``: ``ss -tnoe`` shows a keepalive timer of at most 7 s on
  the relay's accepted socket and on its outbound socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers.peers import EchoServer, StreamServer, connect, duplex, recv_all
from helpers.ports import free_consecutive, port_echoes
from helpers.relay import RelayProcess, free_port, parse_records, run_relay
from helpers.wait import wait_until

pytestmark = pytest.mark.integration

F_GETPIPE_SZ = 1032


# ----------------------------------------------------------------------------- helpers


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def echo_once(port: int, payload: bytes = b"ping", host: str = "127.0.0.1") -> bytes:
    """One connection: send `payload`, half-close, return everything received."""
    with connect(port, host=host, timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def wait_accepting(port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
    """Poll until something accepts on host:port (for relays whose log we cannot read)."""

    def accepts() -> bool:
        socket.create_connection((host, port), timeout=1).close()
        return True

    wait_until(accepts, timeout, f"something accepts on {host}:{port}", ignore=(OSError,))


def banner_of(reply: bytes, payload: bytes) -> int:
    head, sep, rest = reply.partition(b"\n")
    assert sep and rest == payload, reply
    return int(head)


# ----------------------------------------------------------------------------- through


@pytest.mark.parametrize("how", ["flag", "config"])
def test_through_sets_the_source_address(tmp_path: Path, how: str) -> None:
    with EchoServer() as srv:
        port = free_port()
        if how == "flag":
            relay = RelayProcess(
                ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-x", "127.0.0.2"], tmp_path=tmp_path
            )
        else:
            config = f"""
[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
through = "127.0.0.2"
"""
            relay = RelayProcess(config=config, tmp_path=tmp_path)
        with relay:
            relay.start()
            for _ in range(3):
                assert echo_once(port) == b"ping"
            relay.wait_records(3)
            assert [c[0] for c in srv.clients] == ["127.0.0.2"] * 3, srv.clients


# ----------------------------------------------------------------------------- IPv6

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="::1 is not available")


@needs_ipv6
def test_ipv6_listen_and_remote(tmp_path: Path) -> None:
    with EchoServer("::1") as srv:
        port = free_port("::1")
        config = f"""
[[endpoints]]
listen = "[::1]:{port}"
remote = "[::1]:{srv.port}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            assert echo_once(port, b"six" * 1000, host="::1") == b"six" * 1000
            (rec,) = relay.wait_records(1)
            assert rec["backend"] == f"[::1]:{srv.port}", rec
            assert rec["client"].startswith("[::1]:"), rec
            assert srv.clients[0][0] == "::1"


@needs_ipv6
@pytest.mark.parametrize("how", ["config", "flag"])
def test_ipv6_only_sets_v6only_on_the_listener(tmp_path: Path, how: str) -> None:
    with EchoServer() as srv:
        port = free_port("::1")
        if how == "flag":
            relay = RelayProcess(["-l", f"[::1]:{port}", "-r", srv.addr, "-6"], tmp_path=tmp_path)
        else:
            config = f"""
[network]
ipv6_only = true

[[endpoints]]
listen = "[::1]:{port}"
remote = "{srv.addr}"
"""
            relay = RelayProcess(config=config, tmp_path=tmp_path)
        with relay:
            relay.start()
            out = subprocess.run(
                ["ss", "-tlne", f"( sport = :{port} )"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
            assert "v6only:1" in out, out
            assert echo_once(port, host="::1") == b"ping"


@needs_ipv6
def test_v4_mapped_listener_dual_stack_vs_ipv6_only(tmp_path: Path) -> None:
    """Without ipv6_only, [::ffff:127.0.0.1] serves IPv4 clients; with it, the
    address cannot be bound (V6ONLY sockets refuse v4-mapped addresses): exit 3."""
    with EchoServer() as srv:
        port = free_port()
        body = f"""
[[endpoints]]
listen = "[::ffff:127.0.0.1]:{port}"
remote = "{srv.addr}"
"""
        dual = tmp_path / "dual"
        dual.mkdir()
        with RelayProcess(config=body, tmp_path=dual) as relay:
            relay.start()
            assert echo_once(port) == b"ping"
        cfg = tmp_path / "v6only.toml"
        cfg.write_text("[network]\nipv6_only = true\n" + body)
        res = run_relay(["-c", str(cfg)], timeout=15)
        assert res.returncode == 3, (res.returncode, res.stderr)
        assert f"[::ffff:127.0.0.1]:{port}" in res.stderr, res.stderr


# ----------------------------------------------------------------------------- port ranges


def test_port_range_maps_each_listen_port_to_its_pair(tmp_path: Path) -> None:
    with port_echoes(3) as backends:
        a = free_consecutive(3)
        b = backends.ports[0]
        config = f"""
[[endpoints]]
listen = "127.0.0.1:{a}-{a + 2}"
remote = "127.0.0.1:{b}-{b + 2}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=3)
            for i in range(3):
                for _ in range(2):
                    assert banner_of(echo_once(a + i), b"ping") == b + i
            relay.wait_records(6)


def test_port_range_with_one_remote_port(tmp_path: Path) -> None:
    with EchoServer(banner=b"one\n") as srv:
        a = free_consecutive(3)
        config = f"""
[[endpoints]]
listen = "127.0.0.1:{a}-{a + 2}"
remote = "{srv.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=3)
            for i in range(3):
                assert echo_once(a + i) == b"one\nping"
            assert srv.connections == 3


def test_legacy_v1_json_with_port_ranges(tmp_path: Path) -> None:
    with port_echoes(4) as backends:
        b = backends.ports
        a = free_consecutive(4)
        legacy = {
            "listening_addresses": ["127.0.0.1"],
            "listening_ports": [str(a), f"{a + 1}-{a + 3}"],
            "remote_addresses": ["127.0.0.1"],
            "remote_ports": [str(b[0]), f"{b[1]}-{b[3]}"],
        }
        relay = RelayProcess(config=json.dumps(legacy), fmt="json", tmp_path=tmp_path)
        with relay:
            relay.start(wait_listen=4)
            for i in range(4):
                assert banner_of(echo_once(a + i), b"ping") == b[i]
            relay.wait_records(4)


# ----------------------------------------------------------------------------- remote by name


def test_remote_host_name_is_resolved(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        config = f"""
[dns]
mode = "ipv4_only"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "localhost:{srv.port}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            for _ in range(3):  # the second and third come from the cache
                assert echo_once(port) == b"ping"
            recs = relay.wait_records(3)
            assert all(r["backend"] == f"127.0.0.1:{srv.port}" for r in recs), recs
            assert srv.connections == 3


# ----------------------------------------------------------------------------- logging


def test_log_output_file_json(tmp_path: Path) -> None:
    log_file = tmp_path / "out" / "relay-records.log"
    log_file.parent.mkdir()
    with EchoServer() as srv:
        port = free_port()
        config = f"""
[log]
level = "info"
output = "{log_file}"
format = "json"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        relay = RelayProcess(config=config, tmp_path=tmp_path, log_flags=False)
        with relay:
            relay.spawn()
            wait_accepting(port)  # this probe connection is logged too
            assert echo_once(port) == b"ping"
            wait_until(
                lambda: any(r.get("bytes_up") == 4 for r in parse_records(log_file.read_text())),
                10,
                lambda: log_file.read_text(),
                ignore=(FileNotFoundError,),
            )
            text = log_file.read_text()
            for line in text.splitlines():  # every line is JSON
                json.loads(line)
            assert relay.stop() == 0
        assert relay.log.strip() == "", relay.log
        assert relay.stdout.strip() == "", relay.stdout


def test_log_level_off_writes_nothing(tmp_path: Path) -> None:
    log_file = tmp_path / "off.log"
    with EchoServer() as srv:
        port = free_port()
        config = f"""
[log]
level = "off"
output = "{log_file}"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        relay = RelayProcess(config=config, tmp_path=tmp_path, log_flags=False)
        with relay:
            relay.spawn()
            wait_accepting(port)
            for _ in range(3):
                assert echo_once(port) == b"ping"
            assert relay.stop() == 0
        assert not log_file.exists() or log_file.read_text() == ""
        assert relay.log.strip() == "" and relay.stdout.strip() == ""


def test_log_level_warn_hides_connection_records(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            [
                "-l",
                f"127.0.0.1:{port}",
                "-r",
                srv.addr,
                "--log-level",
                "warn",
                "--log-output",
                "stderr",
            ],
            tmp_path=tmp_path,
            log_flags=False,
        )
        with relay:
            relay.spawn()
            wait_accepting(port)
            for _ in range(3):
                assert echo_once(port) == b"ping"
            assert relay.stop() == 0  # it has exited: its log is complete
        assert relay.records() == [], relay.log
        assert "listening on" not in relay.log, relay.log


# ----------------------------------------------------------------------------- -p, -n


def test_pipe_pages_64_forwards_64mib_exact(tmp_path: Path) -> None:
    size = 64 << 20
    with StreamServer(size, "after_eof", timeout=30) as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-p", "64"], tmp_path=tmp_path
        )
        with relay:
            relay.start()
            sock = connect(port, timeout=30)
            try:
                cres = duplex(sock, size, "concurrent")
            finally:
                sock.close()
            (sres,) = srv.wait_results(1, timeout=30)
            assert cres.error is None and sres.error is None, (cres.error, sres.error)
            assert sres.received == size and cres.received == size
            assert sres.received_sha == cres.sent_sha
            assert cres.received_sha == sres.sent_sha
            (rec,) = relay.wait_records(1)
            assert rec["path"] == "splice", rec
            assert rec["bytes_up"] == rec["bytes_down"] == size, rec
            sizes = pipe_sizes(relay.pid)
            assert 64 * 4096 in sizes, sizes  # the pooled splice pipes


def pipe_sizes(pid: int) -> list[int]:
    """F_GETPIPE_SZ of every pipe the process holds (opened through /proc/PID/fd,
    read end or write end alike; nothing is read)."""
    out: list[int] = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            if not os.readlink(entry).startswith("pipe:"):
                continue
            fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            out.append(fcntl.fcntl(fd, F_GETPIPE_SZ))
        finally:
            os.close(fd)
    return out


def soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def test_nofile_sets_the_soft_limit(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-n", "4096"], tmp_path=tmp_path
        )
        with relay:
            relay.start()
            assert soft_nofile(relay.pid) == 4096
            assert echo_once(port) == b"ping"


# ----------------------------------------------------------------------------- daemon


def pids_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (a path unique to this test)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd and b"snirelay" in cmd:
            out.append(int(entry))
    return out


def test_daemon_detaches_and_keeps_serving(tmp_path: Path) -> None:
    log_file = tmp_path / "daemon.log"
    with EchoServer() as srv:
        port = free_port()
        config = tmp_path / "daemon-unique.toml"
        config.write_text(
            f"""
[log]
level = "info"
output = "{log_file}"

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        )
        pids: list[int] = []
        try:
            t0 = time.monotonic()
            res = run_relay(["-c", str(config), "-d"], timeout=15)
            assert res.returncode == 0, res.stderr
            assert time.monotonic() - t0 < 10
            assert res.stderr == "", res.stderr
            pids = wait_until(lambda: pids_with(str(config)), 10, "the daemon runs")
            assert len(pids) == 1, pids
            (pid,) = pids
            assert res.stdout == f"snirelay: running in the background, pid {pid}\n", res.stdout
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            assert int(fields[3]) != os.getsid(0), stat  # detached into its own session
            wait_accepting(port)
            for _ in range(3):
                assert echo_once(port) == b"ping"
            wait_until(
                lambda: len(parse_records(log_file.read_text())) >= 4,
                10,
                lambda: log_file.read_text(),
            )
            os.kill(pid, signal.SIGTERM)

            def exited() -> bool:
                try:  # a zombie counts as exited; gone too
                    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
                except OSError:
                    return True

            wait_until(exited, 10, lambda: log_file.read_text())
            assert "stopped" in log_file.read_text()
        finally:
            for pid in pids or pids_with(str(config)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- keepalive

_TIMER = re.compile(r"timer:\(keepalive,([0-9.]+)(min|sec|ms)?")


def keepalive_timers(filter_expr: str) -> list[float]:
    out = subprocess.run(
        ["ss", "-tnoe", "state", "established", filter_expr],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    return [float(m.group(1)) for m in _TIMER.finditer(out)]


def test_tcp_keepalive_on_accepted_and_outbound_sockets(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        config = f"""
[network]
tcp_keepalive = 7

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            with connect(port) as s:
                s.sendall(b"ka")
                assert s.recv(2) == b"ka"
                accepted = keepalive_timers(f"( sport = :{port} )")
                outbound = keepalive_timers(f"( dport = :{srv.port} )")
            # ss prints the time left before the first probe: 0 < t <= 7 (seconds, though
            # some ss builds print the unit as "ms"); the default of 15 would show ~15
            assert len(accepted) == 1 and 0 < accepted[0] <= 7, accepted
            assert len(outbound) == 1 and 0 < outbound[0] <= 7, outbound


# ----------------------------------------------------------------------------- interface


def bind_to_device_permitted() -> bool:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not bind_to_device_permitted(), reason="SO_BINDTODEVICE not permitted")
def test_interface_and_listen_interface_lo(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-i", "lo", "-e", "lo"], tmp_path=tmp_path
        )
        with relay:
            relay.start()
            assert echo_once(port) == b"ping"
            (rec,) = relay.wait_records(1)
            assert rec["close"] == "eof", rec


@pytest.mark.skipif(not bind_to_device_permitted(), reason="SO_BINDTODEVICE not permitted")
def test_unknown_outbound_interface_fails_the_connection_not_the_relay(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-i", "nosuchdev0"], tmp_path=tmp_path
        )
        with relay:
            relay.start()
            with connect(port) as s, contextlib.suppress(OSError):
                s.sendall(b"ping")
                s.shutdown(socket.SHUT_WR)
                recv_all(s)
            (rec,) = relay.wait_records(1)
            assert rec["close"] == "connect-failed", rec
            assert "No such device" in relay.log, relay.log
            assert relay.running
            assert srv.connections == 0


def test_unknown_listen_interface_exits_3(tmp_path: Path) -> None:
    port = free_port()
    res = run_relay(["-l", f"127.0.0.1:{port}", "-r", "127.0.0.1:9", "-e", "nosuchdev0"])
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert f"127.0.0.1:{port}" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
