"""The status page in a real browser: headless Chromium loads `GET /` from a running relay.

A relay with the admin API and two forward endpoints: one to an echo server, one to a
port nobody listens on. One echo connection goes through the first; one connection to
the second fails, so its backend is marked down (the test waits for `/status.json` to
say so). Then `chromium --headless --dump-dom` loads the page, and the DOM it built
must show both endpoints' addresses, UP on the echo backend's row and DOWN on the dead
one's. A second run takes a screenshot, which must be a PNG.

Chromium runs as root here (hence --no-sandbox), with its profile and HOME in
`tmp_path` (nothing is written to the user's home), in its own process group that is
killed if it does not finish within 60 s. Skipped when `chromium` is not installed;
CI installs it (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers.peers import EchoServer, connect, recv_all
from helpers.relay import RelayProcess, free_port
from helpers.wait import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium")
TIMEOUT = 60


def relay_config(api: int, echo_port: int, echo: str, dead_port: int, dead: str) -> str:
    return f"""
[log]
level = "info"
output = "stderr"

[api]
listen = "127.0.0.1:{api}"

[[endpoints]]
listen = "127.0.0.1:{echo_port}"
remote = "{echo}"

[[endpoints]]
listen = "127.0.0.1:{dead_port}"
remote = "{dead}"
"""


def status(api: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/status.json", timeout=5) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


def backend_up(doc: dict[str, Any], remote: str) -> bool | None:
    for ep in doc["endpoints"]:
        for route in ep["routes"]:
            for b in route["backends"]:
                if b["remote"] == remote:
                    return bool(b["up"])
    return None


def both_listening(relay: RelayProcess) -> bool:
    return {"endpoints[0]", "endpoints[1]"} <= {place for _, _, place in relay.listening()}


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with `args`; its stdout. Fails if it hangs or exits non-zero."""
    assert CHROMIUM is not None
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # running as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own group: a hang is killed with all its children
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chromium did not finish within {TIMEOUT}s: {cmd}\n{err[-3000:]}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {cmd}\n{err[-3000:]}"
    return out


def row_texts(dom: str) -> list[str]:
    """Each table row of the DOM as its visible text, tags dropped."""
    rows = re.findall(r"<tr\b[^>]*>(.*?)</tr>", dom, flags=re.S)
    return [" ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in rows]


def the_row(rows: list[str], remote: str) -> str:
    found = [r for r in rows if remote in r]
    assert len(found) == 1, f"rows with {remote}: {found}"
    return found[0]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps)")
def test_status_page_in_headless_chromium(tmp_path: Path) -> None:
    api, echo_port, dead_port = free_port(), free_port(), free_port()
    dead = f"127.0.0.1:{free_port()}"  # free a moment ago: nobody listens there
    with EchoServer() as echo:
        config = relay_config(api, echo_port, echo.addr, dead_port, dead)
        with RelayProcess(config=config, tmp_path=tmp_path) as relay:
            relay.start()
            wait_until(lambda: both_listening(relay), 10, lambda: relay.log)
            wait_until(lambda: status(api), 10, lambda: relay.log, ignore=(OSError,))

            with connect(echo_port) as sock:
                sock.sendall(b"hello status page")
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b"hello status page"
            with connect(dead_port) as sock:
                sock.sendall(b"anyone?")
                try:
                    assert recv_all(sock) == b""
                except ConnectionResetError:
                    pass
            wait_until(lambda: backend_up(status(api), dead) is False, 10, lambda: relay.log)

            url = f"http://127.0.0.1:{api}/"
            dom = chromium(tmp_path, "--dump-dom", url)
            png = tmp_path / "status.png"
            chromium(tmp_path, "--window-size=1400,900", f"--screenshot={png}", url)

    assert "<title>snirelay status</title>" in dom, dom[:2000]
    headings = re.findall(r"<h2>(.*?)</h2>", dom, flags=re.S)
    assert any(f"127.0.0.1:{echo_port}" in h and "endpoints[0]" in h for h in headings), headings
    assert any(f"127.0.0.1:{dead_port}" in h and "endpoints[1]" in h for h in headings), headings
    rows = row_texts(dom)
    up = the_row(rows, echo.addr).split()
    down = the_row(rows, dead).split()
    assert "UP" in up and "DOWN" not in up, up
    assert "DOWN" in down and "UP" not in down, down
    assert "refused" in " ".join(down).lower(), down  # the last error is shown
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
