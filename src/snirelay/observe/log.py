"""Logging set-up from realm's `[log]` table, and the one record per connection.

`setup(cfg)` opens the output (`open_output`: stdout, stderr or a file; a file that
cannot be opened is one line naming ``log.output``, exit code 2) and then replaces the
handlers of the "snirelay" logger.

Levels are realm's (off, error, warn, info, debug, trace). The connection record is
written by `conn_record()` at info level on the "snirelay.conn" logger, as
`conn key=value ...` text or as one JSON object per line (`log.format = "json"`).
Callers check `CONN_LOG.isEnabledFor(logging.INFO)` once per connection close, so a
relay with logging off does no formatting work at all.

Escaping: record values come from the network (SNI, ALPN, an HTTP Host, hints that
quote them), so no byte of theirs may reach the log raw. In a text record each value
is ``-`` (None, or an empty list) or items joined by ``,``; an item is written bare
when it is printable ASCII without space, ``"``, ``\\`` or ``,`` (and is not "-"),
and otherwise as a JSON string literal with every non-ASCII and control character
(DEL too) escaped: ``alpn="h2\\r\\nconn id=9",http/1.1``. So a record is always one
line, and `json.loads` of a quoted item gives back the exact value. JSON records are
`json.dumps` with the same ASCII escaping. Ordinary log lines pass network values
through `esc()` (the same quoting); as a safety net the text formatter also escapes
any non-printable character left in a message (``\\x1b``), so no line can be split or
forged whatever a caller passed. A traceback (``LOG.exception``) keeps its lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from snirelay.config.model import LogConfig

TRACE = 5
LEVELS = {
    "off": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

LOG = logging.getLogger("snirelay")
CONN_LOG = logging.getLogger("snirelay.conn")


# an item written bare in a text record: printable ASCII but space, '"', ',' and '\\'
_bare = re.compile(r"[!#-+\--\[\]-~]+").fullmatch
_json = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: escapes all but 0x20-0x7e


def esc(value: object) -> str:
    """`value` as one token for a log line: itself when plainly printable ASCII, else a
    quoted JSON string literal (control, non-ASCII, space, quote, comma, backslash)."""
    s = value if isinstance(value, str) else str(value)
    return s if _bare(s) and s != "-" else _json(s)


def _unprintable(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def one_line(text: str) -> str:
    """`text` with every non-printable character (controls, line and paragraph
    separators, lone surrogates...) written as a backslash escape; space stays."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _unprintable(ch) for ch in text)


class _TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return _json(fields)
        return _json(
            {
                "event": "log",
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "msg": record.getMessage(),
            }
        )


def open_output(output: str) -> logging.Handler:
    """A handler writing to `output`: "stdout", "stderr", or a file path (appended to,
    created when missing).

    Error handling: a file that cannot be opened (its directory missing, a directory, no
    permission, a NUL byte or a lone surrogate in the name) raises
    `snirelay.startup.StartupError` (exit code 2) with one line naming ``log.output``,
    the key ``--log-output`` sets too: ``log.output: cannot open '/x/relay.log': No
    such file or directory``. `server.run` sets up logging before it checks or binds
    anything, so that is the start's one line and exit 2; a reload catches it and keeps
    the log it has."""
    if output == "stdout":
        return logging.StreamHandler(sys.stdout)
    if output == "stderr":
        return logging.StreamHandler(sys.stderr)
    try:
        if not output.strip():  # FileHandler would open the working directory
            raise ValueError("the path is empty")
        return logging.FileHandler(output)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte, a lone surrogate
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        from snirelay.startup import StartupError  # not at the top: startup imports us

        raise StartupError(f"log.output: cannot open {output!r}: {why}", 2) from None


def setup(cfg: LogConfig) -> None:
    """Configure the "snirelay" logger tree. Idempotent. The output is opened before the
    handlers in place are closed, so when it cannot be (`open_output`) they stay."""
    logging.addLevelName(TRACE, "TRACE")
    level = LEVELS.get(cfg.level, logging.CRITICAL + 10)
    handler = open_output(cfg.output)
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            _TextFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    handler.handleError = _write_failed  # type: ignore[method-assign]
    LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


_WRITE_FAILED = [False]


def _write_failed(record: logging.LogRecord) -> None:
    """A log line that cannot be written (a full disk, /dev/full, a closed pipe): one
    line on stderr the first time, instead of logging's traceback per record; the relay
    goes on (its traffic does not depend on its log)."""
    if _WRITE_FAILED[0]:
        return
    _WRITE_FAILED[0] = True
    exc = sys.exc_info()[1]
    why = getattr(exc, "strerror", None) or exc
    try:
        sys.stderr.write(f"snirelay: the log cannot be written ({why}); going on without it\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def text_value(v: Any) -> str:
    """One value of a text record (see the module docstring for the grammar).

    Dispatches on the exact type, most frequent first: this runs for every field of
    every record."""
    t = type(v)
    if t is str:
        return esc(v)
    if t is int:
        return str(v)
    if v is None:
        return "-"
    if t is bool:
        return "yes" if v else "no"
    if t is float:
        return f"{v:.3f}"
    if t is list or t is tuple:
        return ",".join([esc(x) for x in v]) or "-"
    return esc(v)


def conn_record(fields: dict[str, Any]) -> None:
    """Emit one connection record (the caller checked the level)."""
    text = f"{fields.get('event', 'conn')} " + " ".join(
        f"{k}={text_value(v)}" for k, v in fields.items() if k != "event"
    )
    CONN_LOG.info(text, extra={"fields": fields})
