"""Log injection: every value from the network is escaped in every log format.

Each control byte (0x00-0x1f, 0x7f), a non-ASCII character, a lone surrogate, a
backslash, a quote, a comma, a space and the None marker "-" go through each text
field of a connection record, in the text and the JSON format, through the real
logging set-up (`observe.log.setup` writing to a file). Each record must be one line
and read back to the same value. Ordinary log lines must stay one line too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.logtext import as_list, parse_record
from snirelay.config.model import LogConfig
from snirelay.observe import log

NASTY = [chr(c) for c in (*range(0x20), 0x7F)] + [
    "\x85",  # NEL: a line break to str.splitlines
    "\u2028",  # LINE SEPARATOR
    "é",
    "\udcff",  # a lone surrogate (what surrogateescape makes of byte 0xff)
    "\\x80",  # what the ClientHello parser makes of byte 0x80 (backslashreplace)
    "\\",
    '"',
    ",",
    " ",
    "=",
    "-",
    "",
]
STR_FIELDS = ("listener", "client", "backend", "sni", "kind", "route", "path", "close", "hint")
LIST_FIELDS = ("alpn", "failed_remotes")


def record(**override: Any) -> dict[str, Any]:
    """A record with every field the relay writes (net/conn.py `_record`)."""
    fields: dict[str, Any] = {
        "event": "conn",
        "id": 7,
        "listener": "endpoints[0]",
        "client": "127.0.0.1:50000",
        "backend": "127.0.0.1:443",
        "sni": "emby.example.com",
        "alpn": ["h2", "http/1.1"],
        "ech": False,
        "kind": "tls",
        "route": "endpoints[0].routes[0]",
        "bytes_up": 517,
        "bytes_down": 0,
        "duration": 0.25,
        "path": "splice",
        "close": "eof",
        "failed_remotes": ["127.0.0.1:1"],
        "hint": "a hint",
    }
    fields.update(override)
    return fields


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Callable[[str, Callable[[], None]], str]]:
    """Set logging up as the relay does (to a file), run `emit`, return the file's text."""
    saved = (list(log.LOG.handlers), log.LOG.level, log.LOG.propagate)
    path = tmp_path / "relay.log"

    def run(fmt: str, emit: Callable[[], None]) -> str:
        path.write_text("")
        log.setup(LogConfig(level="info", output=str(path), format=fmt))
        emit()
        for h in log.LOG.handlers:
            h.flush()
        return path.read_text(encoding="utf-8")

    yield run
    for h in list(log.LOG.handlers):
        log.LOG.removeHandler(h)
        h.close()
    log.LOG.handlers[:] = saved[0]
    log.LOG.setLevel(saved[1])
    log.LOG.propagate = saved[2]


def _one_line(text: str) -> str:
    assert text.endswith("\n")
    lines = text.splitlines()  # splits on \r, \x0b, \x0c, \x1c-\x1e, \x85, \u2028 too
    assert len(lines) == 1, lines
    assert lines[0].isprintable(), lines[0]
    return lines[0]


def _emit(field: str, value: Any) -> None:
    log.conn_record(record(**{field: value}))


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("field", STR_FIELDS + LIST_FIELDS)
def test_every_byte_in_every_field_stays_one_line(
    fmt: str, field: str, logged: Callable[[str, Callable[[], None]], str]
) -> None:
    for ch in NASTY:
        value = f"a{ch}b{ch}"
        written: Any = [value, ch, "x"] if field in LIST_FIELDS else value
        line = _one_line(logged(fmt, functools.partial(_emit, field, written)))
        if fmt == "json":
            back = json.loads(line)[field]
        else:
            parsed = parse_record(line)
            back = as_list(parsed[field]) if field in LIST_FIELDS else parsed[field]
            assert parsed["id"] == "7" and parsed["close"] == ("eof" if field != "close" else value)
        assert back == written, (repr(ch), line)


def test_the_forged_record_of_the_report_is_quoted(
    logged: Callable[[str, Callable[[], None]], str],
) -> None:
    forged = "h2\r\n2026-12-01T00:00:00 INFO conn id=999 close=forged"
    line = _one_line(logged("text", lambda: log.conn_record(record(alpn=[forged, "http/1.1"]))))
    assert 'alpn="h2\\r\\n2026-12-01T00:00:00 INFO conn id=999 close=forged",http/1.1' in line


def test_plain_values_stay_bare_and_none_is_a_dash() -> None:
    assert log.text_value("emby.example.com") == "emby.example.com"
    assert log.text_value(["h2", "http/1.1"]) == "h2,http/1.1"
    assert log.text_value(None) == "-" and log.text_value([]) == "-"
    assert log.text_value("-") == '"-"' and log.text_value("") == '""'
    assert log.text_value("a b") == '"a b"' and log.text_value("a,b") == '"a,b"'
    assert log.text_value("\x7f") == '"\\u007f"'
    assert log.text_value(True) == "yes" and log.text_value(3) == "3"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_ordinary_lines_stay_one_line(
    fmt: str, logged: Callable[[str, Callable[[], None]], str]
) -> None:
    hostile = "".join(NASTY)
    # a caller that escapes the value: it reads back exactly
    line = _one_line(logged(fmt, lambda: log.LOG.warning("no route for %s", log.esc(hostile))))
    msg = json.loads(line)["msg"] if fmt == "json" else line.split(" WARNING ", 1)[1]
    assert json.loads(msg.removeprefix("no route for ")) == hostile
    # a caller that forgot: still one line (the text formatter escapes what is left)
    line = _one_line(logged(fmt, lambda: log.LOG.warning("raw %s", hostile)))
    if fmt == "text":
        assert "raw \\x00\\x01\\x02" in line and "\\x0a" in line and "\\u2028" in line


def test_a_traceback_keeps_its_lines(logged: Callable[[str, Callable[[], None]], str]) -> None:
    def emit() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.LOG.exception("failed\nhere")

    text = logged("text", emit)
    assert "failed\\x0ahere" in text.splitlines()[0]
    assert "Traceback (most recent call last):" in text and "ValueError: boom" in text
