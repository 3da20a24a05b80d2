"""The admin API (`[api]`) of a real relay, over real HTTP.

- /metrics, parsed with prometheus_client's own parser: the counters match the traffic
  the test sent (connections and bytes per endpoint and route, a dead backend's connect
  failure and its down state, the sniff outcomes of a routed endpoint);
- /connections lists a live connection with its bytes; /handshakes the SNI received;
- /healthz; 404 and 405;
- a token: no or a wrong `Authorization: Bearer` is 401 with a log line, the right one 200;
- bound to a non-loopback address without a token: exit 2, saying why;
- garbage, a huge head, a huge body, a client that sends nothing: 400, 413, 413, 408,
  and relaying goes on meanwhile;
- with two workers, the figures of both (not yet: strict xfail).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.peers import EchoServer, HeldServer, connect, recv_all
from helpers.relay import RelayProcess, free_port, run_relay
from helpers.wait import wait_until

pytestmark = pytest.mark.integration


def get(port: int, path: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m[(name, tuple(sorted(labels.items())))]


def total(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of `name`'s samples that carry `labels` (with workers: over the `worker`
    label, which each worker's series has)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= set(lab))


def api_relay(
    tmp_path: Path, body: str, api_extra: str = "", top: str = ""
) -> tuple[RelayProcess, int]:
    """A relay with the API on a free port: `top` (top-level keys), the [api] table with
    `api_extra`, then `body` (endpoints)."""
    api = free_port()
    config = f'{top}\n[api]\nlisten = "127.0.0.1:{api}"\n{api_extra}\n{body}'
    return RelayProcess(config=config, tmp_path=tmp_path), api


def echo(port: int, data: bytes) -> bytes:
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s)


def client_hello(name: str | None) -> bytes:
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_metrics_count_the_traffic(tmp_path: Path) -> None:
    dead = free_port()
    with EchoServer() as srv:
        fwd, gone = free_port(), free_port()
        body = (
            f'[[endpoints]]\nlisten = "127.0.0.1:{fwd}"\nremote = "{srv.addr}"\n'
            f'[[endpoints]]\nlisten = "127.0.0.1:{gone}"\nremote = "127.0.0.1:{dead}"\n'
        )
        relay, api = api_relay(tmp_path, body)
        with relay:
            relay.start(wait_listen=3)
            for i in range(5):
                assert echo(fwd, b"x" * (1000 + i)) == b"x" * (1000 + i)
            with connect(gone) as s:  # the backend refuses: the client is closed
                assert recv_all(s) == b""
            relay.wait_records(6)
            m = metrics(api)
            ep, down = f"127.0.0.1:{fwd}", f"127.0.0.1:{gone}"
            assert sample(m, "snirelay_connections_total", endpoint=ep, route="default") == 5
            sent = sum(1000 + i for i in range(5))
            for direction in ("up", "down"):
                got = sample(m, "snirelay_bytes_total", endpoint=ep, route="default",
                             direction=direction)  # fmt: skip
                assert got == sent, (direction, got)
            assert sample(m, "snirelay_connections_active", endpoint=ep, route="default") == 0
            assert sample(m, "snirelay_backend_up", endpoint=ep, route="default",
                          backend=srv.addr) == 1  # fmt: skip
            assert sample(m, "snirelay_backend_up", endpoint=down, route="default",
                          backend=f"127.0.0.1:{dead}") == 0  # fmt: skip
            assert sample(m, "snirelay_connect_failures_total", endpoint=down, route="default",
                          backend=f"127.0.0.1:{dead}") == 1  # fmt: skip
            assert sample(m, "snirelay_connect_seconds_count", endpoint=ep) == 5


def test_sniff_outcomes_handshakes_and_live_connections(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        body = (
            f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n'
            f'  [[endpoints.routes]]\n  server_names = ["app.example.com"]\n'
            f'  remote = "{srv.addr}"\n'
        )
        relay, api = api_relay(tmp_path, body)
        with relay:
            relay.start(wait_listen=2)
            hello = client_hello("app.example.com")
            assert echo(port, hello) == hello
            bare = client_hello(None)
            assert echo(port, bare) == bare
            head = b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
            assert echo(port, head) == head
            with connect(port) as s:  # garbage is not TLS: the default route takes it
                s.sendall(b"\x16\x03\x01\x00\x05hello")
                s.shutdown(socket.SHUT_WR)
                recv_all(s)
            relay.wait_records(4)
            m = metrics(api)
            ep = f"127.0.0.1:{port}"
            for outcome in ("sni", "no_sni", "http", "parse_error"):
                assert sample(m, "snirelay_sniff_total", endpoint=ep, outcome=outcome) == 1, outcome
            status, body_ = get(api, "/handshakes")
            assert status == 200
            shakes = json.loads(body_)
            assert [h["sni"] for h in shakes[:2]] == [None, "app.example.com"]  # newest first
            assert shakes[1]["route"] == "endpoints[0].routes[0]"
            assert shakes[1]["upstream_sni"] == "app.example.com"
            assert shakes[1]["outcome"] == "passthrough" and shakes[1]["alpn"] == []
            # a live connection, with what it moved so far
            with connect(port) as s:
                s.sendall(hello + b"ping")
                got = b""
                while len(got) < len(hello) + 4:
                    got += s.recv(65536)
                conns = wait_until(lambda: json.loads(get(api, "/connections")[1]), 10)
                [live] = conns
                assert live["sni"] == "app.example.com" and live["phase"] == "pump"
                assert live["client"] == f"127.0.0.1:{s.getsockname()[1]}"
                assert live["bytes_up"] == live["bytes_down"] == len(hello) + 4
                active = sample(metrics(api), "snirelay_connections_active", endpoint=ep,
                                route="endpoints[0].routes[0]")  # fmt: skip
                assert active == 1


def test_healthz_and_unknown_pages(tmp_path: Path) -> None:
    with EchoServer() as srv:
        relay, api = api_relay(
            tmp_path, f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{srv.addr}"\n'
        )
        with relay:
            relay.start(wait_listen=2)
            assert get(api, "/healthz") == (200, b"ok\n")
            assert get(api, "/nope")[0] == 404
            assert get(api, "/metrics", method="POST")[0] == 405
            assert get(api, "/reload")[0] == 405  # GET: it changes things, so POST only


def test_a_token_is_required_when_set(tmp_path: Path) -> None:
    with EchoServer() as srv:
        relay, api = api_relay(
            tmp_path, f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{srv.addr}"\n',
            'token = "s3cret-token"',
        )  # fmt: skip
        with relay:
            relay.start(wait_listen=2)
            assert get(api, "/metrics")[0] == 401
            assert get(api, "/metrics", token="wrong")[0] == 401
            assert get(api, "/healthz", token="s3cret-token-and-more")[0] == 401
            assert get(api, "/metrics", token="s3cret-token")[0] == 200
            relay.wait_log("without the right token: 401", count=3)


def test_a_public_address_without_a_token_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[api]\nlisten = "0.0.0.0:9090"\n[[endpoints]]\nlisten = "127.0.0.1:0"\n'
        'remote = "127.0.0.1:9"\n'
    )
    res = run_relay(["-c", str(config)])
    assert res.returncode == 2, res
    assert res.stderr.count("\n") == 1 and "api.listen" in res.stderr, res.stderr
    assert "api.token" in res.stderr and "loopback" in res.stderr


def raw_request(port: int, data: bytes, timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        return recv_all(s)


def test_bad_requests_get_4xx_and_relaying_goes_on(tmp_path: Path) -> None:
    with EchoServer() as srv:
        port = free_port()
        relay, api = api_relay(
            tmp_path, f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n'
        )
        with relay:
            relay.start(wait_listen=2)
            assert raw_request(api, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
            huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
            answer = raw_request(api, huge)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:40]
            body = b"POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
            assert raw_request(api, body).startswith(b"HTTP/1.1 413 ")
            # a client that sends nothing: 408 at the request deadline; relaying meanwhile
            t0 = time.monotonic()
            with socket.create_connection(("127.0.0.1", api), timeout=30) as slow:
                assert echo(port, b"still relaying") == b"still relaying"
                answer = recv_all(slow)
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:40]
            assert 8 < time.monotonic() - t0 < 20
            assert relay.running
            relay.wait_log("no whole request within")


def test_metrics_with_two_workers_are_the_whole_relays(tmp_path: Path) -> None:
    """The worker in slot 0 serves the API and gathers both workers' figures; a reload
    through it answers once both reloaded."""
    with EchoServer() as srv:
        port = free_port()
        relay, api = api_relay(
            tmp_path,
            f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n',
            top="workers = 2",
        )
        with relay:
            relay.start(wait_listen=3)  # two workers' listeners and one API
            for _ in range(40):
                assert echo(port, b"hi") == b"hi"
            records = relay.wait_records(40)
            assert len({r["worker"] for r in records}) == 2, "SO_REUSEPORT spread them"
            m = metrics(api)
            ep = f"127.0.0.1:{port}"
            per_worker = {dict(lab)["worker"]: v for (n, lab), v in m.items()
                          if n == "snirelay_connections_total"}  # fmt: skip
            assert set(per_worker) == {"0", "1"} and all(per_worker.values()), per_worker
            got: Any = total(m, "snirelay_connections_total", endpoint=ep, route="default")
            assert got == 40
            assert total(m, "snirelay_bytes_total", endpoint=ep, route="default",
                         direction="up") == 80  # fmt: skip
            with connect(port) as s:  # a live one, on whichever worker: listed once
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                [live] = wait_until(lambda: json.loads(get(api, "/connections")[1]), 10)
                assert str(live["worker"]) in {str(r["worker"]) for r in records}
            status, answer = get(api, "/reload", method="POST")
            result = json.loads(answer)
            assert status == 200 and result["ok"] and len(result["workers"]) == 2, result
            assert not result["missing"]
            assert relay.config_path is not None
            relay.config_path.write_text(relay.config_path.read_text() + "bogus = 1\n")
            status, answer = get(api, "/reload", method="POST")
            result = json.loads(answer)
            assert status == 400 and not result["ok"] and "bogus" in result["error"], result
            assert len(result["workers"]) == 2 and echo(port, b"on") == b"on"


def test_a_handshake_whose_backend_refused_says_so(tmp_path: Path) -> None:
    dead, port = free_port(), free_port()
    body = (
        f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "127.0.0.1:{dead}"\n'
        f'  [[endpoints.routes]]\n  server_names = ["gone.example.com"]\n'
        f'  remote = "127.0.0.1:{dead}"\n'
    )
    relay, api = api_relay(tmp_path, body)
    with relay:
        relay.start(wait_listen=2)
        with connect(port) as s:
            s.sendall(client_hello("gone.example.com"))
            assert recv_all(s) == b""
        relay.wait_records(1)
        [shake] = json.loads(get(api, "/handshakes")[1])
        assert shake["sni"] == "gone.example.com" and shake["outcome"] == "connect-failed"


def test_head_is_answered_without_a_body(tmp_path: Path) -> None:
    relay, api = api_relay(
        tmp_path, '[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:9"\n'
    )
    with relay:
        relay.start(wait_listen=2)
        answer = raw_request(api, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 3" in head, answer
        assert body == b""


def test_a_restart_next_to_a_draining_relay_gets_the_api_port(tmp_path: Path) -> None:
    """The API answers while the relay drains; a new relay can still bind its port."""
    with HeldServer() as srv:
        port = free_port()
        body = f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{srv.addr}"\n'
        old_dir, new_dir = tmp_path / "old", tmp_path / "new"
        old_dir.mkdir()
        new_dir.mkdir()
        old, api = api_relay(old_dir, body, top="drain_timeout = 30")
        with old:
            old.start(wait_listen=2)
            held = connect(port)
            assert held.recv(1)  # a transfer runs (and is held)
            os.kill(old.pid, signal.SIGTERM)
            old.wait_log("draining for up to")
            assert get(api, "/healthz") == (503, b"stopping\n")
            assert old.config_path is not None
            with RelayProcess(config=old.config_path.read_text(), tmp_path=new_dir) as new:
                new.start(wait_listen=2)
                assert get(api, "/healthz")[0] in (200, 503)  # either answers: both bound
                assert new.stop(signal.SIGTERM, timeout=15) == 0
            held.close()
