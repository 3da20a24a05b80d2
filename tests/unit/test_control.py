"""The control channel's framing (snirelay.control): one JSON object per line.

Frames are fed whole, one byte at a time, and several per read; a bad line is
skipped (and logged) without losing the frames around it; an over-long line is
dropped instead of growing the buffer.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

from snirelay import control
from snirelay.observe.log import LOG


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """What the "snirelay" logger writes during the test (it may not propagate)."""
    handler = _Lines()
    level = LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(level)


READY = {
    "type": "ready",
    "pid": 4242,
    "services": [{"address": "127.0.0.1:41234", "place": "endpoints[0]", "kind": "tcp"}],
}


def test_encode_is_one_line_of_json() -> None:
    frame = control.encode({"type": "x", "text": "a\nb"})
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert json.loads(frame) == {"type": "x", "text": "a\nb"}


def test_whole_and_byte_by_byte() -> None:
    frame = control.encode(READY)
    assert control.Framer("t").feed(frame) == [READY]
    f = control.Framer("t")
    got = [m for b in frame for m in f.feed(bytes([b]))]
    assert got == [READY]
    assert f.buf == b""


def test_several_frames_in_one_read_and_a_partial_tail() -> None:
    f = control.Framer("t")
    tail = control.encode({"type": "later"})
    data = control.encode(READY) + control.encode({"type": "other", "n": 1}) + tail[:5]
    assert f.feed(data) == [READY, {"type": "other", "n": 1}]
    assert f.feed(tail[5:]) == [{"type": "later"}]


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]", b'{"no": "type"}', b'{"type": 3}'])
def test_bad_frames_are_skipped_and_logged(bad: bytes, logged: list[str]) -> None:
    f = control.Framer("worker 7")
    got = f.feed(control.encode(READY) + bad + b"\n" + control.encode(READY))
    assert got == [READY, READY]
    assert len(logged) == 1 and "worker 7 sent a bad frame" in logged[0], logged


def test_overlong_line_is_dropped(logged: list[str]) -> None:
    f = control.Framer("t")
    assert f.feed(b"x" * (control.MAX_LINE + 1)) == []
    assert len(f.buf) == 0
    assert len(logged) == 1 and "over" in logged[0], logged


def test_over_a_socketpair() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(control.encode(READY))
        a.close()
        f = control.Framer("t")
        got = []
        while data := b.recv(7):
            got += f.feed(data)
        assert got == [READY]
