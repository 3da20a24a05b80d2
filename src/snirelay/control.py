"""The control channel between the supervisor and one worker (`workers > 1`).

Transport: one `socket.socketpair()` (AF_UNIX, SOCK_STREAM) per worker, made by the
supervisor before it forks the worker. Each process keeps one end; the worker closes
every other control socket it inherited, so a channel has exactly two holders.

End of file means the other process is gone:

- the worker watches its end in its event loop; EOF (the supervisor died, even by
  SIGKILL) makes it stop accepting, drain like on SIGTERM, and exit;
- the supervisor sees EOF when a worker exits; it learns how the worker ended from
  `waitpid` (SIGCHLD), not from the channel.

Frames: one JSON object per line, UTF-8, ending in "\\n", at most `MAX_LINE` bytes,
with a "type" key naming the message. A receiver logs and skips a line that is not
such an object, and ignores a type it does not know, so later issues can add messages
(metrics gathered for the admin API, a reload fanned out) one side at a time.

Messages today:

- worker -> supervisor, once, after every service started:
  ``{"type": "ready", "pid": 4242, "services": [{"address": "127.0.0.1:41234",
  "place": "endpoints[0]", "kind": "tcp"}]}``
- fan-outs, for the admin API (served by the worker in slot 0, which asks every worker,
  itself too, through the supervisor):
  - worker -> supervisor: ``{"type": "fanout", "id": 7, "ask": "snapshot"}`` (or
    ``"reload"``: the supervisor reads the config again too, for the workers it starts
    later);
  - supervisor -> each worker: ``{"type": "ask", "id": 7, "ask": "snapshot"}``;
  - each worker -> supervisor: ``{"type": "answer", "id": 7, "data": {...}}`` (a
    snapshot: observe.stats.Stats.snapshot(); a reload: what Server.reload returned);
  - supervisor -> the asker, per answer: ``{"type": "answer", "id": 7, "pid": 4243,
    "data": {...}}``, then ``{"type": "answers-done", "id": 7, "missing": [4244]}``
    (workers that died before answering). The asker has its own deadline.

Nothing here blocks or owns a socket: `encode` makes a frame, `Framer` splits what
was received into messages.
"""

from __future__ import annotations

import json
from typing import Any

from snirelay.observe.log import LOG

MAX_LINE = 1 << 26  # a snapshot of 50,000 live connections is a few MiB; the peer is ours


def encode(msg: dict[str, Any]) -> bytes:
    """One frame: the message as compact JSON and a newline (JSON escapes any newline
    inside strings, so the frame has exactly one)."""
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class Framer:
    """Splits a received byte stream into messages (dicts with a str "type")."""

    __slots__ = ("buf", "peer")

    def __init__(self, peer: str) -> None:
        self.buf = bytearray()
        self.peer = peer  # for log lines: "worker 4242", "supervisor"

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buf += data
        out: list[dict[str, Any]] = []
        while (end := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:end])
            del self.buf[: end + 1]
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and isinstance(msg.get("type"), str):
                out.append(msg)
            else:
                LOG.warning("control: %s sent a bad frame: %r", self.peer, line[:80])
        if len(self.buf) > MAX_LINE:
            LOG.warning("control: %s sent a frame over %d bytes; dropped", self.peer, MAX_LINE)
            self.buf.clear()
        return out
