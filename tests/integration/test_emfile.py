"""The accept loop survives running out of file descriptors (EMFILE).

The relay runs with RLIMIT_NOFILE lowered to 64 (soft and hard, set in the child
before exec, so the relay's own "raise soft to hard" cannot undo it). Enough
clients connect to exhaust its descriptors; the relay must log the condition, stay
alive, and serve a new connection normally once the clients are gone.
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
from pathlib import Path

import pytest

from helpers.peers import EchoServer, recv_all
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until

pytestmark = pytest.mark.integration

NOFILE = 64
CLIENTS = 120
FD_EXHAUSTED = re.compile(r"EMFILE|ENFILE|too many open files|file descriptor", re.IGNORECASE)


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def echo_once(port: int, payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def test_accept_loop_survives_emfile(tmp_path: Path) -> None:
    with EchoServer(timeout=30) as srv:
        port = free_port()
        relay = RelayProcess(
            ["-l", f"127.0.0.1:{port}", "-r", srv.addr], tmp_path=tmp_path, preexec_fn=low_nofile
        )
        with relay:
            relay.start()
            assert echo_once(port, b"before") == b"before"

            clients: list[socket.socket] = []
            try:
                for _ in range(CLIENTS):
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=2)
                    except OSError:
                        break  # accept queue full: descriptors are certainly exhausted
                    s.settimeout(2)
                    clients.append(s)
                    with contextlib.suppress(OSError):
                        s.sendall(b"x")
                # give the relay time to hit the limit and say so
                wait_until(lambda: FD_EXHAUSTED.search(relay.log), 10, lambda: relay.log)
                assert relay.running, relay.log
            finally:
                for s in clients:
                    s.close()

            # descriptors free up: a new connection is served normally (allow the
            # relay's back-off and the teardown of the old connections)
            wait_until(
                lambda: echo_once(port, b"after") == b"after",
                15,
                lambda: relay.log,
                ignore=(OSError,),
            )
            assert relay.running, relay.log
            # a few more in a row, to be sure it is not a one-off
            for i in range(5):
                assert echo_once(port, b"again %d" % i) == b"again %d" % i
            # no connection was left behind in a broken state by the exhaustion
            assert "internal error" not in relay.log, relay.log
            assert relay.stop() == 0, relay.log
