"""`workers = N` / `-w N`: N worker processes sharing the listeners with SO_REUSEPORT.

How the tests see the workers:

- the process tree: the children of the relay's pid, read from /proc/*/stat (ppid);
- the log: every worker logs its own "listening on" line (and the supervisor a
  "worker PID ready" line per worker), and numbers its connections from 1, so with
  two workers serving some connection ids appear twice in the records; each record
  also carries `worker`, the pid of the worker that served it;
- 200 echo connections (8 client threads) all get their own payload back;
- SIGTERM to the parent reaches every worker; all exit and the parent returns 0;
- a worker killed with SIGKILL is replaced by a new one, which serves;
- `listen = "127.0.0.1:0"`: every worker listens on the one port chosen before the
  fork;
- SIGTERM while the workers are being forked leaves no orphan.

Process helpers (children, liveness) are in helpers/procs.py; the supervisor's other
duties (signals, its own death, giving up) are in test_supervisor.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from helpers.peers import EchoServer, connect, recv_all
from helpers.procs import alive, children_of, pids_with
from helpers.relay import RelayProcess, free_port
from helpers.wait import poll, wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = 200
THREADS = 8


def run_clients(port: int) -> list[str]:
    """CONNECTIONS echo round trips from THREADS threads; returns the failures."""
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(CONNECTIONS))

    def work() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            msg = f"conn {i} ".encode() * 50
            try:
                with connect(port, timeout=10) as s:
                    s.sendall(msg)
                    s.shutdown(socket.SHUT_WR)
                    got = recv_all(s)
                if got != msg:
                    raise AssertionError(f"got {len(got)} bytes {got[:40]!r}")
            except (OSError, AssertionError) as exc:
                with lock:
                    failures.append(f"conn {i}: {exc!r}")

    threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "client threads did not finish"
    return failures


@pytest.mark.parametrize("how", ["flag", "config"])
def test_two_workers_serve_and_stop(tmp_path: Path, how: str) -> None:
    with EchoServer() as srv:
        port = free_port()
        if how == "flag":
            relay = RelayProcess(
                ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-w", "2"], tmp_path=tmp_path
            )
        else:
            config = f"""
workers = 2

[[endpoints]]
listen = "127.0.0.1:{port}"
remote = "{srv.addr}"
"""
            relay = RelayProcess(config=config, tmp_path=tmp_path)
        with relay:
            relay.start(wait_listen=2)  # one "listening on" line per worker
            workers = children_of(relay.pid)
            assert len(workers) == 2, (workers, relay.log)

            failures = run_clients(port)
            assert failures == [], failures[:5]
            assert srv.connections == CONNECTIONS

            recs = relay.wait_records(CONNECTIONS, timeout=15)
            assert len(recs) == CONNECTIONS, len(recs)
            assert all(r["close"] == "eof" for r in recs), [r for r in recs if r["close"] != "eof"]
            ids = Counter(r["id"] for r in recs)
            # each worker numbers its connections from 1: ids seen twice = both served
            assert max(ids.values()) == 2, ids.most_common(3)
            shared = sum(1 for n in ids.values() if n == 2)
            assert shared >= CONNECTIONS // 10, f"{shared} ids served by both workers"
            # ... and every record names the worker that served it
            served_by = Counter(int(r["worker"]) for r in recs)
            assert set(served_by) == set(workers), (served_by, workers)
            assert len({(r["worker"], r["id"]) for r in recs}) == CONNECTIONS

            assert relay.stop(signal.SIGTERM, timeout=15) == 0, relay.log
            wait_until(lambda: not any(alive(p) for p in workers), 5, str(workers))
            assert relay.log.count("stopped") == 2, relay.log


RESTARTED = re.compile(r"worker (\d+) was killed by signal 9 \(SIGKILL\).*started worker (\d+)")


def test_killed_worker_is_restarted(tmp_path: Path) -> None:
    """A worker killed by SIGKILL (e.g. the OOM killer) is replaced: the supervisor logs
    the old pid, how it ended and the new pid, and the new worker serves."""
    with EchoServer() as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr, "-w", "2"], tmp_path=tmp_path
        )
        with relay:
            relay.start(wait_listen=2)
            workers = children_of(relay.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            log = relay.wait_log("started worker", timeout=10)
            m = RESTARTED.search(log)
            assert m is not None, log
            assert int(m.group(1)) == workers[0], log
            new = int(m.group(2))
            relay.wait_log(f"worker {new} ready", timeout=10)
            assert children_of(relay.pid) == sorted([workers[1], new]), relay.log
            assert not alive(workers[0])

            failures = run_clients(port)
            assert failures == [], failures[:5]
            recs = relay.wait_records(CONNECTIONS, timeout=15)
            served_by = Counter(int(r["worker"]) for r in recs)
            assert set(served_by) == {workers[1], new}, served_by
            assert relay.stop(signal.SIGTERM, timeout=15) == 0, relay.log


def test_port_zero_every_worker_gets_the_same_port(tmp_path: Path) -> None:
    """`listen = "127.0.0.1:0"` with workers: the port is chosen once, before the fork,
    so every worker listens on it, logs it, and serves it."""
    config = """
workers = 2

[[endpoints]]
listen = "127.0.0.1:0"
remote = "{remote}"
"""
    with (
        EchoServer() as srv,
        RelayProcess(config=config.format(remote=srv.addr), tmp_path=tmp_path) as relay,
    ):
        relay.start(wait_listen=2)
        bound = relay.listening()
        assert len(bound) == 2, relay.log
        ports = {port for _, port, _ in bound}
        assert len(ports) == 1 and 0 not in ports, bound
        (port,) = ports
        assert relay.port("endpoints[0]") == port
        failures = run_clients(port)
        assert failures == [], failures[:5]
        recs = relay.wait_records(CONNECTIONS, timeout=15)
        assert set(int(r["worker"]) for r in recs) == set(children_of(relay.pid)), relay.log
        assert relay.stop(signal.SIGTERM, timeout=15) == 0, relay.log


def none_left(marker: str) -> bool:
    return not pids_with(marker)


def test_sigterm_during_worker_start_leaves_no_orphans(tmp_path: Path) -> None:
    """SIGTERM as soon as the first worker exists (16 workers widen the fork loop).
    Three attempts; any orphaned worker fails the test. Orphans are killed by pid."""
    orphans: list[int] = []
    for attempt in range(3):
        port = free_port()
        marker = f"127.0.0.1:{port}"
        relay = RelayProcess(
            ["-l", marker, "-r", "127.0.0.1:9", "-w", "16"], tmp_path=tmp_path / str(attempt)
        )
        relay.tmp_path.mkdir()
        with relay:
            relay.spawn()
            poll(functools.partial(children_of, relay.pid), 10, interval=0.001)
            os.kill(relay.pid, signal.SIGTERM)
            relay.wait(timeout=15)
        poll(functools.partial(none_left, marker), 2)  # orphans, if any, are killed below
        left = pids_with(marker)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        orphans += left
        if orphans:
            break
    assert orphans == [], f"{len(orphans)} workers outlived the parent"
