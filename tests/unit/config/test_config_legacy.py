"""Legacy v1 conversion, the TOML writer, and the round trip legacy -> convert -> load."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snirelay.config.legacy import convert_legacy, is_legacy
from snirelay.config.load import load_config
from snirelay.config.model import Addr, ConfigError
from snirelay.config.tomlwrite import dumps

LEGACY = {
    "listening_addresses": ["127.0.0.1", "::1"],
    "listening_ports": ["5000", 5001, "6000-6002"],
    "remote_addresses": ["example.com"],
    "remote_ports": ["443", "444", "7000-7002"],
}


def test_convert_pairs_nth_or_first() -> None:
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
    new.write_text(dumps(modern) if kind == "toml" else json.dumps(modern))
    assert load_config(str(new)) == load_config(str(old))


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


def test_legacy_mismatched_range_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**LEGACY, "remote_ports": ["1", "2", "7000-7001"]}))
    with pytest.raises(ConfigError, match=r"endpoints\[2\]\.remote: port range"):
        load_config(str(path))


def test_legacy_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({**LEGACY, "listening_ports": ["x"]}))
    with pytest.raises(ConfigError, match=r"old\.json: listening_ports\[0\]"):
        load_config(str(path))


# ---------------------------------------------------------------- the TOML writer


def test_dumps_config_shape() -> None:
    data = {
        "workers": 2,
        "log": {"level": "info"},
        "network": {"tcp_timeout": 1.5, "use_udp": True},
        "endpoints": [
            {
                "listen": "0.0.0.0:443",
                "extra_remotes": ["a:1", "b:2"],
                "network": {"tcp_keepalive": 0},
                "routes": [{"server_names": ["a.b"], "remote": "x:1"}, {"when": "no_sni"}],
            },
            {"listen": "0.0.0.0:444", "remote": 'we"ird\\name\n:1'},
        ],
        "weird key": {"ü": "é", "empty": [], "inline": [[1, 2], [3]]},
    }
    text = dumps(data)
    assert "[[endpoints.routes]]" in text and "[endpoints.network]" in text
    assert tomllib.loads(text) == data


def test_dumps_rejects_what_toml_cannot_say() -> None:
    with pytest.raises(ValueError):
        dumps({"a": None})
    with pytest.raises(ValueError):
        dumps({"a": [{"x": 1}, 2]})


_keys = st.text(min_size=1, max_size=8)
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_values = st.recursive(
    _scalars | st.lists(_scalars, max_size=3),
    lambda inner: (
        st.dictionaries(_keys, inner, max_size=3)
        | st.lists(st.dictionaries(_keys, inner, min_size=1, max_size=3), min_size=1, max_size=2)
    ),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=4))
def test_dumps_round_trips(data: dict[str, Any]) -> None:
    assert tomllib.loads(dumps(data)) == data
