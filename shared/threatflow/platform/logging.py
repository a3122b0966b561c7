"""Structured JSON logs on stdout, in the shape Cloud Logging parses.

Each line carries severity, message, the request or execution id from a context
variable, and whatever domain ids the caller passes in `extra={"fields": {...}}`.
Keys that look like secrets are masked, so a token never lands in a log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

execution_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("execution_id", default=None)
_SECRET_KEYS = ("password", "secret", "token", "authorization", "apikey", "api_key", "x-apikey")
_configured = False


def new_execution_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def execution_scope(value: str | None = None) -> Iterator[str]:
    ident = value or new_execution_id()
    token = execution_id.set(ident)
    try:
        yield ident
    finally:
        execution_id.reset(token)


def _masked(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: ("***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in fields.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "logger": record.name,
        }
        ident = execution_id.get()
        if ident:
            entry["execution_id"] = ident
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(_masked(fields))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    """Route the root logger to JSON on stdout; safe to call more than once."""
    global _configured  # noqa: PLW0603 - logging set-up is process-wide by nature
    root = logging.getLogger()
    root.setLevel(level)
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    _configured = True


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    logger.log(level, message, extra={"fields": fields})


def cleanup_after(failure: BaseException, cleanup: Callable[[], T], *, logger: logging.Logger, what: str, **fields: Any) -> T | None:
    """Runs `cleanup` (undoing what a failed step left: a record its failed publish queued) while `failure` is being
    handled, and returns its result; a cleanup that fails too is logged (ERROR, structured, its traceback, `failure`
    named) and None returned, so the caller raises `failure` again. Raised from the `except` block, the cleanup's
    error was the one answered and logged, `failure` only its context: a Firestore delete's error hid a publish's."""
    try:
        return cleanup()
    except Exception as exc:
        logger.error(
            f"{what} failed after {failure.__class__.__name__}: {exc.__class__.__name__}: {exc}",
            exc_info=True,
            extra={"fields": {**fields, "failure": f"{failure.__class__.__name__}: {failure}"}},
        )
        return None
