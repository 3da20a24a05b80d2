"""A legacy v1 file and its `snirelay convert` output route every port the same way.

How it works: three backends greet with their port number (`PortEchoes`): 127.0.0.1:B
and :B+2, and 127.0.0.2:B+1, with 127.0.0.1:B+1 left unbound, so a connection sent to
the wrong address is refused rather than answered. The legacy file uses both listen
and both remote addresses and lists whose ranges do not line up entry by entry::

    listening_addresses ["127.0.0.1", "127.0.0.2"]   listening_ports ["L-L+1", "L+2", L+3]
    remote_addresses    ["127.0.0.1", "127.0.0.2"]   remote_ports    ["B", "B+1-B+2"]

which realm pairs as L -> .1:B, .2:L+1 -> .2:B+1, L+2 -> .1:B+2, L+3 -> .1:B (the first
remote port). The relay runs on the legacy file, is stopped, then runs on the converted
TOML on the same ports; each listen port must reach realm's backend both times.
"""

from __future__ import annotations

import json
import socket
import tomllib
from contextlib import ExitStack
from pathlib import Path

import pytest

from helpers.peers import connect, recv_all
from helpers.ports import PortEchoes, bind_consecutive, free_consecutive
from helpers.relay import RelayProcess
from snirelay import convert

pytestmark = pytest.mark.integration

PAYLOAD = b"\x00legacy\n"


def reached(host: str, port: int) -> int:
    """The port of the backend a connection to host:port ends up at."""
    with connect(port, host=host, timeout=10) as s:
        s.sendall(PAYLOAD)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    head, sep, rest = reply.partition(b"\n")
    assert sep and rest == PAYLOAD, reply
    return int(head)


def routes(config: str, fmt: str, tmp_path: Path, listens: list[tuple[str, int]]) -> list[int]:
    """Run the relay on `config`; the backend port each listen address reaches."""
    tmp_path.mkdir()
    with RelayProcess(config=config, fmt=fmt, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=len(listens))
        got = [reached(host, port) for host, port in listens]
        assert relay.stop() == 0, relay.log
    return got


def test_legacy_and_converted_route_alike(tmp_path: Path) -> None:
    with ExitStack() as stack:
        near = bind_consecutive(3)
        base = int(near[1].getsockname()[1]) - 1
        near.pop(1).close()  # 127.0.0.1:B+1 answers nobody
        stack.callback(PortEchoes(near).close)
        far = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stack.callback(far.close)
        far.bind(("127.0.0.2", base + 1))
        stack.callback(PortEchoes([far]).close)

        lbase = free_consecutive(4)
        legacy = {
            "listening_addresses": ["127.0.0.1", "127.0.0.2"],
            "listening_ports": [f"{lbase}-{lbase + 1}", str(lbase + 2), lbase + 3],
            "remote_addresses": ["127.0.0.1", "127.0.0.2"],
            "remote_ports": [str(base), f"{base + 1}-{base + 2}"],
        }
        listens = [
            ("127.0.0.1", lbase),
            ("127.0.0.2", lbase + 1),
            ("127.0.0.1", lbase + 2),
            ("127.0.0.1", lbase + 3),
        ]
        realm = [base, base + 1, base + 2, base]

        old = tmp_path / "old.json"
        old.write_text(json.dumps(legacy))
        new = tmp_path / "new.toml"
        assert convert.main([str(old), "-o", str(new)]) == 0
        text = new.read_text()
        # what realm can load: one HOST:PORT on each side, one endpoint per pair
        assert [(e["listen"], e["remote"]) for e in tomllib.loads(text)["endpoints"]] == [
            (f"{lh}:{lp}", f"127.0.0.{1 + (rp == base + 1)}:{rp}")
            for (lh, lp), rp in zip(listens, realm, strict=True)
        ]

        assert routes(old.read_text(), "json", tmp_path / "legacy", listens) == realm
        assert routes(text, "toml", tmp_path / "converted", listens) == realm
