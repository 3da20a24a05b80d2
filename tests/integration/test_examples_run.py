"""Every config in examples/ runs: the relay starts with it and forwards.

How it works: the example is loaded once (`load_config`) to learn its listen ports and
every remote port (endpoints and routes). Each run of consecutive ports is moved to a
fresh block of consecutive loopback ports (so ranges stay ranges): remote blocks are
bound and held by echo servers that greet with their port number, listen blocks were
free a moment ago. The file is rewritten with that port map (TOML: every
``127.0.0.1:PORT[-PORT]``; legacy JSON: ``listening_ports`` / ``remote_ports``), the
relay is started with it, and for every listening port:

- a non-TLS, non-HTTP payload must come back from one of the endpoint's own remotes;
- for endpoints with routes, a plaintext HTTP request with ``Host: NAME`` for each
  exact name (and ``www.SUFFIX`` for each wildcard) must land on that route's remotes.

Examples with TLS transports (sni-rewrite.toml) first run whole, with the certificate
files they name made from a test CA, and must start and stop cleanly; the checks above
then run on the same example without the routes that terminate or re-originate (they
speak plain bytes).
"""

from __future__ import annotations

import json
import re
import socket
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from helpers.peers import connect, recv_all
from helpers.ports import PortEchoes, bind_consecutive, free_consecutive
from helpers.relay import REPO, RelayProcess
from snirelay.config.load import load_config
from snirelay.config.model import Config, Upstream

pytestmark = pytest.mark.integration

EXAMPLES = sorted(p for p in (REPO / "examples").iterdir() if p.suffix in (".toml", ".json"))
PAYLOAD = b"\x00not tls, not http\n"
_ADDR = re.compile(r"127\.0\.0\.1:(\d+)(?:-(\d+))?")


def runs(ports: set[int]) -> list[tuple[int, int]]:
    """Sorted ports as (first, count) runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for p in sorted(ports):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def upstreams(config: Config) -> Iterator[Upstream]:
    for ep in config.endpoints:
        for _, up in ep.upstreams():
            yield up


def rewrite(text: str, legacy: bool, pmap: dict[int, int]) -> str:
    def one(token: str) -> str:
        first, sep, last = token.partition("-")
        return f"{pmap[int(first)]}-{pmap[int(last)]}" if sep else str(pmap[int(first)])

    if legacy:
        data: dict[str, Any] = json.loads(text)
        for key in ("listening_ports", "remote_ports"):
            data[key] = [one(str(t)) for t in data[key]]
        return json.dumps(data)

    def sub(m: re.Match[str]) -> str:
        return "127.0.0.1:" + one(m.group(0).split(":", 1)[1])

    return _ADDR.sub(sub, text)


def without_transport_routes(text: str) -> str:
    data = tomllib.loads(text)
    for ep in data["endpoints"]:
        ep["routes"] = [
            r
            for r in ep.get("routes", [])
            if "listen_transport" not in r and "remote_transport" not in r
        ]
    return tomli_w.dumps(data)


def reply_port(port: int, payload: bytes) -> int:
    with connect(port, timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
    head, sep, rest = reply.partition(b"\n")
    assert sep and rest == payload, reply
    return int(head)


def check_serves(relay: RelayProcess, config: Config) -> int:
    """Drive every listener and route of `config`; return the connections made."""
    made = 0
    for ep in config.endpoints:
        own = {a.port for a in ep.upstream.remotes}
        assert reply_port(ep.listen.port, PAYLOAD) in own, (ep.place, relay.log)
        made += 1
        for route in ep.routes:
            ports = {a.port for a in route.upstream.remotes}
            for name in route.server_names:
                if name.startswith("~"):
                    continue
                host = "www" + name[1:] if name.startswith("*") else name
                req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                assert reply_port(ep.listen.port, req) in ports, (route.place, name, relay.log)
                made += 1
    return made


def write_tls_files(directory: Path, config: Config) -> None:
    """Every certificate, key and CA file the example's transports name, from one test
    CA (a leaf per certificate, for the names relay.example.com and 127.0.0.1)."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    for up in upstreams(config):
        for t in (up.listen_transport, up.remote_transport):
            if t is None:
                continue
            for cert, key in ((t.cert, t.key), (t.client_cert, t.client_key)):
                if cert is not None and key is not None:
                    leaf = ca.issue_cert("relay.example.com", "127.0.0.1")
                    (directory / cert).write_bytes(leaf.cert_chain_pems[0].bytes())
                    leaf.private_key_pem.write_to_path(str(directory / key))
            if t.ca is not None:
                ca.cert_pem.write_to_path(str(directory / t.ca))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(tmp_path: Path, example: Path) -> None:
    legacy = example.suffix == ".json"
    original = load_config(str(example))
    listen = {ep.listen.port for ep in original.endpoints}
    remote = {a.port for up in upstreams(original) for a in up.remotes}
    assert not listen & remote, "an example port is both listened on and forwarded to"

    with ExitStack() as stack:
        pmap: dict[int, int] = {}
        for first, count in runs(remote):
            echoes = PortEchoes(bind_consecutive(count))
            stack.callback(echoes.close)
            pmap.update({first + i: echoes.ports[i] for i in range(count)})
        for first, count in runs(listen):
            base = free_consecutive(count)
            pmap.update({first + i: base + i for i in range(count)})

        text = rewrite(example.read_text(), legacy, pmap)
        fmt = "json" if legacy else "toml"
        uses_transports = any(
            up.listen_transport is not None or up.remote_transport is not None
            for up in upstreams(original)
        )
        if uses_transports:
            # the certificates it names, made here (relative paths: the relay's cwd)
            write_tls_files(tmp_path / "tls-run", original)
            with RelayProcess(config=text, fmt=fmt, tmp_path=tmp_path / "tls-run") as full:
                full.start(wait_listen=len(original.endpoints))
                assert full.stop() == 0, full.log
            text = without_transport_routes(text)  # the checks below speak plain bytes

        with RelayProcess(config=text, fmt=fmt, tmp_path=tmp_path) as relay:
            assert relay.config_path is not None
            config = load_config(str(relay.config_path))
            assert len(config.endpoints) == len(original.endpoints)
            relay.start(wait_listen=len(config.endpoints))
            made = check_serves(relay, config)
            recs = relay.wait_records(made)
            assert all(r["close"] == "eof" for r in recs), recs
            assert relay.stop() == 0, relay.log
