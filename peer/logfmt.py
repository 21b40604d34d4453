"""Log lines as JSON, one object a line (``--log-format json`` of ``relay serve`` and
``peer run``), for log collectors that index fields.

Each line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; ``store``, ``device`` and ``connection`` where known; ``pid`` with several
relay processes; ``exception`` with the traceback when there is one.  Those three fields
come from a record's ``extra=`` or else from the context variables below, which the
relay sets for each connection's task (and the tasks it starts) and ``peer run`` sets
once for its till.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

FORMATS = ("text", "json")
FIELDS = ("store", "device", "connection")

_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"tillsync_log_{name}", default=None) for name in FIELDS}


def bind(**fields: str | None) -> None:
    """Name the store, device or connection of what the current task logs from now on
    (and of the tasks it starts after this call)."""
    for name, value in fields.items():
        _context[name].set(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name) or _context[name].get()
            if value is not None:
                out[name] = str(value)
        if self.pid:
            out["pid"] = record.process
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(log_format: str, text_format: str, *, pid: bool = False,
              level: int = logging.INFO) -> None:
    """The root logger's handler (stderr): ``text_format`` as before, or JSON lines."""
    if log_format == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(pid=pid))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=text_format)


def address(remote: object) -> str:
    """A socket's peer address as ``host:port`` (as given otherwise)."""
    if isinstance(remote, tuple) and len(remote) >= 2:
        return f"{remote[0]}:{remote[1]}"
    return str(remote)
