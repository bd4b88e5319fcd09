"""Structured logs: one JSON object per line, through the stdlib `logging` module.

Log collectors (Loki, Cloud Logging, `kubectl logs | jq`) parse JSON lines without per-format
regexes, and fields such as `job` and `attempt` become queryable. Code keeps using plain
`logging` calls; context travels in `extra=` or through `bind()`:

    log = bind(logging.getLogger(__name__), job="ns/train-1")
    log.info("restarting", extra={"attempt": 2})
    # {"ts": "2030-01-01T00:00:00.000Z", "level": "info", "logger": "...", "msg": "restarting",
    #  "job": "ns/train-1", "attempt": 2}

Configuration is explicit (`configure_logging()` from `__main__`); importing this module changes nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted as a field.
_RECORD_ATTRIBUTES = frozenset(
    {
        "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname",
        "levelno", "lineno", "message", "module", "msecs", "msg", "name", "pathname", "process",
        "processName", "relativeCreated", "stack_info", "taskName", "thread", "threadName",
    }
)  # fmt: skip


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, then any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray non-JSON value (a datetime, an exception) must not lose the whole line.
        return json.dumps(payload, default=str, ensure_ascii=False)


def parse_level(level: int | str) -> int:
    """`"debug"`, `"INFO"`, `20`, ... as a logging level; unknown names raise ValueError."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(
    *, level: int | str = "info", stream: IO[str] | None = None, logger: logging.Logger | None = None
) -> logging.Handler:
    """Make `logger` (default: the root logger) write JSON lines to `stream` (default: stderr).

    Existing handlers on that logger are removed, so calling this twice does not duplicate lines.
    Returns the installed handler.
    """
    target = logger or logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for old in list(target.handlers):
        target.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(parse_level(level))
    return handler


class _BoundLogger(logging.LoggerAdapter):
    """A LoggerAdapter that merges its fields with call-site `extra=` (the stdlib one replaces them)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def bind(logger: logging.Logger | logging.LoggerAdapter, **fields: Any) -> logging.LoggerAdapter:
    """A logger that adds `fields` to every record; binding a bound logger adds to its fields."""
    if isinstance(logger, _BoundLogger):
        base: Mapping[str, Any] = logger.extra or {}
        return _BoundLogger(logger.logger, {**base, **fields})
    return _BoundLogger(logger, fields)
