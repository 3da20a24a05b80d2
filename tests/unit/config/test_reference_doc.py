"""docs/reference/config.md mentions every config key and flag, so the reference cannot rot
(its network table is generated: tests/unit/config/test_network_options.py checks it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from snirelay.config.endpoints import ENDPOINT_KEYS, ROUTE_KEYS
from snirelay.config.load import API_KEYS, TOP_KEYS
from snirelay.config.model import DnsConfig, LogConfig, NetworkConfig

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "config.md"

KEYS = sorted(
    {f.name for cls in (NetworkConfig, LogConfig, DnsConfig) for f in dataclasses.fields(cls)}
    | set(ENDPOINT_KEYS)
    | set(ROUTE_KEYS)
    | set(TOP_KEYS)
    | set(API_KEYS)
)


@pytest.mark.parametrize("key", KEYS)
def test_key_is_documented(key: str) -> None:
    assert f"`{key}`" in DOC.read_text(), f"{key} is missing from {DOC}"


def test_cli_flags_are_documented() -> None:
    from snirelay.cli import build_parser

    text = DOC.read_text()
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help"):
                assert f"`{flag}" in text, f"{flag} is missing from {DOC}"
