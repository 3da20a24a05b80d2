"""Every bad value exits 2 with one line per error naming its key, never a traceback.

How it works: `CASES` reads the corpus in bad_configs/ (its README.md says how a case
is written). The `results` fixture runs every case at once through the real command
line (`python -m snirelay`, helpers.relay.run_relay) on a small thread pool, since each
case costs a Python start; each parametrized test then checks its own case: exit code
2, stderr not empty, every line starting "snirelay: " and naming the expected key,
no "Traceback". A case that is wrongly accepted starts a relay on 127.0.0.1 port 0;
run_relay's timeout kills it and the test fails.

The rest checks the bounds these errors come from, from the other side: the kernel's
keepalive limits are the kernel's (setsockopt on this machine), the values just inside
every bound load, realistic regexes compile, and parse_text reads a byte-order mark,
deep-but-sane nesting and JSON's top level as it says.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.relay import run_relay
from snirelay.config import network
from snirelay.config.load import CliOptions, load_documents, parse_text
from snirelay.config.model import ConfigError, NetworkConfig
from snirelay.patterns import compile_regex

CORPUS = Path(__file__).resolve().parent / "bad_configs"
SIDECAR = CORPUS / "cases.toml"
NOT_CASES = {"README.md", "cases.toml"}
TIMEOUT = 30.0  # seconds for one case; a case that exits does so in well under 1 s
EP = {"listen": "127.0.0.1:0", "remote": "127.0.0.1:9"}


@dataclass(frozen=True)
class Case:
    name: str  # the file (or directory) name in bad_configs/
    argv: tuple[str, ...]  # after `python -m snirelay`
    expect: str  # the place every stderr line names
    xfail: str | None  # why it still fails (the fix lies in a file outside this change)


def _header(path: Path) -> dict[str, str]:
    """The `# key: value` comment lines a .toml / .args case starts with."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep:
            out[key] = value
    return out


def read_cases() -> list[Case]:
    sidecar = tomllib.loads(SIDECAR.read_text(encoding="utf-8"))
    cases = []
    for path in sorted(CORPUS.iterdir()):
        if path.name in NOT_CASES:
            continue
        if path.name in sidecar:
            entry = sidecar[path.name]
            expect, args, xfail = entry["expect"], list(entry.get("args", [])), entry.get("xfail")
        else:
            head = _header(path)
            assert "expect" in head, f"{path.name}: no '# expect:' line and not in cases.toml"
            args = shlex.split(head.get("args", ""))
            expect, xfail = head["expect"], head.get("xfail")
        config = [] if path.suffix == ".args" else ["-c", str(path)]
        cases.append(Case(path.name, (*config, *args), expect, xfail))
    return cases


CASES = read_cases()


def _run(argv: tuple[str, ...]) -> tuple[int | None, str]:
    """(exit code, stderr) of one command line; None: it did not exit within TIMEOUT."""
    try:
        done = run_relay(list(argv), timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        return None, err or ""
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[int | None, str]]:
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        codes = pool.map(_run, [c.argv for c in CASES])
        return dict(zip([c.name for c in CASES], codes, strict=True))


def check(code: int | None, err: str, expect: str) -> None:
    assert code is not None, f"did not exit within {TIMEOUT:g} s (accepted?); stderr: {err!r}"
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert lines, "exit 2 without a word"
    for line in lines:
        assert line.startswith("snirelay: "), lines
        assert f"{expect}: " in line, (expect, line)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.xfail)) if c.xfail else c
        for c in CASES
    ],
    ids=[c.name for c in CASES],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(
    case: Case, results: dict[str, tuple[int | None, str]]
) -> None:
    code, err = results[case.name]
    check(code, err, case.expect)


def test_the_corpus_is_whole() -> None:
    sidecar = tomllib.loads(SIDECAR.read_text(encoding="utf-8"))
    names = {p.name for p in CORPUS.iterdir()}
    assert not set(sidecar) - names, "cases.toml lists files that are not there"
    assert len(CASES) >= 80
    for c in CASES:
        assert c.expect.strip(), c.name


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("deep-array.json", "[" * 100_000 + "]" * 100_000),
        ("deep.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n"),
    ],
)
def test_nested_too_deeply_is_one_line(name: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, err = _run(("-c", str(path)))
    check(code, err, name)
    kind = "JSON" if name.endswith(".json") else "TOML"
    assert err.endswith(f"{name}: invalid {kind}: nested too deeply\n"), err


# ---------------------------------------------------------------- the bounds themselves


def test_the_keepalive_limits_are_the_kernels() -> None:
    opts = {
        "tcp_keepalive": (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL),
        "tcp_keepalive_probe": (socket.TCP_KEEPCNT,),
    }
    assert set(network.KERNEL_LIMITS) == set(opts)
    with socket.socket() as s:
        for name, sockopts in opts.items():
            most = network.KERNEL_LIMITS[name].maximum
            for opt in sockopts:
                s.setsockopt(socket.IPPROTO_TCP, opt, most)
                with pytest.raises(OSError) as info:
                    s.setsockopt(socket.IPPROTO_TCP, opt, most + 1)
                assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("level", ["global", "endpoint", "route", "command line"])
def test_the_kernels_maximum_itself_loads(level: str) -> None:
    net = {"tcp_keepalive": 32767, "tcp_keepalive_probe": 127}
    ep: dict[str, object] = dict(EP)
    data: dict[str, object] = {"endpoints": [ep]}
    cli = CliOptions()
    if level == "global":
        data["network"] = net
    elif level == "endpoint":
        ep["network"] = net
    elif level == "route":
        ep["routes"] = [{"server_names": ["a.example"], "network": net}]
    else:
        cli = CliOptions(network=dict(net))
    (endpoint,) = load_documents([("", data)], cli).endpoints
    got = endpoint.routes[0].upstream.network if endpoint.routes else endpoint.upstream.network
    assert (got.tcp_keepalive, got.tcp_keepalive_probe) == (32767, 127)


def test_keepalive_at_the_maximum_is_set_on_a_listener() -> None:
    from snirelay.config.model import Addr
    from snirelay.net.sockopt import make_listener

    net = NetworkConfig(tcp_keepalive=32767, tcp_keepalive_probe=127)
    with make_listener(Addr("127.0.0.1", 0), net) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 32767
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 127


def test_nofile_and_pipe_pages_just_inside_their_bounds_load() -> None:
    data = {"endpoints": [EP]}
    most_pages = int(Path("/proc/sys/fs/pipe-max-size").read_text()) // 4096
    config = load_documents([("", data)], CliOptions(nofile=64, pipe_page=most_pages))
    assert (config.nofile, config.pipe_pages) == (64, most_pages)
    for cli, message in (
        (CliOptions(nofile=63), "-n/--nofile: must be >= 64, got 63"),
        (CliOptions(pipe_page=most_pages + 1), f"-p/--pipe-page: must be <= {most_pages} "),
    ):
        with pytest.raises(ConfigError) as info:
            load_documents([("", data)], cli)
        assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "source",
    [
        r"^media[0-9]+\.example\.org$",
        r"(?:[a-z0-9-]{1,63}\.){1,4}[a-z]{2,63}",
        r".{0,253}",
        r"[a-z]{1000}",
        r"\pL+\.example",
        r"[{]{3}",  # braces in a class are not a count
        r"a\{99999999999}",  # nor is an escaped brace
        "(" + "|".join(f"host{i}\\.example\\.com" for i in range(400)) + ")",
        "(?:" * 100 + "a" + ")" * 100,
    ],
)
def test_realistic_regexes_compile(source: str) -> None:
    compile_regex(source)


def test_the_regex_bounds_keep_matching_on_the_default_budget() -> None:
    rx = compile_regex(r"(?:[a-z0-9-]{1,63}\.){1,4}[a-z]{2,63}")
    assert rx.fullmatch(b"a.b.example.org") is not None
    assert rx.fullmatch(b"-" * 64 + b".org") is None


def test_parse_text_drops_a_byte_order_mark() -> None:
    text = json.dumps({"endpoints": [EP]})
    assert parse_text("\ufeff" + text, "f") == parse_text(text, "f")
    toml_text = '[[endpoints]]\nlisten = "127.0.0.1:0"\nremote = "127.0.0.1:9"\n'
    assert parse_text("\ufeff" + toml_text, "f") == parse_text(toml_text, "f")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "f: expected a JSON object at the top, not an array"),
        ('[{"listen": 1,}]', "f: invalid JSON: "),
        ("42", "f: expected a JSON object at the top, not an integer"),
        ('{"a": 1, "a": 2}', "f: invalid JSON: key 'a' is given twice in one object"),
        ("[endpoints\nx", "f: invalid TOML: "),
    ],
)
def test_parse_text_says_which_format(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, "f")
    assert str(info.value).startswith(message)


def test_parse_text_reads_sane_nesting_and_toml_table_headers() -> None:
    assert parse_text('{"x": ' + "[" * 200 + "]" * 200 + "}", "f")["x"]
    assert parse_text("[a]\nb = 1\n", "f") == {"a": {"b": 1}}
    assert parse_text("[[a]]\nb = 1\n", "f") == {"a": [{"b": 1}]}
