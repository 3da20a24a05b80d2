"""The demo: its certificates and backends in-process, then the whole demo as a subprocess
(bounded by `--duration`) with a client through each of its two relay endpoints."""

from __future__ import annotations

import queue
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.relay import relay_env
from helpers.wait import wait_until
from snirelay.demo import DEFAULT_NAME, NAMES, Backends, make_certs, relay_config

TIMEOUT = 10


def https_get(port: int, name: str | None, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    if name is None:
        ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def _line_with(lines: queue.Queue[str], needle: str, seen: list[str]) -> str | None:
    """The first line containing `needle` among those printed so far (each queued line
    is moved to `seen`), or None yet."""
    while not lines.empty():
        seen.append(lines.get_nowait())
    return next((line for line in seen if needle in line), None)


def echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    b = Backends(make_certs(tmp_path, (*NAMES, DEFAULT_NAME)))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_backends_answer_with_name_and_sni(backends: Backends) -> None:
    ca = backends.certs.ca
    for name in (*NAMES, DEFAULT_NAME):
        assert https_get(backends.ports[name], name, ca) == f"name={name} sni={name}\n"
    assert https_get(backends.ports[DEFAULT_NAME], None, ca) == f"name={DEFAULT_NAME} sni=\n"
    assert echo(backends.ports["echo"], b"hi") == b"hi"


def test_relay_config_loads(backends: Backends, tmp_path: Path) -> None:
    from snirelay.config.load import load_config

    path = tmp_path / "relay.toml"
    path.write_text(relay_config(40001, 40002, backends.ports))
    config = load_config(str(path))
    forward, sni = config.endpoints
    assert forward.upstream.remotes[0].port == backends.ports["echo"]
    assert sni.upstream.remotes == ()
    assert [r.server_names or r.when for r in sni.routes] == [(NAMES[0],), (NAMES[1],), "no_sni"]


def test_demo_runs_and_serves(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from snirelay.demo import main; sys.exit(main(sys.argv[1:]))",
                "--duration",
                "8",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=relay_env(),
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        try:
            first = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"demo printed nothing\n{log_path.read_text()}")
        m = re.match(
            r"snirelay demo: forward=127\.0\.0\.1:(\d+) sni=127\.0\.0\.1:(\d+) ca=(\S+)"
            r" rewrite=127\.0\.0\.1:(\d+)",
            first,
        )
        assert m, first
        forward, sni, ca, rewrite = int(m[1]), int(m[2]), Path(m[3]), int(m[4])
        # the relay starts listening just after the instructions are printed
        echoed = wait_until(
            lambda: echo(forward, b"hi"),
            TIMEOUT,
            "demo relay listens",
            ignore=(ConnectionRefusedError,),
        )
        assert echoed == b"hi"
        for name in NAMES:
            assert https_get(sni, name, ca) == f"name={name} sni={name}\n"
        assert https_get(sni, None, ca) == f"name={DEFAULT_NAME} sni=\n"
        # the rewrite: by IP (no SNI) and as relay.example.com, the backend gets its name
        want = f"name={NAMES[0]} sni={NAMES[0]}\n"
        assert https_get(rewrite, "127.0.0.1", ca) == want
        assert https_get(rewrite, "relay.example.com", ca) == want
        seen: list[str] = []
        shown = wait_until(
            lambda: _line_with(lines, "rewrite check:", seen), TIMEOUT, "rewrite check"
        )
        assert f"backend answered: name={NAMES[0]} sni={NAMES[0]}" in shown, shown
        # the WebSocket tunnel: 64 KiB in, through two relays and ws frames, echoed
        tunnel = wait_until(
            lambda: _line_with(lines, "tunnel check:", seen), TIMEOUT, "tunnel check"
        )
        assert tunnel.rstrip().endswith("echoed: every byte back"), tunnel
        # the doctor: the name verifies; by IP the no_sni route's backend sends its own
        # certificate, which check names as a warning (and nothing else)
        doctor = wait_until(
            lambda: _line_with(lines, "doctor check:", seen), TIMEOUT, "doctor check"
        )
        assert "-> warning [no-sni-different-certificate] (" in doctor, doctor
        # the admin API: healthy, and its metrics count what went through
        api_line = wait_until(lambda: _line_with(lines, "The admin API (", seen), TIMEOUT, "api")
        api = int(re.search(r"127\.0\.0\.1:(\d+)\)", api_line)[1])  # type: ignore[index]
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=TIMEOUT) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=TIMEOUT) as r:
            scraped = r.read().decode()
        assert (
            f'snirelay_connections_total{{endpoint="127.0.0.1:{forward}",route="default"}}'
            in scraped
        )
        assert proc.wait(timeout=TIMEOUT + 8) == 0, log_path.read_text()
        assert not ca.exists(), "demo left its temporary directory behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(timeout=5)
        assert proc.stdout is not None
        proc.stdout.close()
