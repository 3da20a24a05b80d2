"""`snirelay check` and `snirelay explain --probe` against real nginx servers that show
each TLS problem (tests/integration/doctor_zoo.py), run as a user runs them: the
command line, text and --json, exit codes asserted. The `confirm` command a finding
gives is run too, and must show the same problem."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.relay import REPO
from integration.doctor_zoo import DoctorZoo

pytestmark = pytest.mark.integration

SNIRELAY = str(REPO / ".venv" / "bin" / "snirelay")


def check(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SNIRELAY, "check", *args], capture_output=True, text=True, timeout=timeout
    )


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    res = check(*args, "--json")
    assert res.stderr == "", res.stderr
    return res.returncode, json.loads(res.stdout)


def codes(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["code"], f["severity"]) for f in doc["findings"]]


def by_name(zoo: DoctorZoo, key: str, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
    """check NAME:PORT through 127.0.0.1, trusting the zoo's root."""
    return check_json(f"{name}:{zoo.ports[key]}", "--connect", "127.0.0.1", "--ca",
                      str(zoo.ca), *extra)  # fmt: skip


def by_name_text(zoo: DoctorZoo, key: str, name: str) -> subprocess.CompletedProcess[str]:
    """The text report of `by_name`'s check."""
    return check(f"{name}:{zoo.ports[key]}", "--connect", "127.0.0.1", "--ca", str(zoo.ca))


def same_in_text(res: subprocess.CompletedProcess[str], code: int, doc: dict[str, Any]) -> None:
    """The text report has the exit code and every finding of the JSON document."""
    assert res.returncode == code and res.stderr == "", res.stderr
    for f in doc["findings"]:
        assert f"{f['severity']} [{f['code']}]" in res.stdout, res.stdout
    assert res.stdout.rstrip().endswith(f"{doc['errors']} error(s), {doc['warnings']} warning(s)")


def test_a_good_server_verifies_and_only_the_ip_is_a_warning(doctor_zoo: DoctorZoo) -> None:
    code, doc = by_name(doctor_zoo, "full_chain", "chain.example.com")
    assert codes(doc) == [("address-not-covered", "warning")]
    assert code == 0
    named = doc["probes"][0]
    assert named["outcome"] == "ok" and named["verified"] is True
    assert named["tls_version"] in ("TLSv1.2", "TLSv1.3") and named["cipher"]
    assert [c["sans"] for c in named["chain"]][0] == ["chain.example.com"]
    assert len(named["chain"]) == 2  # leaf and intermediate, as sent
    assert named["covers"] == {"chain.example.com": True, "127.0.0.1": False}
    assert named["chain"][0]["days_left"] > 0 and named["chain"][0]["key"] == "EC P-256"
    assert check(f"chain.example.com:{doctor_zoo.ports['full_chain']}", "--connect",
                 "127.0.0.1", "--ca", str(doctor_zoo.ca), "--strict").returncode == 1  # fmt: skip


def test_a_different_default_certificate_is_a_warning(doctor_zoo: DoctorZoo) -> None:
    code, doc = by_name(doctor_zoo, "named", "app.example.com")
    assert codes(doc) == [("no-sni-different-certificate", "warning")]
    assert code == 0
    assert "default.example.com" in doc["findings"][0]["message"]
    assert doc["probes"][1]["chain"][0]["sans"] == ["default.example.com"]
    text = check(f"app.example.com:{doctor_zoo.ports['named']}", "--connect", "127.0.0.1",
                 "--ca", str(doctor_zoo.ca))  # fmt: skip
    assert text.returncode == 0
    assert "warning [no-sni-different-certificate]" in text.stdout
    assert "fix: A: have clients use the name" in text.stdout


@pytest.mark.parametrize(
    ("key", "name", "want"),
    [
        ("expired", "expired.example.com", "expired"),
        ("not_yet_valid", "future.example.com", "not-yet-valid"),
        ("self_signed", "selfsigned.example.com", "self-signed"),
        ("no_intermediate", "chain.example.com", "chain-incomplete"),
        ("other_name", "app.example.com", "name-not-covered"),
    ],
)
def test_certificate_problems_are_errors(
    doctor_zoo: DoctorZoo, key: str, name: str, want: str
) -> None:
    code, doc = by_name(doctor_zoo, key, name)
    assert code == 1
    errors = [c for c, s in codes(doc) if s == "error"]
    assert errors == [want], doc["findings"]
    assert doc["errors"] == 1
    same_in_text(by_name_text(doctor_zoo, key, name), code, doc)


def test_the_missing_intermediate_names_where_it_lives(doctor_zoo: DoctorZoo) -> None:
    _, doc = by_name(doctor_zoo, "no_intermediate", "chain.example.com")
    found = next(f for f in doc["findings"] if f["code"] == "chain-incomplete")
    assert "http://ca.invalid/intermediate.crt" in found["message"]
    assert "fullchain" in found["fix"]
    assert len(doc["probes"][0]["chain"]) == 1


def test_the_confirm_command_shows_the_same_problem(doctor_zoo: DoctorZoo) -> None:
    """The command a finding gives, run as given, shows openssl's view of it."""
    _, doc = by_name(doctor_zoo, "expired", "expired.example.com")
    confirm = doc["findings"][0]["confirm"]
    assert confirm.startswith("openssl s_client ")
    res = subprocess.run(confirm, shell=True, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "certificate has expired" in res.stdout + res.stderr


def test_a_refusal_without_sni_names_the_alert(doctor_zoo: DoctorZoo) -> None:
    code, doc = by_name(doctor_zoo, "reject_no_sni", "strict.example.com")
    assert codes(doc) == [("no-sni-refused", "warning")]
    assert code == 0
    bare = doc["probes"][1]
    assert bare["outcome"] == "alert" and bare["alert"], bare
    assert f"alert {bare['alert']}" in doc["findings"][0]["message"]
    same_in_text(by_name_text(doctor_zoo, "reject_no_sni", "strict.example.com"), code, doc)
    # an unknown name is refused too: with that name it is an error
    code, doc = by_name(doctor_zoo, "reject_no_sni", "nosuch.example.com")
    assert code == 1 and codes(doc)[0] == ("handshake-refused", "error")


def test_plain_http_is_named(doctor_zoo: DoctorZoo) -> None:
    for args in (
        [f"127.0.0.1:{doctor_zoo.ports['plain_http']}"],
        [f"app.example.com:{doctor_zoo.ports['plain_http']}", "--connect", "127.0.0.1"],
    ):
        code, doc = check_json(*args)  # fmt: skip
        assert code == 1
        assert codes(doc) == [("not-tls", "error")]
        assert "plain HTTP" in doc["findings"][0]["message"]
        assert doc["findings"][0]["confirm"].startswith("curl -sv http://127.0.0.1:")
        same_in_text(check(*args), code, doc)


def test_nothing_listening_is_a_refused_connection(doctor_zoo: DoctorZoo) -> None:
    code, doc = check_json(f"127.0.0.1:{doctor_zoo.ports['closed']}")
    assert code == 1 and codes(doc) == [("connect-refused", "error")]
    same_in_text(check(f"127.0.0.1:{doctor_zoo.ports['closed']}"), code, doc)


def test_a_silent_service_ends_at_the_deadline(doctor_zoo: DoctorZoo) -> None:
    t0 = time.monotonic()
    code, doc = check_json(f"127.0.0.1:{doctor_zoo.ports['silent']}", "--timeout", "1")
    took = time.monotonic() - t0
    assert code == 1 and codes(doc) == [("handshake-timeout", "error")]
    assert took < 10, took  # one probe, a 1 s deadline, plus start-up


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose accept queue is full and never drained: the kernel drops further
    SYNs, so a connection attempt gets no answer at all, as behind a DROP rule."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # until one does not complete: the queue is full
            s = socket.socket()
            s.settimeout(0.5)
            fillers.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled")
        yield port
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def test_a_filtered_port_is_a_connect_timeout(full_backlog: int) -> None:
    code, doc = check_json(f"127.0.0.1:{full_backlog}", "--timeout", "1")
    assert code == 1 and codes(doc) == [("connect-timeout", "error")]


def test_usage_errors_exit_2_with_one_line() -> None:
    for args in (["nohost"], ["a.example.com:99999"], ["a.example.com:443", "--sni", "10.0.0.1"],
                 ["::1:443"], ["a.example.com:443", "--connect", "not-an-ip"]):  # fmt: skip
        res = check(*args)
        assert res.returncode == 2, args
        assert res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    res = check("127.0.0.1:1", "--ca", "/nonexistent/ca.pem")
    assert res.returncode == 2 and "/nonexistent/ca.pem" in res.stderr


# -- explain --probe -------------------------------------------------------------------


def explain(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    res = subprocess.run([SNIRELAY, "explain", "-c", str(config), "--json", *args],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.stderr == "", res.stderr
    return res.returncode, json.loads(res.stdout)


def test_explain_probe_finds_the_wrong_backend_certificate(
    doctor_zoo: DoctorZoo, tmp_path: Path
) -> None:
    """A passthrough route and a re-originating route whose backend serves a certificate
    for another name are reported before any client meets them; the same routes toward
    the right backend are not."""
    ports = doctor_zoo.ports
    config = tmp_path / "relay.toml"

    def write(backend: int) -> None:
        config.write_text(
            '[[endpoints]]\nlisten = "127.0.0.1:8443"\nremote = "127.0.0.1:9"\n'
            '  [[endpoints.routes]]\n  server_names = ["app.example.com"]\n'
            f'  remote = "127.0.0.1:{backend}"\n'
            '  [[endpoints.routes]]\n  server_names = ["relay.example.com"]\n'
            '  listen_transport = "tls;servername=relay.example.com"\n'
            f'  remote = "127.0.0.1:{backend}"\n'
            f'  remote_transport = "tls;sni=app.example.com;ca={doctor_zoo.ca}"\n'
        )

    write(ports["other_name"])
    code, doc = explain(config, "--probe")
    assert code == 1
    found = {(w["code"], w["place"]) for w in doc["warnings"]}
    assert ("probe-name-not-covered", "endpoints[0].routes[0]") in found
    assert ("probe-name-not-covered", "endpoints[0].routes[1]") in found
    write(ports["named"])
    code, doc = explain(config, "--probe")
    found = {(w["code"], w["place"]) for w in doc["warnings"]}
    assert ("probe-name-not-covered", "endpoints[0].routes[0]") not in found
    assert not any(c.startswith("probe-") and p == "endpoints[0].routes[1]" for c, p in found)
    # without --probe nothing is probed
    code, doc = explain(config)
    assert not any(w["code"].startswith("probe-") for w in doc["warnings"])


def test_explain_probe_tells_the_relay_to_send_the_name(
    doctor_zoo: DoctorZoo, tmp_path: Path
) -> None:
    """Re-originating to a backend IP without sni=: the backend refuses clients without
    SNI, and the relay is such a client; the fix is sni=, not the client-side A or B."""
    config = tmp_path / "relay.toml"
    config.write_text(
        '[[endpoints]]\nlisten = "127.0.0.1:8443"\n'
        f'remote = "127.0.0.1:{doctor_zoo.ports["reject_no_sni"]}"\n'
        'listen_transport = "tls;servername=relay.example.com"\n'
        f'remote_transport = "tls;ca={doctor_zoo.ca}"\n'
    )
    code, doc = explain(config, "--probe")
    assert code == 1
    [refused] = [w for w in doc["warnings"] if w["code"] == "probe-no-sni-refused"]
    assert "unrecognized_name" in refused["message"]
    assert refused["fix"].startswith('send the backend its name: remote_transport = "tls;sni=')
    config.write_text(config.read_text().replace(
        "tls;ca=", f"tls;sni={doctor_zoo.server_names['reject_no_sni']};ca="))  # fmt: skip
    code, doc = explain(config, "--probe")
    assert not any(w["code"].startswith("probe-") for w in doc["warnings"]), doc["warnings"]
