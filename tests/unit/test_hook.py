"""net.hook's loader: what loads, and each refusal as one line naming the key and the file.

The libraries are built with gcc from the C source in helpers.hooklib; the system C
library (a shared library with neither symbol) stands for "a library that is not a
hook", loaded by its bare name the way dlopen looks names up.
"""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest

from helpers.hooklib import ONLY_FIRST_LEN, build_hook
from snirelay.config.model import Config, ConfigError
from snirelay.net.hook import KEY, MAX_FIRST_PKT_LEN, load
from snirelay.startup import StartupError, check_hook


def refusal(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{KEY}: {path}: "), text
    return text


def test_a_hook_loads_and_answers(tmp_path: Path) -> None:
    hook = load(str(build_hook(tmp_path)))
    assert hook.first_len == 4
    assert [hook.decide(2, c * 4) for c in (b"A", b"B", b"C", b"M", b"X", b"Z")] == [
        0,
        1,
        2,
        2,
        -1,
        99,
    ]


def test_a_first_packet_length_of_zero_gets_an_empty_buffer(tmp_path: Path) -> None:
    hook = load(str(build_hook(tmp_path, first_len=0)))
    assert hook.first_len == 0
    assert hook.decide(3, b"") == 3  # a valid (not NULL) pointer to no bytes


def test_a_relative_path_with_a_slash_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_hook(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert load("./hook.so").first_len == 4


def test_a_missing_file(tmp_path: Path) -> None:
    text = refusal(str(tmp_path / "nope.so"))
    assert text.endswith("no such file")


def test_a_directory(tmp_path: Path) -> None:
    assert refusal(str(tmp_path)).endswith("not a file")


def test_not_a_shared_library(tmp_path: Path) -> None:
    path = tmp_path / "hook.so"
    path.write_text("not ELF\n")
    text = refusal(str(path))
    assert "cannot load it as a shared library" in text


def test_a_bare_name_is_looked_up_as_dlopen_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_hook(tmp_path)
    monkeypatch.chdir(tmp_path)
    text = refusal("hook.so")  # there is a hook.so here, but dlopen does not look here
    assert "cannot load it as a shared library" in text
    assert "write ./hook.so" in text


def test_a_library_that_is_not_a_hook() -> None:
    libc = ctypes.util.find_library("c")
    assert libc is not None
    text = refusal(libc)
    assert "has no function realm_first_pkt_len" in text


def test_a_hook_missing_its_second_function(tmp_path: Path) -> None:
    path = build_hook(tmp_path, ONLY_FIRST_LEN)
    text = refusal(str(path))
    assert "has no function realm_decide_remote_idx" in text


def test_a_first_packet_length_above_the_cap(tmp_path: Path) -> None:
    assert load(str(build_hook(tmp_path, first_len=MAX_FIRST_PKT_LEN))).first_len == 65536
    big = build_hook(tmp_path, name="big.so", first_len=MAX_FIRST_PKT_LEN + 1)
    text = refusal(str(big))
    assert f"realm_first_pkt_len() is {MAX_FIRST_PKT_LEN + 1}, above the 65536 bytes" in text


def test_check_hook_is_exit_code_2(tmp_path: Path) -> None:
    assert check_hook(Config(endpoints=())) is None
    with pytest.raises(StartupError) as info:
        check_hook(Config(endpoints=(), pre_conn_hook=str(tmp_path / "nope.so")))
    assert info.value.exit_code == 2
    assert str(info.value).startswith("pre_conn_hook (-j/--pre-conn-hook): ")
