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
        },
        {
            "endpoint": "endpoints[1]",
            "listen": "127.0.0.1:8080",
            "route": "default",
            "remotes": ["127.0.0.1:9100"],
        },
    ]
    code, out, _ = run([str(VEC / "curl_ip_http11.bin"), "-c", str(cfg)], capsys)
    assert out["routes"][0]["route"] == "endpoints[0].routes[2]"
    code, out, _ = run([str(VEC / "variant_http_get.bin"), "-c", str(cfg)], capsys)
    assert out["kind"] == "http" and out["routes"][0]["route"] == "endpoints[0].routes[1]"
    other = tmp_path / "other.txt"
    other.write_bytes(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
    code, out, _ = run([str(other), "-c", str(cfg)], capsys)
    assert out["routes"][0]["route"] == "default" and "hint" in out["routes"][0]


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
