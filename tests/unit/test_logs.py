"""Log lines carry their event's fields: key=value in development, JSON in production."""

from __future__ import annotations

import json
import logging

from core.logs import KeyValueFormatter, configure_logging, formatter_for
from core.settings import Settings


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "worker.generation", logging.INFO, __file__, 1, "fallback.served", None, None
    )
    rec.__dict__.update(extra)
    return rec


def test_text_lines_show_the_extra_fields() -> None:
    """The event name comes first, then each extra field as key=value."""
    line = KeyValueFormatter("%(message)s").format(record(job_id="j1", source="cache"))
    assert line == "fallback.served job_id=j1 source=cache"


def test_production_logs_one_json_object_with_the_fields() -> None:
    """In production the formatter emits JSON holding the message and the fields."""
    formatter = formatter_for(Settings(env="production", api_keys="k" * 20))  # type: ignore[arg-type]
    payload = json.loads(formatter.format(record(job_id="j1", reason="circuit_open")))
    assert payload["message"] == "fallback.served"
    assert payload["job_id"] == "j1"
    assert payload["reason"] == "circuit_open"


def test_development_defaults_to_text() -> None:
    """Without GENQ_LOG_FORMAT, development gets key=value text."""
    assert isinstance(formatter_for(Settings(env="development")), KeyValueFormatter)


def test_genq_loggers_follow_the_worker_level_unless_set() -> None:
    """Unset GENQ_LOG_LEVEL: the worker's --loglevel wins; set: the setting wins."""
    configure_logging(Settings(), handlers=[], level=logging.WARNING)
    assert logging.getLogger("worker").level == logging.WARNING
    configure_logging(Settings(log_level="DEBUG"), handlers=[], level=logging.WARNING)
    assert logging.getLogger("worker").level == logging.DEBUG
    configure_logging(Settings(), handlers=[], level=None)
    assert logging.getLogger("worker").level == logging.INFO
