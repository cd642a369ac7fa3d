"""The API's objects as the CLI reads them: typed where the CLI reads them, lenient
elsewhere (unknown fields are kept, untyped, so ``--json`` prints the object whole)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FINAL_STATUSES", "Batch", "BatchLineError", "Circuit", "Job"]

#: Batch statuses after which nothing changes.
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
SOURCES = ("upstream", "cache", "excerpt")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")

    def as_json(self) -> dict[str, Any]:
        """The object as the API sent it: its fields and no defaults it did not send."""
        return self.model_dump(mode="json", exclude_unset=True)


class RequestCounts(_Lenient):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchGenq(_Lenient):
    counts_by_source: dict[str, int] = Field(default_factory=dict)
    cancelled: int = 0


class BatchLineError(_Lenient):
    """One reason a batch failed validation (``line`` counts from 1)."""

    code: str | None = None
    message: str = ""
    line: int | None = None
    param: str | None = None


class BatchErrors(_Lenient):
    data: list[BatchLineError] = Field(default_factory=list)


class Batch(_Lenient):
    """OpenAI's ``Batch`` object with genq's ``genq`` figures."""

    id: str
    status: str
    endpoint: str = ""
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    errors: BatchErrors | None = None
    genq: BatchGenq = Field(default_factory=BatchGenq)

    @property
    def done(self) -> int:
        """Requests that have an answer or an error."""
        return self.request_counts.completed + self.request_counts.failed

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def by_source(self) -> dict[str, int]:
        """Answers by source, every source present (0 when none)."""
        counts = self.genq.counts_by_source
        return {source: int(counts.get(source, 0)) for source in SOURCES}

    @property
    def line_errors(self) -> list[BatchLineError]:
        return self.errors.data if self.errors else []


class Circuit(_Lenient):
    """One shared circuit breaker, as ``GET /v1/circuits`` shows it."""

    name: str
    state: str
    failure_count: int = 0
    retry_after: float = 0.0
    last_failure: str | None = None
    probe_in_flight: bool = False
    transitions: dict[str, int] = Field(default_factory=dict)


class JobResult(_Lenient):
    text: str = ""
    model: str = ""
    source: str = "upstream"
    degraded: bool = False
    latency_ms: float | None = None
    fallback_reason: str | None = None
    circuit: str | None = None
    retry_after: float | None = None
    citations: list[dict[str, Any]] = Field(default_factory=list)


class JobError(_Lenient):
    type: str = "error"
    message: str = ""
    retry_after: float | None = None


class Job(_Lenient):
    """A job (``/v1/jobs/{id}``)."""

    id: str
    status: str
    result: JobResult | None = None
    error: JobError | None = None

    @property
    def final(self) -> bool:
        return self.status in ("succeeded", "failed")
