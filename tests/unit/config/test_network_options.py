"""The one table of network options: the CLI flags, the loader and the reference are made
from it, for every option at once; `replay_timeout` is the option added as one entry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from snirelay import cli
from snirelay.config import network
from snirelay.config.load import load_config
from snirelay.config.model import ConfigError, NetworkConfig
from snirelay.config.network import FLAGS, OPTIONS, NetOption
from snirelay.config.option import option

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "config.md"
WITH_FLAG = [o for o in OPTIONS if o.spec.flag is not None]


def _values(o: NetOption) -> tuple[Any, Any]:
    """Two valid values, both different from the default: (in the file, on the CLI)."""
    if o.kind == "bool":
        return (
            (not o.default, o.default) if o.spec.flag and not o.spec.flag.switch else (False, True)
        )
    if o.kind == "int":
        return o.spec.minimum + 1, o.spec.minimum + 2 if o.spec.maximum != 2 else 1
    return 1.5, 2.5


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _argv(o: NetOption, value: Any) -> list[str]:
    assert o.spec.flag is not None
    if o.spec.flag.switch:
        return [o.spec.flag.names[-1]]
    return [o.spec.flag.names[-1], str(value).lower() if isinstance(value, bool) else str(value)]


def test_the_table_is_the_model() -> None:
    assert [o.name for o in OPTIONS] == [f.name for f in dataclasses.fields(NetworkConfig)]
    defaults = NetworkConfig()
    for o in OPTIONS:
        assert getattr(defaults, o.name) == o.default
        assert type(o.default).__name__ == o.kind, o.name
        assert o.spec.doc and "|" not in o.spec.doc and "\n" not in o.spec.doc, o.name
    # a flag name belongs to one Flag; a Flag shared by options sets them all (-m)
    names = [n for flag, _ in FLAGS for n in flag.names]
    assert len(names) == len(set(names))
    assert {o.name for f, opts in FLAGS if f.names[0] == "-m" for o in opts} == {
        "send_mptcp",
        "accept_mptcp",
    }


def test_a_field_without_option_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Plain:
        tcp_timeout: float = 5.0

    @dataclasses.dataclass(frozen=True)
    class Text:
        name: str = option("x", "a string option")

    for table in (Plain, Text):
        with pytest.raises(TypeError, match=rf"^{table.__name__}\.\w+: declare it with option"):
            network.options_of(table)


@pytest.mark.parametrize("opt", WITH_FLAG, ids=lambda o: o.name)
def test_every_flag_overrides_every_level(opt: NetOption, tmp_path: Path) -> None:
    file_value, cli_value = _values(opt)
    shared = [o.name for f, opts in FLAGS if f == opt.spec.flag for o in opts]
    text = f"""
[network]
{opt.name} = {_toml(file_value)}
[[endpoints]]
listen = "127.0.0.1:1"
remote = "h:1"
network = {{ {opt.name} = {_toml(file_value)} }}
  [[endpoints.routes]]
  server_names = ["a.example"]
  network = {{ {opt.name} = {_toml(file_value)} }}
"""
    path = tmp_path / "c.toml"
    path.write_text(text)
    (ep,) = load_config(str(path)).endpoints
    assert getattr(ep.routes[0].upstream.network, opt.name) == file_value
    argv = ["-c", str(path), *_argv(opt, cli_value)]
    if opt.name == "no_tcp":
        argv.append("-u")  # TCP off everywhere and no UDP: nothing to run, refused
    c = load_config(str(path), cli.options_from(cli.build_parser().parse_args(argv)))
    (ep,) = c.endpoints
    for net in (c.network, ep.upstream.network, ep.routes[0].upstream.network):
        for name in shared:
            assert getattr(net, name) == cli_value, (name, net)


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_file_errors_name_the_key_at_every_level(opt: NetOption, tmp_path: Path) -> None:
    ep = '[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "h:1"\n'
    route = '  [[endpoints.routes]]\n  server_names = ["a.example"]\n'
    bad = "'x'"
    expected = {
        "bool": "a boolean (true or false)",
        "int": "an integer",
        "float": "a number of seconds",
    }
    cases = {
        f"network.{opt.name}": f"[network]\n{opt.name} = {bad}\n{ep}",
        f"endpoints[0].network.{opt.name}": f"{ep}network = {{ {opt.name} = {bad} }}\n",
        f"endpoints[0].routes[0].network.{opt.name}": (
            f"{ep}{route}  network = {{ {opt.name} = {bad} }}\n"
        ),
    }
    for place, text in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(str(path))
        assert str(info.value) == f"{place}: expected {expected[opt.kind]}, got a string"


def test_ranges_come_from_the_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for text, message in (
        ("sniff_max_bytes = 0", "network.sniff_max_bytes: must be >= 1, got 0"),
        ("sniff_max_bytes = 16777217", "network.sniff_max_bytes: must be <= 16777216, got"),
        ("replay_timeout = 0", "network.replay_timeout: must be > 0, got 0"),
        ("tcp_keepalive_probe = -1", "network.tcp_keepalive_probe: must be >= 0, got -1"),
    ):
        path.write_text(
            f'[network]\n{text}\n[[endpoints]]\nlisten = "127.0.0.1:1"\nremote = "h:1"\n'
        )
        with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[")):
            load_config(str(path))


def test_replay_timeout_on_three_levels_and_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[network]
replay_timeout = 3
[[endpoints]]
listen = "127.0.0.1:1"
remote = "h:1"
network = { replay_timeout = 4.5 }
  [[endpoints.routes]]
  server_names = ["a.example"]
  network = { replay_timeout = 6 }
  [[endpoints.routes]]
  server_names = ["b.example"]
[[endpoints]]
listen = "127.0.0.1:2"
remote = "h:1"
"""
    )
    c = load_config(str(path))
    assert NetworkConfig().replay_timeout == 10
    assert c.network.replay_timeout == 3
    ep0, ep1 = c.endpoints
    assert ep0.upstream.network.replay_timeout == 4.5
    assert [r.upstream.network.replay_timeout for r in ep0.routes] == [6, 4.5]
    assert ep1.upstream.network.replay_timeout == 3
    ns = cli.build_parser().parse_args(["-c", str(path), "--replay-timeout", "0.25"])
    c = load_config(str(path), cli.options_from(ns))
    assert {ep.upstream.network.replay_timeout for ep in c.endpoints} == {0.25}
    assert {r.upstream.network.replay_timeout for r in c.endpoints[0].routes} == {0.25}


def test_replay_timeout_flag_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-l", "127.0.0.1:1", "-r", "h:1", "--replay-timeout", "0"]) == 2
    assert capsys.readouterr().err == "snirelay: --replay-timeout: must be > 0, got 0.0\n"


def test_help_lists_every_flag_with_its_default() -> None:
    text = cli.build_parser().format_help()
    for flag, opts in FLAGS:
        assert flag.names[-1] in text
        if not flag.switch:
            assert f"(default: {network.default_text(opts[0])})" in " ".join(text.split())


def test_committed_reference_is_the_generated_one() -> None:
    text = DOC.read_text()
    assert network.update_reference(text) == text, (
        "docs/reference/config.md is out of date: run "
        "`python -m snirelay.config.network docs/reference/config.md`"
    )
    for o in OPTIONS:
        assert f"| `{o.name}` |" in text


def test_update_reference_replaces_only_between_the_markers() -> None:
    text = f"before\n{network.BEGIN}stale\n{network.END}after\n"
    new = network.update_reference(text)
    assert new == f"before\n{network.BEGIN}{network.reference_table()}{network.END}after\n"
    with pytest.raises(ValueError, match="markers"):
        network.update_reference("no markers")
