"""Fixtures shared by the whole suite (keep this small).

`tests/` is put on sys.path (pytest's default rootdir-based import does it for this
conftest), so tests import helpers as ``from helpers.relay import RelayProcess``.
The repository root is added too, so ``tests.helpers.relay`` also resolves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests run on a shared, sometimes busy machine: no per-example time limit
# (a slow example is not a failure; a wrong answer is).
settings.register_profile("snirelay", deadline=None)
settings.load_profile("snirelay")

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write config text to ``tmp_path/name`` and return the path."""

    def write(text: str, name: str = "relay.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return write
