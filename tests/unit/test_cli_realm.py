"""The command line as realm's: REALM_CONF, ``-c DIR`` read recursively, endpoint flags
ignored with ``-c``, ``-V``, did-you-mean for a mistyped subcommand, help for every flag,
quiet Ctrl-C in a subcommand, ``--pid-file``. In-process: `snirelay.server.run` is
replaced by a fake that records the config and the reload callable (the real process is
tested in tests/integration/test_cli_realm_process.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from snirelay import __version__, cli
from snirelay.config.load import load_config, names_path, read_documents, read_env
from snirelay.config.model import ConfigError
from snirelay.config.options import CliOptions, without_endpoint


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace snirelay.server.run; `box["config"]` and `box["loader"]` get what main()
    passed; `box["during"]`, if set, is called while "running"."""
    box: dict[str, Any] = {}

    def run(config: Any, loader: Any = None) -> int:
        box["config"] = config
        box["loader"] = loader
        if "during" in box:
            box["during"]()
        return 0

    import snirelay.server as server

    monkeypatch.setattr(server, "run", run)
    monkeypatch.delenv("REALM_CONF", raising=False)
    return box


def ep_toml(port: int, remote: str = "127.0.0.1:9", extra: str = "") -> str:
    return f'[[endpoints]]\nlisten = "127.0.0.1:{port}"\nremote = "{remote}"\n{extra}'


def listens(box: dict[str, Any]) -> list[tuple[str, int]]:
    return [(ep.place, ep.listen.port) for ep in box["config"].endpoints]


def err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---------------------------------------------------------------- REALM_CONF

LEGACY = {
    "listening_addresses": ["127.0.0.1"],
    "listening_ports": ["5101"],
    "remote_addresses": ["127.0.0.1"],
    "remote_ports": ["9"],
}

# name -> (a function of tmp_path giving REALM_CONF's value, the endpoints expected)
GOOD_ENV: dict[str, tuple[Callable[[Path], str], list[tuple[str, int]]]] = {
    "toml-text": (lambda _: ep_toml(5101), [("REALM_CONF:endpoints[0]", 5101)]),
    "json-text": (
        lambda _: json.dumps({"endpoints": [{"listen": "127.0.0.1:5102", "remote": "h:1"}]}),
        [("REALM_CONF:endpoints[0]", 5102)],
    ),
    "legacy-v1-text": (lambda _: json.dumps(LEGACY), [("REALM_CONF:endpoints[0]", 5101)]),
    "file-path": (
        lambda tmp: str(_write(tmp / "relay.toml", ep_toml(5103))),
        [("REALM_CONF:endpoints[0]", 5103)],
    ),
    "dir-path": (
        lambda tmp: str(_write(tmp / "conf" / "node" / "n1.toml", ep_toml(5104)).parents[1]),
        [("node/n1.toml:endpoints[0]", 5104)],
    ),
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(GOOD_ENV))
def test_realm_conf_is_read_without_c_or_l_r(
    case: str,
    tmp_path: Path,
    fake_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value, expected = GOOD_ENV[case]
    monkeypatch.setenv("REALM_CONF", value(tmp_path))
    assert cli.main(["--tcp-timeout", "3"]) == 0, capsys.readouterr().err
    assert listens(fake_server) == expected
    # the global flags still apply on top
    assert fake_server["config"].endpoints[0].upstream.network.tcp_timeout == 3
    assert fake_server["loader"]() == fake_server["config"]  # a reload: the same source


BAD_ENV: dict[str, tuple[str, str]] = {
    "toml-syntax": ("[[endpoints]\nlisten =", "snirelay: REALM_CONF: invalid TOML: "),
    "json-syntax": ('{"endpoints": [', "snirelay: REALM_CONF: invalid JSON: "),
    "json-array": ("[1, 2]", "snirelay: REALM_CONF: expected a JSON object at the top"),
    "missing-path": (
        "/nonexistent/realm.toml",
        "snirelay: REALM_CONF: no such file or directory: '/nonexistent/realm.toml'",
    ),
    "relative-missing-path": (
        "no-such-conf.d",
        "snirelay: REALM_CONF: no such file or directory: 'no-such-conf.d'",
    ),
    "bad-key": ('[log]\nlevel = "loud"\n', "snirelay: REALM_CONF:log.level: unknown value"),
    "bad-endpoint": (
        ep_toml(5105, extra='balance = "rr"\n'),
        "snirelay: REALM_CONF:endpoints[0].balance: unknown strategy",
    ),
    "no-endpoints": ("[log]\nlevel = 'info'\n", "snirelay: REALM_CONF: no endpoints"),
    # realm's README example: realm has no "local" key either (it fails to parse there
    # and realm falls back to its flags without a word)
    "realm-readme-local": (
        '{"endpoints":[{"local":"127.0.0.1:5000","remote":"1.1.1.1:443"}]}',
        "snirelay: REALM_CONF:endpoints[0].local: unknown key",
    ),
    "legacy-bad-port": (
        json.dumps({**LEGACY, "listening_ports": ["x"]}),
        "snirelay: REALM_CONF: listening_ports[0]: ",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENV))
def test_bad_realm_conf_is_one_line_naming_it(
    case: str,
    fake_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    value, start = BAD_ENV[case]
    monkeypatch.setenv("REALM_CONF", value)
    assert cli.main([]) == 2
    lines = err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(start), lines
    assert "config" not in fake_server


def test_bad_file_named_by_realm_conf_names_both(
    tmp_path: Path, fake_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "bad.toml", "[[endpoints]\n")
    with pytest.raises(ConfigError) as info:
        read_env(str(path), names_path(str(path)))
    assert str(info.value).startswith(f"REALM_CONF: {path}: invalid TOML: ")


def test_empty_realm_conf_is_unset(
    fake_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REALM_CONF", "  ")
    assert cli.main([]) == 2
    assert "give -c CONFIG, or -l ADDR -r ADDR (or set REALM_CONF)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "used", "warning"),
    [
        (["-c", "FILE"], "endpoints[0]", "REALM_CONF ignored: -c is given"),
        (["-l", "127.0.0.1:5107", "-r", "h:1"], "command line", "REALM_CONF ignored: -l/-r"),
    ],
)
def test_c_and_l_r_come_before_realm_conf(
    argv: list[str],
    used: str,
    warning: str,
    tmp_path: Path,
    fake_server: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write(tmp_path / "c.toml", ep_toml(5106))
    monkeypatch.setenv("REALM_CONF", ep_toml(5199))
    assert cli.main([str(path) if a == "FILE" else a for a in argv]) == 0
    assert [place for place, _ in listens(fake_server)] == [used]
    (line,) = err_lines(capsys)
    assert line.startswith(f"snirelay: warning: {warning}"), line


def test_reload_reads_the_same_source_the_same_way(
    tmp_path: Path, fake_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "relay.toml", ep_toml(5108))
    monkeypatch.setenv("REALM_CONF", str(path))
    assert cli.main([]) == 0
    path.write_text(ep_toml(5108) + ep_toml(5109))
    monkeypatch.setenv("REALM_CONF", ep_toml(5000))  # the process's own value is what counts
    assert [ep.listen.port for ep in fake_server["loader"]().endpoints] == [5108, 5109]
    path.unlink()  # still a path: the error says so, not "invalid TOML"
    with pytest.raises(ConfigError, match=r"^REALM_CONF: .*relay\.toml: no such file"):
        fake_server["loader"]()


# ---------------------------------------------------------------- -c DIR


def tree(root: Path, spec: dict[str, str]) -> Path:
    """Files (text), and symbolic links ("-> TARGET", relative to the link's directory)."""
    for rel, text in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("-> "):
            path.symlink_to(text[3:])
        else:
            path.write_text(text)
    return root


EP = ep_toml(0)

DIRS: dict[str, tuple[dict[str, str], list[str]]] = {
    "flat": ({"b.toml": EP, "a.json": '{"endpoints": []}'}, ["a.json", "b.toml"]),
    "nested, sorted by relative path": (
        {"z.toml": EP, "node/n2.toml": EP, "node/n1.toml": EP, "a/b/c.json": "{}"},
        ["a/b/c.json", "node/n1.toml", "node/n2.toml", "z.toml"],
    ),
    "hidden at any depth": (
        {
            "n.toml": EP,
            ".x.toml": "garbage [[[",
            ".hidden/y.toml": "garbage [[[",
            "node/.z.toml": "garbage [[[",
            "node/.git/w.toml": "garbage [[[",
            "node/ok.toml": EP,
        },
        ["n.toml", "node/ok.toml"],
    ),
    "other names skipped": (
        {"n.toml": EP, "notes.txt": "x", "n.toml.bak": "x", "N.TOML": "x", "node/README": "x"},
        ["n.toml"],
    ),
    "links followed": (
        {"real/r.toml": EP, "linked": "-> real", "l.toml": "-> real/r.toml"},
        ["l.toml", "linked/r.toml"],  # real/ is reached through linked/ first: read once
    ),
    "link loop ends": (
        {"node/n.toml": EP, "node/back": "-> ..", "node/self": "-> .", "node/deep/up": "-> ../.."},
        ["node/n.toml"],
    ),
    "a directory named like a config": ({"d.toml/n.toml": EP}, ["d.toml/n.toml"]),
}


@pytest.mark.parametrize("case", sorted(DIRS))
def test_directory_is_read_as_realm_walks_it(case: str, tmp_path: Path) -> None:
    spec, labels = DIRS[case]
    root = tree(tmp_path / "conf", spec)
    assert [label for label, _ in read_documents(str(root))] == labels


def test_directory_errors_name_the_relative_path(tmp_path: Path) -> None:
    root = tree(tmp_path / "conf", {"a.toml": EP, "node/n1.toml": ep_toml(0, extra="bogus = 1\n")})
    with pytest.raises(ConfigError, match=r"^node/n1\.toml:endpoints\[0\]\.bogus: unknown key"):
        load_config(str(root))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"a.toml": EP, "node/gone.toml": "-> nowhere.toml"}, "a symbolic link to nothing"),
        ({"a.toml": EP, "loop.json": "-> loop.json"}, "cannot read: "),
        ({"node/.hidden": "x"}, "no *.toml or *.json file, in it or below"),
    ],
)
def test_directory_problems_are_errors(spec: dict[str, str], message: str, tmp_path: Path) -> None:
    root = tree(tmp_path / "conf", spec)
    with pytest.raises(ConfigError) as info:
        read_documents(str(root))
    assert message in str(info.value)


def test_empty_config_path_is_not_the_current_directory(
    fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["-c", ""]) == 2
    assert err_lines(capsys) == ["snirelay: the config path is empty"]


def test_unreadable_subdirectory_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """realm drops a directory it cannot list without a word; here it is named. (The
    listing is refused by a stand-in: the suite may run as root, who reads anything.)"""
    root = tree(tmp_path / "conf", {"a.toml": EP, "locked/b.toml": EP})
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ConfigError, match=r"locked: cannot read: Permission denied$"):
        read_documents(str(root))


# ---------------------------------------------------------------- endpoint flags with -c

ENDPOINT_FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "-l -r": (["-l", "127.0.0.1:5201", "-r", "h:1"], ["-l/-r"]),
    "-l alone": (["-l", "127.0.0.1:5201"], ["-l/-r"]),
    "-x alone": (["-x", "127.0.0.1"], ["-x/--through"]),
    "all": (
        ["-l", "127.0.0.1:5201", "-r", "h:1", "-x", "127.0.0.1", "-i", "lo", "-e", "lo"]
        + ["-a", "tls;servername=a", "-b", "tls;sni=a"],
        [
            "-l/-r",
            "-x/--through",
            "-i/--interface",
            "-e/--listen-interface",
            "-a/--listen-transport",
            "-b/--remote-transport",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(ENDPOINT_FLAGS))
def test_endpoint_flags_are_ignored_with_c(
    case: str, tmp_path: Path, fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    flags, groups = ENDPOINT_FLAGS[case]
    path = _write(tmp_path / "c.toml", ep_toml(5200))
    assert cli.main(["-c", str(path), *flags, "--log-level", "debug", "-u"]) == 0
    assert listens(fake_server) == [("endpoints[0]", 5200)]
    config = fake_server["config"]
    assert config.log.level == "debug" and config.endpoints[0].upstream.network.use_udp
    assert err_lines(capsys) == [
        f"snirelay: warning: {g} ignored: -c is given (as realm does)" for g in groups
    ]
    assert len(fake_server["loader"]().endpoints) == 1  # a reload ignores them too


def test_without_endpoint_keeps_every_other_flag() -> None:
    given = CliOptions(listen="a:1", through="b", log_level="info", workers=2, network={"a": 1})
    cleared, groups = without_endpoint(given)
    assert groups == ["-l/-r", "-x/--through"]
    assert cleared == CliOptions(log_level="info", workers=2, network={"a": 1})
    assert without_endpoint(CliOptions(workers=2)) == (CliOptions(workers=2), [])


# ---------------------------------------------------------------- version, names, help


@pytest.mark.parametrize("flag", ["-V", "-v", "--version"])
def test_version(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([flag])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"snirelay {__version__}\n"


MISTYPED = {
    "chek": "unknown command 'chek' (did you mean 'check'?)",
    "explian": "unknown command 'explian' (did you mean 'explain'?)",
    "conver": "unknown command 'conver' (did you mean 'convert'?)",
    "Hello": "unknown command 'Hello' (did you mean 'hello'?)",
    "demos": "unknown command 'demos' (did you mean 'demo'?)",
}
POSITIONAL = ["example.com:443", "127.0.0.1:5000", "relay.toml", "help", "x"]


@pytest.mark.parametrize("word", sorted(MISTYPED))
def test_mistyped_subcommand_gets_a_did_you_mean(
    word: str, fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([word, "example.com:443"]) == 2
    assert err_lines(capsys) == [f"snirelay: {MISTYPED[word]}"]


@pytest.mark.parametrize("word", POSITIONAL)
def test_positional_argument_is_a_usage_error(
    word: str, fake_server: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([word]) == 2
    (line,) = err_lines(capsys)
    assert line.startswith(f"snirelay: unexpected argument {word!r}: the relay takes flags, not")
    assert "config" not in fake_server


def test_every_flag_has_help() -> None:
    parser = cli.build_parser()
    missing = [
        "/".join(a.option_strings)
        for a in parser._actions
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_help_names_only_what_exists() -> None:
    """The epilog's subcommands are the registered ones, and each module imports."""
    import importlib
    import re

    epilog = cli.build_parser().epilog or ""
    named = set(re.findall(r"snirelay (\w+)", epilog))
    assert named == set(cli._SUBCOMMANDS)
    for module in cli._SUBCOMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_ctrl_c_in_a_subcommand_is_130(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("snirelay.diagnose.hello")

    def interrupted(rest: list[str]) -> int:
        raise KeyboardInterrupt

    mod.main = interrupted  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "snirelay.diagnose.hello", mod)
    assert cli.main(["hello", "x.bin"]) == 130


# ---------------------------------------------------------------- --pid-file


def test_pid_file_holds_the_relays_pid_while_it_runs(
    tmp_path: Path, fake_server: dict[str, Any]
) -> None:
    pid_file = tmp_path / "relay.pid"
    seen: list[str] = []
    fake_server["during"] = lambda: seen.append(pid_file.read_text())
    assert cli.main(["-l", "127.0.0.1:0", "-r", "h:1", "--pid-file", str(pid_file)]) == 0
    assert seen == [f"{os.getpid()}\n"]
    assert not pid_file.exists()  # removed at the clean stop


def test_pid_file_of_another_process_is_left(tmp_path: Path, fake_server: dict[str, Any]) -> None:
    pid_file = tmp_path / "relay.pid"
    fake_server["during"] = lambda: pid_file.write_text("1\n")  # another relay took it over
    assert cli.main(["-l", "127.0.0.1:0", "-r", "h:1", "--pid-file", str(pid_file)]) == 0
    assert pid_file.read_text() == "1\n"


@pytest.mark.parametrize(
    ("where", "reason"),
    [("missing/relay.pid", "No such file or directory"), (".", "Is a directory")],
)
def test_pid_file_that_cannot_be_written_is_exit_2(
    where: str,
    reason: str,
    tmp_path: Path,
    fake_server: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(tmp_path / where)
    assert cli.main(["-d", "-l", "127.0.0.1:0", "-r", "h:1", "--pid-file", path]) == 2
    assert err_lines(capsys) == [f"snirelay: --pid-file: {path}: cannot write: {reason}"]
    assert "config" not in fake_server  # nothing ran, nothing detached
