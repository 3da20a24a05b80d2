"""Logging set-up from realm's `[log]` table, and the one record per connection.

Levels are realm's (off, error, warn, info, debug, trace). The connection record is
written by `conn_record()` at info level on the "snirelay.conn" logger, as
`conn key=value ...` text or as one JSON object per line (`log.format = "json"`).
Callers check `CONN_LOG.isEnabledFor(logging.INFO)` once per connection close, so a
relay with logging off does no formatting work at all.
"""

from __future__ import annotations

import json
import logging
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


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            return json.dumps(fields, separators=(",", ":"))
        return json.dumps(
            {
                "event": "log",
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "msg": record.getMessage(),
            },
            separators=(",", ":"),
        )


def setup(cfg: LogConfig) -> None:
    """Configure the "snirelay" logger tree. Idempotent."""
    logging.addLevelName(TRACE, "TRACE")
    level = LEVELS.get(cfg.level, logging.CRITICAL + 10)
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    handler: logging.Handler
    if cfg.output == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    elif cfg.output == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(cfg.output)
    if cfg.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False


def _text_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    s = ",".join(str(x) for x in v) or "-" if isinstance(v, list | tuple) else str(v)
    # quoted (JSON string escapes) when it would not read back as one token
    return json.dumps(s) if (" " in s or '"' in s or "\\" in s) else s


def conn_record(fields: dict[str, Any]) -> None:
    """Emit one connection record (the caller checked the level)."""
    text = "conn " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if k != "event")
    CONN_LOG.info(text, extra={"fields": fields})
