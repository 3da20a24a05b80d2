"""The command line: flags -> CliOptions -> Config -> server.run, subcommands, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest

from snirelay import cli
from snirelay.config.load import CliOptions
from snirelay.config.model import Addr, Config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace snirelay.server.run; `box["config"]` gets what main() passed."""
    box: dict[str, Any] = {"code": 0}

    def run(config: Config, loader: Any = None) -> int:
        box["config"] = config
        box["loader"] = loader
        if "raise" in box:
            raise box["raise"]
        return int(box["code"])

    import snirelay.server as server

    monkeypatch.setattr(server, "run", run)
    box["StartupError"] = server.StartupError
    return box


def parse(argv: list[str]) -> CliOptions:
    return cli.options_from(cli.build_parser().parse_args(argv))


def test_every_realm_flag_parses() -> None:
    o = parse(
        [
            "-c",
            "x.toml",
            "-l",
            "127.0.0.1:1",
            "-r",
            "h:2",
            "-x",
            "127.0.0.1",
            "-i",
            "lo",
            "-e",
            "lo",
            "-a",
            "tls;servername=a",
            "-b",
            "tls;sni=a",
            "-u",
            "-t",
            "-6",
            "-m",
            "-d",
            "-n",
            "4096",
            "-p",
            "32",
            "-f",
            "-z",
            "-w",
            "3",
            "--log-level",
            "debug",
            "--log-output",
            "stderr",
            "--log-format",
            "json",
            "--dns-mode",
            "ipv4_only",
            "--dns-protocol",
            "udp",
            "--dns-servers",
            "1.1.1.1:53,8.8.8.8:53",
            "--dns-min-ttl",
            "1",
            "--dns-max-ttl",
            "2",
            "--dns-cache-size",
            "3",
            "--send-proxy",
            "true",
            "--send-proxy-version",
            "1",
            "--accept-proxy",
            "false",
            "--accept-proxy-timeout",
            "4.5",
            "--tcp-timeout",
            "6",
            "--udp-timeout",
            "7",
            "--tcp-keepalive",
            "8",
            "--tcp-keepalive-probe",
            "9",
            "--tcp-idle-timeout",
            "10",
            "--replay-timeout",
            "11",
        ]
    )
    assert o.listen == "127.0.0.1:1" and o.remote == "h:2" and o.through == "127.0.0.1"
    assert o.interface == "lo" and o.listen_interface == "lo"
    assert o.listen_transport == "tls;servername=a" and o.remote_transport == "tls;sni=a"
    assert o.daemon and o.fast_open and o.zero_copy
    assert (o.nofile, o.pipe_page, o.workers) == (4096, 32, 3)
    assert (o.log_level, o.log_output, o.log_format) == ("debug", "stderr", "json")
    assert (o.dns_mode, o.dns_protocol, o.dns_servers) == (
        "ipv4_only",
        "udp",
        "1.1.1.1:53,8.8.8.8:53",
    )
    assert (o.dns_min_ttl, o.dns_max_ttl, o.dns_cache_size) == (1, 2, 3)
    # the network flags, by option name; -m sets both MPTCP options, and the probe count
    # comes from its own flag (realm reads it from --tcp-keepalive)
    assert o.network == {
        "use_udp": True,
        "no_tcp": True,
        "ipv6_only": True,
        "send_mptcp": True,
        "accept_mptcp": True,
        "send_proxy": True,
        "send_proxy_version": 1,
        "accept_proxy": False,
        "accept_proxy_timeout": 4.5,
        "tcp_timeout": 6,
        "udp_timeout": 7,
        "tcp_keepalive": 8,
        "tcp_keepalive_probe": 9,
        "tcp_idle_timeout": 10,
        "replay_timeout": 11,
    }


def test_long_names() -> None:
    o = parse(
        [
            "--config",
            "c",
            "--listen",
            "127.0.0.1:1",
            "--remote",
            "h:2",
            "--through",
            "127.0.0.1",
            "--interface",
            "a",
            "--listen-interface",
            "b",
            "--listen-transport",
            "x",
            "--remote-transport",
            "y",
            "--udp",
            "--ntcp",
            "--ipv6",
            "--mptcp",
            "--daemon",
            "--nofile",
            "1",
            "--pipe-page",
            "2",
            "--tfo",
            "--splice",
            "--workers",
            "5",
        ]
    )
    assert o.interface == "a" and o.listen_interface == "b"
    assert o.daemon and o.workers == 5
    assert o.network == dict.fromkeys(
        ("no_tcp", "use_udp", "ipv6_only", "send_mptcp", "accept_mptcp"), True
    )


def test_flags_not_given_are_none() -> None:
    o = parse(["-l", "127.0.0.1:1", "-r", "h:1"])
    assert o.network == {}
    assert all(
        getattr(o, name) is None
        for name in CliOptions.__dataclass_fields__
        if name not in ("listen", "remote", "network")
    )


def test_bad_flag_values_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--send-proxy", "maybe"], ["--tcp-timeout", "-1"], ["-n", "x"], ["--bogus"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["-l", "127.0.0.1:1", "-r", "h:1", *argv])
        assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_runs_the_server(fake_server: dict[str, Any]) -> None:
    assert cli.main(["-l", "127.0.0.1:0", "-r", "127.0.0.1:9", "--tcp-timeout", "2"]) == 0
    config = fake_server["config"]
    assert config.endpoints[0].listen == Addr("127.0.0.1", 0)
    assert config.endpoints[0].upstream.network.tcp_timeout == 2
    assert fake_server["loader"]() == config  # a reload reads the same sources again


def test_precedence_cli_over_endpoint_over_global(
    fake_server: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[network]\ntcp_timeout = 1\nudp_timeout = 1\ntcp_keepalive = 1\n"
        '[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "h:1"\n'
        "network = { udp_timeout = 2, tcp_keepalive = 2 }\n"
    )
    assert cli.main(["-c", str(path), "--tcp-keepalive", "3"]) == 0
    n = fake_server["config"].endpoints[0].upstream.network
    assert (n.tcp_timeout, n.udp_timeout, n.tcp_keepalive) == (1, 2, 3)


def test_startup_error_exit_code(
    fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_server["raise"] = fake_server["StartupError"]("cannot listen on 127.0.0.1:1: in use", 3)
    assert cli.main(["-l", "127.0.0.1:1", "-r", "h:1"]) == 3
    assert capsys.readouterr().err == "snirelay: cannot listen on 127.0.0.1:1: in use\n"


def test_config_error_is_one_line(
    fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-l", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snirelay: -r/--remote: missing") and err.count("\n") == 1
    assert "config" not in fake_server


def test_nothing_given_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "give -c CONFIG, or -l ADDR -r ADDR" in capsys.readouterr().err


def test_subcommands_dispatch_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []
    for name in ("snirelay.diagnose.hello", "snirelay.demo"):
        mod = types.ModuleType(name)

        def fake_main(rest: list[str], name: str = name) -> int:
            seen.append((name, rest))
            return 7

        mod.main = fake_main  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, mod)
    assert cli.main(["hello", "x.bin", "--hex"]) == 7
    assert cli.main(["demo"]) == 7
    assert seen == [("snirelay.diagnose.hello", ["x.bin", "--hex"]), ("snirelay.demo", [])]


# ---------------------------------------------------------------- convert

LEGACY = {
    "listening_addresses": ["127.0.0.1"],
    "listening_ports": ["5000", "6000-6001"],
    "remote_addresses": ["example.com"],
    "remote_ports": ["443", "7000-7001"],
}


def test_convert_to_toml_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(LEGACY))
    assert cli.main(["convert", str(old)]) == 0
    out = tomllib.loads(capsys.readouterr().out)
    # one endpoint per port pair: realm reads no port ranges in a modern file
    assert out["endpoints"][1:] == [
        {"listen": "127.0.0.1:6000", "remote": "example.com:7000"},
        {"listen": "127.0.0.1:6001", "remote": "example.com:7001"},
    ]


def test_convert_to_json_file_round_trip(tmp_path: Path) -> None:
    from snirelay.config.load import load_config

    old = tmp_path / "old.json"
    old.write_text(json.dumps(LEGACY))
    for kind in ("json", "toml"):
        new = tmp_path / f"new.{kind}"
        assert cli.main(["convert", str(old), "-t", kind, "-o", str(new)]) == 0

        # the same routing: every listen address reaches the same remotes
        def routes(path: Path) -> dict[str, tuple[str, ...]]:
            eps = load_config(str(path)).endpoints
            return {str(ep.listen): tuple(map(str, ep.upstream.remotes)) for ep in eps}

        assert routes(new) == routes(old)


def test_convert_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    modern = tmp_path / "modern.json"
    modern.write_text('{"endpoints": []}')
    assert cli.main(["convert", str(modern)]) == 2
    assert "not a legacy v1 config" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**LEGACY, "remote_ports": ["1", "9-5"]}))
    assert cli.main(["convert", str(bad)]) == 2
    assert "empty port range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["convert", str(bad), "-t", "yaml"])
    assert info.value.code == 2


# ---------------------------------------------------------------- a real process


def test_module_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "h:1"\nbalance = "rr"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "snirelay", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "snirelay: endpoints[0].balance: unknown strategy 'rr' (expected off, roundrobin, iphash)\n"
    )
    assert proc.stdout == ""


DAEMON_SCRIPT = """
import json, os, sys
import snirelay.server as server
from snirelay import cli

def run(config, loader=None):
    info = {"pid": os.getpid(), "sid": os.getsid(0), "daemon": config.daemon,
            "stdout": os.readlink("/proc/self/fd/1"), "stdin": os.readlink("/proc/self/fd/0")}
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(info, f)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    return 0

server.run = run
sys.exit(cli.main(["-d", "-l", "127.0.0.1:0", "-r", "127.0.0.1:9"]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_daemon_detaches(tmp_path: Path) -> None:
    import os

    from helpers.wait import wait_until

    out = tmp_path / "daemon.json"
    proc = subprocess.run(
        [sys.executable, "-c", DAEMON_SCRIPT, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    info = wait_until(lambda: json.loads(out.read_text()), 20, ignore=(OSError, ValueError))
    assert info["daemon"] is True
    assert info["sid"] != os.getsid(0)  # a new session
    assert info["stdout"] == "/dev/null" and info["stdin"] == "/dev/null"


def test_realms_mtcp_spelling_is_mptcp() -> None:
    """realm 2.9's long name for -m is --mtcp (its README): both spellings work."""
    for spelling in ("-m", "--mptcp", "--mtcp"):
        o = parse(["-l", "127.0.0.1:1", "-r", "h:1", spelling])
        assert o.network == {"send_mptcp": True, "accept_mptcp": True}, spelling


@pytest.mark.parametrize("flag", ["-t", "--ntcp"])
def test_tcp_off_without_udp_is_nothing_to_run(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """realm exits quietly when -t leaves nothing to run; snirelay says why, exit 2."""
    assert cli.main(["-l", "127.0.0.1:0", "-r", "127.0.0.1:9", flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("snirelay: -t/--ntcp: nothing to run: TCP is off"), err
    assert err.count("\n") == 1
