"""Shared access to tests/vectors for the wire tests (see tests/vectors/README.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
CLIENTHELLO = VECTORS / "clienthello"
MANIFEST: list[dict[str, Any]] = json.loads((CLIENTHELLO / "manifest.json").read_text())["vectors"]
TLS = [v for v in MANIFEST if v["kind"] == "tls"]


def load_make_variants() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_variants", VECTORS / "make_variants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_variants = load_make_variants()


def data_of(v: dict[str, Any]) -> bytes:
    return (CLIENTHELLO / str(v["file"])).read_bytes()


def hello_end(v: dict[str, Any]) -> int:
    return int(v.get("clienthello_end", v["size"]))


def vid(v: dict[str, Any]) -> str:
    return str(v["file"])


def http_name(v: dict[str, Any]) -> str:
    """The manifest's http_host as a router sees it: lowercased, port dropped."""
    host = str(v["http_host"]).lower()
    return host.rpartition(":")[0] if ":" in host and not host.startswith("[") else host
