"""`snirelay hello`: JSON for captured first bytes, error exits, routes with -c."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from snirelay.diagnose.hello import main

VEC = Path(__file__).resolve().parents[1] / "vectors" / "clienthello"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else out), err


def test_tls_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(VEC / "curl_sni_http2.bin")], capsys)
    assert code == 0
    assert out == {
        "kind": "tls",
        "sni": "emby.example.com",
        "sni_normalized": "emby.example.com",
        "sni_is_ip": False,
        "alpn": ["h2", "http/1.1"],
        "versions": ["TLS1.3", "TLS1.2", "TLS1.1", "TLS1.0"],
        "ech": False,
        "psk": False,
        "early_data": False,
        "records": 1,
        "size": 517,
    }


def test_nulls_where_absent(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(VEC / "openssl_s_client_noservername.bin")], capsys)
    assert code == 0 and out["sni"] is None and out["alpn"] is None


def test_raw_case_kept(capsys: pytest.CaptureFixture[str]) -> None:
    f = VEC / "variant_sni_upper_dot__curl_sni_http2.bin"
    code, out, _ = run([str(f)], capsys)
    assert (out["sni"], out["sni_normalized"]) == ("EMBY.EXAMPLE.COM.", "emby.example.com")


def test_hex_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (VEC / "nss_tstclnt_ech_grease.bin").read_bytes()
    text = "\n".join(raw[i : i + 16].hex(" ") for i in range(0, len(raw), 16)) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    code, out, _ = run(["-", "--hex"], capsys)
    assert code == 0 and out["ech"] is True and out["sni"] == "emby.example.com"


def test_http(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "req.txt"
    f.write_bytes(b"GET / HTTP/1.1\r\nHost: Emby.Example.com:8096\r\n\r\n")
    code, out, _ = run([str(f)], capsys)
    assert code == 0 and out["kind"] == "http" and out["host"] == "emby.example.com"


@pytest.mark.parametrize(
    "name,needle",
    [
        ("ssh_client_banner.bin", "not-tls"),
        ("variant_trunc_in_sni__curl_sni_http2.bin", "incomplete"),
        ("variant_bad_sni_list_overflow__curl_sni_http2.bin", "malformed"),
        ("variant_empty.bin", "incomplete"),
    ],
)
def test_not_a_hello_exits_1(name: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([str(VEC / name)], capsys)
    assert code == 1 and out == ""
    assert needle in err and err.count("\n") == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run([str(tmp_path / "missing.bin")], capsys)[0] == 2
    bad = tmp_path / "bad.hex"
    bad.write_text("16 03 zz")
    code, _, err = run([str(bad), "--hex"], capsys)
    assert code == 2 and "not hex" in err
    assert run([], capsys)[0] == 2


CONFIG = """
[[endpoints]]
listen = "127.0.0.1:8443"
remote = "127.0.0.1:9000"

  [[endpoints.routes]]
  server_names = ["jellyfin.example.org"]
  remote = "127.0.0.1:9001"

  [[endpoints.routes]]
  server_names = ["*.example.com"]
  remote = "127.0.0.1:9002"
  extra_remotes = ["127.0.0.1:9003"]

  [[endpoints.routes]]
  when = "no_sni"
  remote = "127.0.0.1:9004"

[[endpoints]]
listen = "127.0.0.1:8080"
remote = "127.0.0.1:9100"
"""


def test_routes_with_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "relay.toml"
    cfg.write_text(CONFIG)
    code, out, _ = run([str(VEC / "curl_sni_http2.bin"), "-c", str(cfg)], capsys)
    assert code == 0
    assert out["routes"] == [
        {
            "endpoint": "endpoints[0]",
            "listen": "127.0.0.1:8443",
            "route": "endpoints[0].routes[1]",
            "remotes": ["127.0.0.1:9002", "127.0.0.1:9003"],
            "close": None,
            "hint": None,
        },
        {
            "endpoint": "endpoints[1]",
            "listen": "127.0.0.1:8080",
            "route": "default",
            "remotes": ["127.0.0.1:9100"],
            "close": None,
            "hint": None,
        },
    ]
    code, out, _ = run([str(VEC / "curl_ip_http11.bin"), "-c", str(cfg)], capsys)
    assert out["routes"][0]["route"] == "endpoints[0].routes[2]"
    code, out, _ = run([str(VEC / "variant_http_get.bin"), "-c", str(cfg)], capsys)
    assert out["kind"] == "http" and out["routes"][0]["route"] == "endpoints[0].routes[1]"
    other = tmp_path / "other.txt"
    other.write_bytes(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    code, out, _ = run([str(other), "-c", str(cfg)], capsys)
    first = out["routes"][0]
    assert first["route"] == "default" and first["close"] is None
    assert "other.test" in first["hint"] and first["remotes"] == ["127.0.0.1:9000"]


# Two endpoints with routes: one with a not_tls route, one with neither a not_tls route
# nor a remote of its own (and a small sniff_max_bytes), plus one without routes.
CONFIG_WHEN = """
[[endpoints]]
listen = "127.0.0.1:8443"
remote = "127.0.0.1:9000"

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:9001"

  [[endpoints.routes]]
  when = "not_tls"
  remote = "127.0.0.1:9002"

[[endpoints]]
listen = "127.0.0.1:8444"
network = { sniff_max_bytes = 1024 }

  [[endpoints.routes]]
  server_names = ["emby.example.com"]
  remote = "127.0.0.1:9101"

[[endpoints]]
listen = "127.0.0.1:8080"
remote = "127.0.0.1:9200"
"""


def routes_for(
    data: bytes, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> tuple[dict[str, Any], list[tuple[str, str | None, str | None]]]:
    """Run `hello -c CONFIG_WHEN` on `data`: (the JSON, [(route, close, hint)] per endpoint)."""
    cfg = tmp_path / "when.toml"
    cfg.write_text(CONFIG_WHEN)
    f = tmp_path / "in.bin"
    f.write_bytes(data)
    code, out, err = run([str(f), "-c", str(cfg)], capsys)
    assert code == 0, err
    for r in out["routes"]:
        assert (r["remotes"] == []) == (r["close"] is not None), r
    return out, [(r["route"], r["close"], r["hint"]) for r in out["routes"]]


def test_ssh_banner_with_config_is_routed_like_the_relay(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Issue 7: `hello` said "not TLS" and exited 1 where the relay used the not_tls route."""
    out, routes = routes_for((VEC / "ssh_client_banner.bin").read_bytes(), capsys, tmp_path)
    assert out["kind"] == "not-tls" and out["bytes"] > 0 and out["error"]
    assert routes[0][:2] == ("endpoints[0].routes[1]", None)
    assert routes[0][2] and routes[0][2].startswith("not-tls: ")  # the record keeps why
    route, close, hint = routes[1]  # falls to the default, which has no remote
    assert (route, close) == ("default", "no-route") and hint and hint.startswith("not-tls: ")
    assert routes[2] == ("default", None, None)  # not sniffed at all


def test_malformed_hello_with_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = (VEC / "variant_bad_sni_list_overflow__curl_sni_http2.bin").read_bytes()
    out, routes = routes_for(data, capsys, tmp_path)
    assert out["kind"] == "malformed"
    assert routes[0][:2] == ("endpoints[0].routes[1]", None)
    assert routes[0][2] and routes[0][2].startswith("malformed: ")
    route, close, hint = routes[1]
    assert (route, close) == ("default", "malformed") and hint and hint.startswith("malformed: ")


def test_incomplete_and_empty_with_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hello = (VEC / "curl_sni_http2.bin").read_bytes()
    out, routes = routes_for(hello[:100], capsys, tmp_path)
    assert out == {
        "kind": "incomplete",
        "bytes": 100,
        "at_least": out["at_least"],
        "routes": out["routes"],
    }
    incomplete = ("default", "sniff-timeout", "client sent an incomplete first message")
    assert routes[:2] == [incomplete, incomplete]
    out, routes = routes_for(b"", capsys, tmp_path)
    assert out["kind"] == "incomplete" and out["bytes"] == 0
    assert routes[0] == ("endpoints[0].routes[1]", None, None)  # server-speaks-first
    nothing = ("default", "sniff-timeout", "client sent nothing before network.sniff_timeout")
    assert routes[1] == nothing


def test_per_endpoint_sniff_max_bytes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The 20 KB hello fits endpoints[0]'s 64 KiB but not endpoints[1]'s 1024 bytes."""
    data = (VEC / "variant_oversize_padding_20k__curl_sni_http2.bin").read_bytes()
    out, routes = routes_for(data, capsys, tmp_path)
    assert out["kind"] == "tls" and out["sni"] == "emby.example.com"
    assert routes[0] == ("endpoints[0].routes[0]", None, None)
    route, close, hint = routes[1]
    assert (route, close) == ("default", "too-large") and hint and "1024" in hint


def test_unknown_name_without_default_remote(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = (VEC / "curl_ip_http11.bin").read_bytes()  # no SNI
    out, routes = routes_for(data, capsys, tmp_path)
    assert routes[0][:2] == ("default", None) and routes[0][2]
    route, close, hint = routes[1]
    assert (route, close) == ("default", "no-route")
    assert hint and hint.startswith("client sent no server name")


def test_regex_refused_by_re2_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "127.0.0.1:2"\n'
        '[[endpoints.routes]]\nserver_names = ["a.example.com", "~(a)\\\\1\\\\.example\\\\.com"]\n'
        'remote = "127.0.0.1:3"\n'
    )
    code, _, err = run([str(VEC / "curl_sni_http2.bin"), "-c", str(cfg)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("snirelay hello: endpoints[0].routes[0].server_names[1]: regex ")
    assert "backreference" in err


def test_bad_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "127.0.0.1:2"\nbogus = 1\n')
    code, _, err = run([str(VEC / "curl_sni_http2.bin"), "-c", str(cfg)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


def test_python_m_snirelay_hello() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "snirelay", "hello", str(VEC / "go_tls_sni_alpn.bin")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sni"] == "emby.example.com"
