"""UDP on a wildcard listener: the answers leave from the address the client sent to,
and with `send_proxy` the PROXY v2 header names it (IP_PKTINFO), not 0.0.0.0.

A wildcard listener opens every interface, so the test runs in a network namespace of
its own (`unshare -rn`: a user and a network namespace, with only `lo`, brought up
inside): the relay listens on 0.0.0.0 there, a client sends to 127.0.0.1 and to
127.0.0.2, the backend reads each datagram's header and answers, and the client reads
where the answer came from. The whole scenario is a small
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
    listen = "{sys.argv[2]}:{port}"
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
        for target in sys.argv[3:]:
            fam = socket.AF_INET6 if ":" in target else socket.AF_INET
            client = socket.socket(fam, socket.SOCK_DGRAM)
            client.bind((target, 0))  # the reply comes back to this address
            client.settimeout(5)
            client.sendto(b"hello " + target.encode(), (target, port))
            data, peer = backend.recvfrom(65536)
            header = parse_proxy_header(data)
            backend.sendto(b"answer", peer)
            answer, answered_from = client.recvfrom(65536)
            seen[target] = {
                "src": list(header.src), "dst": list(header.dst),
                "payload": data[header.size:].decode(),
                "client": list(client.getsockname()),
                "answer": answer.decode(), "answered_from": list(answered_from),
            }
            client.close()
        print(json.dumps(seen))
    finally:
        relay.terminate()
        relay.wait(10)
    """
)


@pytest.mark.parametrize(
    ("listen", "targets"),
    [
        ("0.0.0.0", ("127.0.0.1", "127.0.0.2")),
        ("[::]", ("::1", "127.0.0.2")),  # dual-stack: IPv6, and IPv4 as ::ffff:a.b.c.d
    ],
)
def test_the_answer_and_the_header_name_the_address_the_client_sent_to(
    tmp_path: Path, listen: str, targets: tuple[str, ...]
) -> None:
    script = tmp_path / "inside.py"
    script.write_text(SCRIPT)
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = [sys.executable, str(script), str(tmp_path / "relay.toml"), listen, *targets]
    res = subprocess.run(
        ["unshare", "-rn", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    seen = json.loads(res.stdout)
    for target in targets:
        got = seen[target]
        mapped = f"::ffff:{target}" if listen == "[::]" and ":" not in target else target
        assert got["payload"] == f"hello {target}"
        assert got["dst"][0] in (target, mapped), got  # not 0.0.0.0 or ::
        assert got["src"][0] in (got["client"][0], f"::ffff:{got['client'][0]}"), got
        assert got["src"][1] == got["client"][1], got
        # the answer leaves from the address the client sent to (else the routing
        # picks 127.0.0.1, which a client that sent to 127.0.0.2 would drop)
        assert got["answer"] == "answer" and got["answered_from"][0] == target, got
