"""The supervisor of `workers > 1`: signals passed on, its own death, giving up.

Each test runs the real relay (`python -m snirelay -w 2`) and watches its process tree
through /proc (helpers/procs.py) and its log:

- SIGHUP to the supervisor reaches every worker, each reloads its config
  (the same), and no process dies or is replaced;
- a second SIGTERM during a long drain is passed on: the workers cut what is left
  with a reset and the whole relay exits at once, not after `drain_timeout`;
- the supervisor killed with SIGKILL: each worker sees its control channel close,
  drains and exits (no orphans serving on);
- a worker that keeps dying right after it starts: the supervisor restarts it with a
  growing back-off, gives up after a few quick deaths in a row, stops the other
  worker and exits 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from helpers.peers import EchoServer, HeldServer, connect, recv_all
from helpers.procs import alive, children_of
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until
from snirelay.supervisor import MAX_QUICK_DEATHS

pytestmark = pytest.mark.integration


def echo_once(port: int, msg: bytes) -> None:
    with connect(port, timeout=10) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == msg


def two_workers(tmp_path: Path, port: int, remote: str) -> RelayProcess:
    """A relay with two workers, started (both listening), forwarding `port` to `remote`."""
    relay = RelayProcess(["-l", f"127.0.0.1:{port}", "-r", remote, "-w", "2"], tmp_path=tmp_path)
    try:
        relay.start(wait_listen=2)
        assert len(children_of(relay.pid)) == 2, relay.log
    except BaseException:
        relay.stop(signal.SIGKILL, timeout=5)
        raise
    return relay


def test_sighup_reaches_every_worker_and_kills_none(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = two_workers(tmp_path, port, srv.addr)
        with relay:
            workers = children_of(relay.pid)
            os.kill(relay.pid, signal.SIGHUP)
            relay.wait_log("reloaded: 1 endpoint(s) switched", count=2, timeout=10)
            assert "SIGHUP: passed on to 2 worker(s)" in relay.log
            assert relay.running
            assert children_of(relay.pid) == workers, relay.log  # none died, none replaced
            for i in range(10):
                echo_once(port, b"after hup %d" % i)
            assert "started worker" not in relay.log, relay.log
            assert relay.stop(signal.SIGTERM, timeout=15) == 0, relay.log


def test_second_sigterm_is_passed_on_and_not_waited_out(tmp_path: Path) -> None:
    with HeldServer() as srv:  # a transfer still running: 64 KiB sent, the rest held
        port = free_port()
        config = f"""
workers = 2
drain_timeout = 60

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start(wait_listen=2)
            workers = children_of(relay.pid)
            with connect(port, timeout=20) as s:
                assert s.recv(1024)
                os.kill(relay.pid, signal.SIGTERM)
                relay.wait_log("draining for up to 60s", timeout=10)
                assert relay.running
                t0 = time.monotonic()
                os.kill(relay.pid, signal.SIGTERM)
                code = relay.wait(timeout=10)
                took = time.monotonic() - t0
                s.settimeout(10)
                with pytest.raises(ConnectionResetError):
                    while s.recv(65536):
                        pass
            assert code == 0, relay.log
            assert took < 5, (took, relay.log)
            assert not any(alive(p) for p in workers)
            (rec,) = relay.records()
            assert rec["close"] == "shutdown", rec


def test_workers_stop_when_the_supervisor_dies(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay = two_workers(tmp_path, port, srv.addr)
        with relay:
            workers = children_of(relay.pid)
            os.kill(relay.pid, signal.SIGKILL)
            try:
                wait_until(lambda: not any(alive(p) for p in workers), 10, "workers exited")
            finally:
                for p in workers:  # no orphan outlives the test
                    if alive(p):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
            log = relay.wait_log("stopped", count=2, timeout=5)
            assert log.count("the supervisor is gone (control channel closed)") == 2, log


def test_worker_dying_at_start_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    """Kill every worker of one slot as soon as it appears: after a few quick deaths in
    a row (with a growing back-off between restarts) the supervisor gives up, stops
    the other worker, and exits 1."""
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-w", "2"], tmp_path=tmp_path
        )
        with relay:
            relay.start(wait_listen=2)
            keep, victim = children_of(relay.pid)
            killed: list[int] = []
            deadline = time.monotonic() + 40
            while relay.running and time.monotonic() < deadline:
                for pid in children_of(relay.pid):
                    if pid != keep and pid not in killed:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.01)
            assert not relay.running, relay.log
            assert relay.wait(timeout=1) == 1, relay.log
            log = relay.log
            assert "quick deaths in a row" in log and "giving up" in log, log
            assert victim in killed
            assert len(killed) == MAX_QUICK_DEATHS, (killed, log)
            assert log.count("restarting it in") == len(killed) - 1, log
            assert not alive(keep)


def test_a_reload_moves_the_supervisors_own_log_too(tmp_path: Path) -> None:
    """[log] output changed by a reload: the workers and the supervisor write there
    (a worker's death, which only the supervisor logs, lands in the new file)."""
    with EchoServer() as srv:
        port = free_port()
        moved = tmp_path / "moved.log"
        endpoint = f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n'
        head = 'workers = 2\n[log]\nlevel = "info"\noutput = "stderr"\n'
        with RelayProcess(config=head + endpoint, tmp_path=tmp_path, log_flags=False) as relay:
            relay.start(wait_listen=2)
            assert relay.config_path is not None
            relay.config_path.write_text(
                f'workers = 2\n[log]\nlevel = "info"\noutput = "{moved}"\n' + endpoint
            )
            os.kill(relay.pid, signal.SIGHUP)
            wait_until(
                lambda: moved.exists() and moved.read_text().count("reloaded:") == 2,
                10,
                "both workers log the reload in the new file",
            )
            victim = children_of(relay.pid)[0]
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: f"worker {victim} " in moved.read_text(),
                10,
                lambda: f"the supervisor logs the death in the new file:\n{moved.read_text()}",
            )
            echo_once(port, b"still serving")
