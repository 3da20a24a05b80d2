"""Legacy v1 conversion and the round trip legacy -> convert -> load.

realm's pairing rule, row by row, is in test_legacy_pairing.py; these are the loader's
side of it (ranges, errors naming the entry and the file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from snirelay.config.legacy import convert_legacy, is_legacy
from snirelay.config.load import load_config
from snirelay.config.model import Addr, ConfigError

LEGACY = {
    "listening_addresses": ["127.0.0.1", "::1"],
    "listening_ports": ["5000", 5001, "6000-6002"],
    "remote_addresses": ["example.com"],
    "remote_ports": ["443", "444", "7000-7002"],
}


def test_convert_pairs_nth_or_first() -> None:
    # the flattened lists line up here: [5000, 5001, 6000-6002] with [443, 444, 7000-7002]
    assert convert_legacy(LEGACY) == {
        "endpoints": [
            {"listen": "127.0.0.1:5000", "remote": "example.com:443"},
            {"listen": "[::1]:5001", "remote": "example.com:444"},
            {"listen": "127.0.0.1:6000-6002", "remote": "example.com:7000-7002"},
        ]
    }


def test_legacy_loads_with_ranges(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(LEGACY))
    eps = load_config(str(path)).endpoints
    assert [str(ep.listen) for ep in eps] == [
        "127.0.0.1:5000",
        "[::1]:5001",
        "127.0.0.1:6000",
        "127.0.0.1:6001",
        "127.0.0.1:6002",
    ]
    assert [ep.upstream.remotes for ep in eps][-1] == (Addr("example.com", 7002),)


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_round_trip(tmp_path: Path, kind: str) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps(LEGACY))
    modern = convert_legacy(LEGACY)
    new = tmp_path / f"new.{kind}"
    new.write_text(tomli_w.dumps(modern) if kind == "toml" else json.dumps(modern))
    assert load_config(str(new)) == load_config(str(old))


def test_convert_without_ranges_is_one_endpoint_per_port() -> None:
    assert convert_legacy(LEGACY, ranges=False)["endpoints"][2:] == [
        {"listen": f"127.0.0.1:{6000 + i}", "remote": f"example.com:{7000 + i}"} for i in range(3)
    ]


def test_is_legacy() -> None:
    assert is_legacy(LEGACY) and is_legacy({"listening_ports": []})
    assert not is_legacy({"endpoints": []}) and not is_legacy([1])


@pytest.mark.parametrize(
    "change,needle",
    [
        (
            {"listening_ports": []},
            "listening_ports: expected a non-empty array of ports, got empty",
        ),
        (
            {"remote_ports": "443"},
            "remote_ports: expected a non-empty array of ports, got a string",
        ),
        ({"listening_ports": ["x"]}, "listening_ports[0]: expected a port or a range"),
        ({"remote_addresses": [1]}, "remote_addresses[0]: expected an address string"),
        ({"endpoints": []}, "endpoints: unknown key"),
    ],
)
def test_legacy_errors(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_legacy({**LEGACY, **change})
    assert str(info.value).startswith(needle)


def test_legacy_short_remote_range_falls_back_to_the_first_port(tmp_path: Path) -> None:
    # realm flattens [1, 2, 7000, 7001]: the fifth listen port gets remote_ports[0]
    # (snirelay used to pair entry with entry and refuse the shorter range)
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**LEGACY, "remote_ports": ["1", "2", "7000-7001"]}))
    eps = load_config(str(path)).endpoints
    assert [(ep.listen.port, ep.upstream.remotes[0].port) for ep in eps] == [
        (5000, 1),
        (5001, 2),
        (6000, 7000),
        (6001, 7001),
        (6002, 1),
    ]


def test_legacy_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**LEGACY, "listening_ports": ["x"]}))
    with pytest.raises(ConfigError, match=r"old\.json: listening_ports\[0\]"):
        load_config(str(path))
