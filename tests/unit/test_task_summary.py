"""What the task returns for Flower: a one-line string (cheap for Celery to repr)."""

from __future__ import annotations

from core.contract import JobResult
from worker.tasks import summary


def test_summary_names_source_latency_and_model() -> None:
    upstream = JobResult(text="t", model="m-1", source="upstream", degraded=False, latency_ms=52.5)
    assert summary(upstream) == "upstream in 52.5 ms, m-1"


def test_summary_says_when_the_answer_is_degraded() -> None:
    cached = JobResult(text="t", model="m-1", source="cache", degraded=True, latency_ms=0.93)
    assert summary(cached) == "cache (degraded) in 0.93 ms, m-1"
