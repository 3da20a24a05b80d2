"""UDP on a wildcard listener with `send_proxy`: the PROXY v2 header names the address
the client sent to (IP_PKTINFO), not 0.0.0.0.

A wildcard listener opens every interface, so the test runs in a network namespace of
its own (`unshare -rn`: a user and a network namespace, with only `lo`, brought up
inside): the relay listens on 0.0.0.0 there, a client sends to 127.0.0.1 and to
127.0.0.2, and the backend reads each datagram's header. The whole scenario is a small
script run inside the namespace; it prints what the backend saw, as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.relay import SRC

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import json, socket, subprocess, sys, time
    from snirelay.wire.proxy import parse_proxy_header

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))
    backend.settimeout(5)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = f'''
    [[endpoints]]
    listen = "0.0.0.0:{port}"
    remote = "127.0.0.1:{backend.getsockname()[1]}"
    network = {{ use_udp = true, no_tcp = true, send_proxy = true, send_proxy_version = 2 }}
    '''
    with open(sys.argv[1], "w") as f:
        f.write(config.replace("\\n    ", "\\n"))
    relay = subprocess.Popen(
        [sys.executable, "-m", "snirelay", "-c", sys.argv[1], "--log-level", "info",
         "--log-output", "stderr"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = relay.stderr.readline()  # "listening on 0.0.0.0:PORT (endpoints[0], udp)"
        deadline = time.monotonic() + 10
        while "listening on" not in line and time.monotonic() < deadline:
            line = relay.stderr.readline()
        assert "listening on" in line, line
        seen = {}
        for target in ("127.0.0.1", "127.0.0.2"):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind((target, 0))  # the reply comes back to this address
            client.sendto(b"hello " + target.encode(), (target, port))
            data = backend.recv(65536)
            header = parse_proxy_header(data)
            seen[target] = {
                "src": list(header.src), "dst": list(header.dst),
                "payload": data[header.size:].decode(),
                "client": list(client.getsockname()),
            }
            client.close()
        print(json.dumps(seen))
    finally:
        relay.terminate()
        relay.wait(10)
    """
)


def test_the_header_names_the_address_the_client_sent_to(tmp_path: Path) -> None:
    script = tmp_path / "inside.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    res = subprocess.run(
        ["unshare", "-rn", sys.executable, str(script), str(tmp_path / "relay.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    for target in ("127.0.0.1", "127.0.0.2"):
        got = seen[target]
        assert got["payload"] == f"hello {target}"
        assert got["dst"][0] == target, got  # not 0.0.0.0
        assert got["src"] == got["client"], got
