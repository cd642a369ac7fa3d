"""Log lines as events with fields: ``job.finished job_id=… source=cache``.

Every genq module logs an event name as the message and its fields as ``extra``. This
module makes those fields visible: ``key=value`` after the message in development, one
JSON object per line in production (python-json-logger). The worker installs it through
Celery's logging signals, the API at start-up.

Lines about one job follow it from the API to the worker: :func:`log_context` binds
fields (``request_id``, ``job_id``, ``batch_id``) for a block, and every line written
inside it carries them (:class:`ContextFilter`, on each handler ``configure_logging``
formats). The API binds the request's ``X-Request-ID`` (``api.request_ids``), the
message carries it (``api.publish``), and the worker binds it with the job's ids.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from core.settings import Settings

__all__ = [
    "ContextFilter",
    "KeyValueFormatter",
    "configure_logging",
    "current_request_id",
    "formatter_for",
    "log_context",
]

# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


#: The packages whose loggers GENQ_LOG_LEVEL governs.
GENQ_LOGGERS = ("core", "worker", "api")


_NONE: Mapping[str, str] = MappingProxyType({})
_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("genq_log_context", default=_NONE)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Every line logged inside the block (in this thread or task) carries ``fields``
    (those not None or empty), unless the line names the field itself."""
    bound = {name: value for name, value in fields.items() if value}
    token = _CONTEXT.set({**_CONTEXT.get(), **bound})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_request_id() -> str:
    """The ``request_id`` bound by :func:`log_context` ("" outside one)."""
    return _CONTEXT.get().get("request_id", "")


class ContextFilter(logging.Filter):
    """Adds the fields :func:`log_context` bound to each record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _CONTEXT.get().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


_FILTER = ContextFilter()


class KeyValueFormatter(logging.Formatter):
    """The usual line, then the record's ``extra`` fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={_short(v)}" for k, v in fields.items())


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "…"


def formatter_for(settings: Settings) -> logging.Formatter:
    """JSON in production (or when ``GENQ_LOG_FORMAT=json``), ``key=value`` otherwise."""
    fmt = settings.log_format or ("json" if settings.env == "production" else "text")
    if fmt == "json":
        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(
    settings: Settings, handlers: list[logging.Handler] | None = None, level: int | None = None
) -> None:
    """Give ``handlers`` (default: a stderr handler on the root logger) genq's format, and
    genq's own loggers (``core``, ``worker``, ``api``) their level: ``GENQ_LOG_LEVEL`` when
    set, else ``level`` (the worker's ``--loglevel``), else INFO."""
    root = logging.getLogger()
    if handlers is None:
        if not root.handlers:
            root.addHandler(logging.StreamHandler())
        handlers = root.handlers
    for handler in handlers:
        handler.setFormatter(formatter_for(settings))
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    explicit = "log_level" in settings.model_fields_set
    chosen: int | str = settings.log_level if explicit or level is None else level
    for name in GENQ_LOGGERS:
        logging.getLogger(name).setLevel(chosen)
