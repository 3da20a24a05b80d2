"""`snirelay convert OLD.json [-t toml|json] [-o OUT]`: realm's legacy v1 JSON -> modern.

How it works
------------
`main(argv)` reads the file, insists that it is a v1 document (`config.legacy.is_legacy`)
and converts it with ``convert_legacy(data, ranges=False)``: one endpoint per legacy
port pair, in realm's order, every address kept (see `config.legacy` for realm's
pairing rule). No port ranges are written, although snirelay would expand them: realm
reads a modern ``listen`` with ``to_socket_addrs`` and a ``remote`` with
``parse::<u16>`` after the last colon (``src/conf/endpoint.rs``), so it cannot load
``"host:7000-7004"``, and this output is meant to run under realm as well. The dict is
written as TOML by tomli-w (``-t toml``, the default; it puts short endpoints as inline
tables in one ``endpoints = [...]`` array, which TOML reads as ``[[endpoints]]``) or as
JSON (``-t json``, indented), then loaded back with `load_config` from a temporary file before anything
is written, so a legacy file that would convert into an invalid config is reported
here and not at the next start. The text goes to ``-o OUT`` or to stdout.

Error handling
--------------
Exit 0 on success; 2 with one ``snirelay: PLACE: message`` line on stderr for a file
that cannot be read, is not a v1 config, or holds a bad entry (the place names the
file and the list entry, e.g. ``old.json: listening_ports[2]``); 1 when OUT cannot be
written or nobody reads stdout any more (EPIPE; a reader that leaves half-way, ``|
head``, may also just get less, as CPython's buffered writer drops the rest quietly);
argparse's usage errors exit 2. No traceback for any of these.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import tomli_w

from snirelay.config.legacy import convert_legacy, is_legacy
from snirelay.config.load import load_config, parse_text
from snirelay.config.model import ConfigError
from snirelay.config.notes import error_lines, within


def _parser() -> argparse.ArgumentParser:
    from snirelay.cli import OneLineParser

    p = OneLineParser(
        prog="snirelay convert",
        description="Convert realm's legacy v1 JSON config into the modern format "
        "(one endpoint per port pair, loadable by realm and snirelay).",
    )
    p.add_argument("path", metavar="OLD.json", help="the legacy v1 config to convert")
    p.add_argument(
        "-t",
        "--type",
        choices=("toml", "json"),
        default="toml",
        help="output format (default: toml)",
    )
    p.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    return p


def convert_text(path: str, kind: str) -> str:
    """The converted config of the v1 file at `path` as `kind` text, checked to load."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    data: Any = parse_text(text, path)
    if not is_legacy(data):
        raise ConfigError(path, "not a legacy v1 config (no listening_ports etc.)")
    try:
        modern = convert_legacy(data, ranges=False)
    except ConfigError as exc:
        raise within(exc, path) from None
    out = tomli_w.dumps(modern) if kind == "toml" else json.dumps(modern, indent=2) + "\n"
    _check_loads(out, kind)
    return out


def _check_loads(text: str, kind: str) -> None:
    """Raise the loader's `ConfigError` if `text` does not load as a config."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"converted.{kind}"
        path.write_text(text, encoding="utf-8")
        load_config(str(path))


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    try:
        out = convert_text(ns.path, ns.type)
    except ConfigError as exc:
        for line in error_lines(exc):
            print(f"snirelay: {line}", file=sys.stderr)
        return 2
    if ns.output:
        try:
            Path(ns.output).write_text(out, encoding="utf-8")
        except OSError as exc:
            print(f"snirelay: {ns.output}: cannot write: {exc.strerror}", file=sys.stderr)
            return 1
        return 0
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader left (``| head``): no traceback, and none at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return 0
