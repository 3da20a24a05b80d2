"""`snirelay check --api` against a real relay with its admin API, in front of a real
nginx (the doctor zoo's `named` server): the probes are found among the relay's recent
handshakes, what the relay received is compared with what they sent, and an API that
refuses (a token) or does not answer is a finding. A tiny proxy that rewrites the SNI
in the ClientHello (same length, in place) stands for a middlebox in between."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.relay import REPO, RelayProcess, free_port
from integration.doctor_zoo import DoctorZoo

pytestmark = pytest.mark.integration

SNIRELAY = str(REPO / ".venv" / "bin" / "snirelay")
NAME = "app.example.com"


def check(zoo: DoctorZoo, port: int, *extra: str, env: dict[str, str] | None = None
          ) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """check NAME:PORT through 127.0.0.1 trusting the zoo's CA, --json; no token from
    our own environment unless `env` gives one."""
    environ = {k: v for k, v in os.environ.items() if k != "SNIRELAY_API_TOKEN"}
    environ.update(env or {})
    res = subprocess.run(
        [SNIRELAY, "check", f"{NAME}:{port}", "--connect", "127.0.0.1", "--ca", str(zoo.ca),
         *extra, "--json"],
        capture_output=True, text=True, timeout=60, env=environ,
    )  # fmt: skip
    assert res.stderr == "", res.stderr
    return res.returncode, json.loads(res.stdout)


def codes(doc: dict[str, Any]) -> list[str]:
    return [f["code"] for f in doc["findings"]]


@contextlib.contextmanager
def relay_for(zoo: DoctorZoo, tmp_path: Path, token: str | None = None
              ) -> Iterator[tuple[int, str]]:  # fmt: skip
    """A relay passing TLS through to the zoo's `named` nginx, a route for NAME and the
    endpoint's remote for the rest, with its API: (relay port, API URL)."""
    backend = f"127.0.0.1:{zoo.ports['named']}"
    config = (
        '[api]\nlisten = "127.0.0.1:0"\n' + (f'token = "{token}"\n' if token else "")
        + f'[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{backend}"\n'
        + f'  [[endpoints.routes]]\n  server_names = ["{NAME}"]\n  remote = "{backend}"\n'
    )  # fmt: skip
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=2)
        api = re.search(r"listening on (127\.0\.0\.1:\d+) \(api, http\)", relay.log)
        assert api is not None, relay.log
        yield relay.port("endpoints[0]"), f"http://{api.group(1)}"


def test_the_probes_are_found_as_sent(doctor_zoo: DoctorZoo, tmp_path: Path) -> None:
    with relay_for(doctor_zoo, tmp_path) as (port, api):
        plain_rc, plain = check(doctor_zoo, port)
        rc, doc = check(doctor_zoo, port, "--api", api)
    assert rc == plain_rc == 0
    assert codes(doc) == codes(plain) == ["no-sni-different-certificate"]
    assert plain["api"] is None
    assert doc["api"]["url"] == api and doc["api"]["asked"] and doc["api"]["error"] is None
    matched = {m["probe"]: m for m in doc["api"]["matched"]}
    assert set(matched) == {"sni", "no-sni"}
    for p in doc["probes"]:
        m = matched[p["label"]]
        assert m["local"] == p["local"] == m["entry"]["client"] and m["same_address"]
        assert m["entry"]["sni"] == p["sni"]
        assert m["entry"]["mode"] == "passthrough" and m["entry"]["outcome"] == "passthrough"
    assert matched["sni"]["entry"]["route"] == "endpoints[0].routes[0]"


def test_the_text_report_says_what_the_relay_saw(doctor_zoo: DoctorZoo, tmp_path: Path) -> None:
    with relay_for(doctor_zoo, tmp_path) as (port, api):
        res = subprocess.run(
            [SNIRELAY, "check", f"{NAME}:{port}", "--connect", "127.0.0.1", "--ca",
             str(doctor_zoo.ca), "--api", api],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"  relay saw: SNI {NAME}, sent upstream SNI {NAME}, route" in res.stdout
    assert "  relay saw: no SNI, sent upstream no SNI, route default" in res.stdout
    assert "sni-changed-in-between" not in res.stdout


def test_a_token_is_needed_when_the_relay_has_one(doctor_zoo: DoctorZoo, tmp_path: Path) -> None:
    with relay_for(doctor_zoo, tmp_path, token="t0k") as (port, api):
        rc, refused = check(doctor_zoo, port, "--api", api)
        _, wrong = check(doctor_zoo, port, "--api", api, "--api-token", "nope")
        _, flag = check(doctor_zoo, port, "--api", api, "--api-token", "t0k")
        _, env = check(doctor_zoo, port, "--api", api, env={"SNIRELAY_API_TOKEN": "t0k"})
    assert rc == 0  # a warning
    assert codes(refused) == ["no-sni-different-certificate", "api-refused"]
    assert refused["api"]["error"].startswith("HTTP 401") and refused["api"]["matched"] == []
    assert "no token was sent" in refused["findings"][1]["message"]
    assert "not the relay's" in wrong["findings"][1]["message"]
    for doc in (flag, env):
        assert codes(doc) == ["no-sni-different-certificate"]
        assert len(doc["api"]["matched"]) == 2


def test_an_api_nobody_listens_on_is_unreachable(doctor_zoo: DoctorZoo, tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    rc, doc = check(doctor_zoo, doctor_zoo.ports["named"], "--api", nobody)
    assert rc == 0
    assert codes(doc) == ["no-sni-different-certificate", "api-unreachable"]
    assert "connection refused" in doc["api"]["error"]
    # no probe connected: the API is not asked
    rc, doc = check(doctor_zoo, doctor_zoo.ports["closed"], "--api", nobody)
    assert rc == 1 and codes(doc) == ["connect-refused"]
    assert doc["api"] == {"url": nobody, "asked": False, "matched": [], "error": None}


def test_a_terminating_relay_sees_whole_handshakes_and_names_its_failure(
    doctor_zoo: DoctorZoo, tmp_path: Path
) -> None:
    """The relay terminates with the zoo's certificate for NAME and re-originates: with
    sni=NAME the probes complete (the relay records "ok", not a client that left
    mid-handshake), and the SNI it sent the backend for the probe without one is its own
    doing; with sni= a name the backend has no certificate for, the relay's failure is
    named."""
    leaf = doctor_zoo.leaves["named"]
    listen = f"tls;cert={leaf};key={leaf.with_name('named.key')}"
    backend = f"127.0.0.1:{doctor_zoo.ports['named']}"
    endpoint = '[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "{}"\nlisten_transport = "{}"\n'
    endpoint += 'remote_transport = "tls;sni={};ca={}"\n'
    config = '[api]\nlisten = "127.0.0.1:0"\n' + "".join(
        endpoint.format(backend, listen, sni, doctor_zoo.ca) for sni in (NAME, "nope.example.com")
    )
    with RelayProcess(config=config, tmp_path=tmp_path) as relay:
        relay.start(wait_listen=3)
        found = re.search(r"listening on (127\.0\.0\.1:\d+) \(api, http\)", relay.log)
        assert found is not None, relay.log
        api = f"http://{found.group(1)}"
        good_rc, good = check(doctor_zoo, relay.port("endpoints[0]"), "--api", api)
        bad_rc, bad = check(doctor_zoo, relay.port("endpoints[1]"), "--api", api)
    assert good_rc == 0 and "relay-outcome" not in codes(good), good["findings"]
    matched = {m["probe"]: m["entry"] for m in good["api"]["matched"]}
    assert set(matched) == {"sni", "no-sni"}
    for e in matched.values():
        assert e["outcome"] == "ok" and e["reoriginated"] and e["upstream_sni"] == NAME
    assert matched["no-sni"]["sni"] is None  # the relay's own sni=: not a change in between
    assert "sni-changed-in-between" not in codes(good)
    assert bad_rc == 1
    failed = [f for f in bad["findings"] if f["code"] == "relay-outcome"]
    assert failed and failed[0]["severity"] == "error", bad["findings"]
    assert "tls-backend: certificate verify failed" in failed[0]["message"]
    assert failed[0]["confirm"] == "snirelay explain -c CONFIG --probe"


# -- a middlebox that rewrites the SNI -----------------------------------------------------


class SniRewriter:
    """A TCP proxy on 127.0.0.1 that patches `old` into `new` (same length) in the
    client's first TLS record, in place, and copies everything else as it is. It
    connects onward from 127.0.0.2 with the client's own port, as a transparent box
    (NAT) would keep it."""

    def __init__(self, upstream: int, old: bytes, new: bytes) -> None:
        assert len(old) == len(new)
        self.upstream, self.old, self.new = upstream, old, new
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, addr = self.listener.accept()
                threading.Thread(target=self._serve, args=(client, addr[1]), daemon=True).start()

    def _serve(self, client: socket.socket, port: int) -> None:
        with client, socket.socket() as up:
            up.bind(("127.0.0.2", port))
            up.connect(("127.0.0.1", self.upstream))
            head = b""
            while len(head) < 5 or len(head) < 5 + int.from_bytes(head[3:5]):
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            up.sendall(head.replace(self.old, self.new, 1))
            back = threading.Thread(target=_copy, args=(up, client), daemon=True)
            back.start()
            _copy(client, up)
            back.join(10)

    def close(self) -> None:
        self.listener.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def test_an_sni_rewritten_in_between_is_an_error(doctor_zoo: DoctorZoo, tmp_path: Path) -> None:
    with relay_for(doctor_zoo, tmp_path) as (port, api):
        box = SniRewriter(port, NAME.encode(), b"api.example.com")
        try:
            rc, doc = check(doctor_zoo, box.port, "--api", api)
        finally:
            box.close()
    assert rc == 1
    changed = [f for f in doc["findings"] if f["code"] == "sni-changed-in-between"]
    assert [f["severity"] for f in changed] == ["error"], doc["findings"]
    assert f"sent SNI {NAME} and the relay received SNI api.example.com" in changed[0]["message"]
    matched = {m["probe"]: m for m in doc["api"]["matched"]}
    assert matched["sni"]["entry"]["sni"] == "api.example.com"
    assert matched["sni"]["entry"]["client"].startswith("127.0.0.2:")
    assert not matched["sni"]["same_address"]  # matched by the port, as through NAT
