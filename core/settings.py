"""genq's configuration: one typed settings class, read once from ``GENQ_*`` variables.

Nothing else in genq reads the environment. Every default is documented on its field
and in the README's configuration table; values that cannot work together fail at
start-up rather than on the first job.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    HttpUrl,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.circuits import circuit_name
from core.contract import ModelId
from core.failover import FailoverTarget, Protocol

__all__ = ["Protocol", "Settings", "get_settings"]


#: Schemes of ``GENQ_REDIS_URL``: plain, TLS, or Redis Sentinel (``;``-separated sentinels).
REDIS_SCHEMES = ("redis", "rediss", "sentinel")

# Keys that ship in examples; refused outside development so nobody deploys them.
_PLACEHOLDER_KEYS = frozenset({"changeme", "dev-key", "secret", "test"})


def _split_keys(value: object) -> object:
    """Accept ``a,b,c`` as well as a list, so keys can be set in one variable."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything genq can be configured with; see README.md for the table."""

    # hide_input_in_errors: a rejected value may be a password, a key or a token.
    model_config = SettingsConfigDict(
        env_prefix="GENQ_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    env: Literal["development", "production"] = "development"
    """``production`` refuses placeholder API keys and a missing key list."""

    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    """Broker, result backend, job records, breaker state and cache all live here:
    ``redis://[:password@]host:port/db``, ``rediss://`` (TLS), or
    ``sentinel://[:password@]host:port[;sentinel://host:port…]`` with
    ``redis_sentinel_master`` (the password is the master's). Kept out of ``repr``."""
    redis_sentinel_master: str | None = Field(default=None, min_length=1)
    """The master name the sentinels know; required with ``sentinel://`` URLs."""
    redis_sentinel_password: SecretStr | None = None
    """Password of the sentinels themselves, when they have one (their ``requirepass``)."""
    redis_socket_timeout_s: PositiveFloat = 5.0
    """Bound on every Redis call, so a hung Redis turns into an error, not a hang."""

    upstream_url: HttpUrl = HttpUrl("http://127.0.0.1:8081")
    """Base URL of the model endpoint (HF Inference API, TGI server, OpenAI-compatible)."""
    upstream_protocol: Protocol = "hf"
    upstream_model: ModelId = "simulator/echo-1"
    upstream_prompt_route: Literal["completions", "chat"] | None = None
    """Where a prompt job goes on ``openai`` and ``tgi`` upstreams: ``completions``
    (``/v1/completions``; TGI's ``/generate``) or ``chat`` (one user message on
    ``/v1/chat/completions``). Unset: ``chat`` for openai, ``completions`` for tgi."""
    allowed_models: Annotated[list[ModelId], NoDecode] = Field(default_factory=list)
    """Comma-separated models a job may name (besides the default). Empty: in
    development any model; in production only the default. Each model has its own
    circuit, so an open list lets clients create circuits."""
    upstream_token: SecretStr | None = None
    """Bearer token sent upstream; never logged, never stored in a result."""
    upstream_failover: list[FailoverTarget] = Field(default_factory=list, max_length=8)
    """Targets tried in order after the primary when it cannot answer (a JSON list:
    ``core.failover``); each names the variable of its token, which must be set."""
    _failover_tokens: list[SecretStr | None] = PrivateAttr(default_factory=list)
    upstream_timeout_s: PositiveFloat = 30.0
    """Read timeout of one upstream call."""
    upstream_connect_timeout_s: PositiveFloat = 3.05
    upstream_limit: Literal["adaptive", "fixed"] = "adaptive"
    """How many calls the whole cluster keeps in flight per upstream target: ``adaptive``
    finds the provider's capacity (AIMD: grow while calls succeed, cut on 429s, timeouts
    and, with ``upstream_latency_target_s``, slow answers); ``fixed`` holds
    ``upstream_max_in_flight``. docs/architecture.md, "One call limit for the cluster"."""
    upstream_max_in_flight: PositiveInt = 512
    """The fixed limit, or the adaptive limit's ceiling, of calls in flight per target."""
    upstream_min_in_flight: PositiveInt = 1
    """The adaptive limit's floor; 429s that persist at the floor count against the circuit."""
    upstream_initial_in_flight: PositiveInt = 32
    """Where an adaptive limit starts (it doubles per round of calls until the first cut)."""
    upstream_latency_target_s: PositiveFloat | None = None
    """If set, an adaptive limit is also cut when a call succeeds slower than this."""
    interactive_slot_wait_s: float = Field(default=1.0, ge=0.0, le=30.0)
    """How long an interactive job waits for a call slot before the fallback answers it
    (``fallback_reason: rate_limited``); one the fallback cannot answer waits on, up to
    ``batch_slot_wait_s`` in all."""
    batch_slot_wait_s: PositiveFloat = 60.0
    """How long a batch item waits for a call slot before it is retried later."""

    breaker_fail_max: PositiveInt = 5
    """Consecutive failures that open the circuit (pybreaker's ``fail_max``)."""
    breaker_reset_timeout_s: PositiveFloat = 30.0
    """Seconds the circuit stays open before one probe is let through."""
    breaker_max_reset_timeout_s: PositiveFloat = 600.0
    """Cap of the open window, which grows with failed probes and upstream hints."""
    breaker_success_threshold: PositiveInt = 1
    """Successful probes needed to close the circuit again."""
    breaker_window_s: PositiveFloat | None = None
    """If set, also trip on the failure rate over this sliding window."""
    breaker_failure_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Failure rate (0-1] over ``breaker_window_s`` that opens the circuit."""
    breaker_min_calls: PositiveInt = 10
    """Calls needed in the window before the failure rate is judged."""
    breaker_slow_call_s: PositiveFloat | None = None
    """If set, a successful call slower than this counts as a failure."""
    max_retries: int = Field(default=3, ge=0, le=20)
    """Retries of a transient upstream failure while the circuit is closed."""
    max_throttled_retries: int = Field(default=20, ge=0, le=100)
    """Retries after a 429 (at ``Retry-After``) or a batch item's wait for a call slot;
    they spend this budget, not ``max_retries``: the upstream asked for slower, not none."""
    retry_base_s: PositiveFloat = 1.0
    """First retry waits up to this long (full jitter), doubling per retry."""
    retry_cap_s: PositiveFloat = 30.0
    """No retry waits longer, whatever ``Retry-After`` says."""
    cache_scope: Literal["key", "shared"] = "key"
    """``key``: a cached answer serves only jobs of the API key that caused it; ``shared``:
    any key's job with the same request (only where every key may see every answer)."""
    cache_ttl_s: PositiveInt = 86_400
    """How long a successful generation is kept for fallback answers."""
    cache_max_entry_bytes: PositiveInt = 64 * 1024
    """A generation larger than this (encoded) is not cached."""
    excerpt_max_chars: PositiveInt = 1_200
    """Upper bound on the text of an excerpt answer built from context documents."""

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated bearer keys accepted by the ``/v1`` routes."""
    admin_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated keys that may also force circuits open or closed."""
    max_prompt_chars: PositiveInt = 32_000
    max_context_docs: PositiveInt = 50
    job_ttl_s: PositiveInt = 7 * 86_400
    """How long a job record stays readable after its last update."""
    result_ttl_s: PositiveInt = 7 * 86_400
    """How long files, batches and their output stay readable after their last update."""
    max_batch_requests: PositiveInt = 50_000
    """Most request lines a batch input file may hold."""
    batch_ready_depth: PositiveInt = 64
    """Batch items the scheduler keeps ready on the batch queue; the rest of every batch
    waits with it, released in a fair order (an equal share per key, then per batch)."""
    key_max_open: PositiveInt | None = None
    """A key's most open work: its jobs not final plus its batch items not done (429
    over it); unset: no limit."""
    key_rate_per_min: PositiveInt | None = None
    """A key's most submissions a minute (jobs, generations, batches), shared by every
    API process through Redis (429 over it); unset: no limit."""
    key_weights: dict[str, PositiveFloat] = Field(default_factory=dict)
    """A key's share of the batch capacity against the others' (1 unless named), by the
    key's owner id (``python -m api.auth`` prints it; never the key itself)."""
    max_upload_bytes: PositiveInt = 100 * 1024 * 1024
    """Largest file ``POST /v1/files`` accepts (413 above it)."""
    max_body_bytes: PositiveInt = 1024 * 1024
    """Largest request body of every other route (413 above it)."""
    body_timeout_s: PositiveFloat = 10.0
    """A request body still arriving this long after the request began is cut off (408)."""
    max_context_chars: PositiveInt = 200_000
    """Most characters a job's context documents may hold together."""

    task_soft_time_limit_s: PositiveInt = 60
    task_time_limit_s: PositiveInt = 90
    visibility_timeout_s: PositiveInt = 300
    """A message unacked this long is redelivered: must exceed the hard time limit."""
    unacked_restore_interval_s: PositiveFloat = 10.0
    """How often a worker sweeps unacked messages of dead workers back to the queue."""
    sweep_every_s: PositiveFloat = 30.0
    """How often one worker of the cluster looks for jobs whose message was lost."""
    sweep_grace_s: PositiveFloat = 60.0
    """A job unchanged this long, its message nowhere, is a suspect; found so in two
    sweeps in a row, its message is sent again (``worker.reconciler``)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] | None = None
    """``json`` (one object per line) or ``text`` (``key=value``); unset: json in production."""
    worker_pool: Literal["threads", "prefork", "gevent", "solo"] = "threads"
    """I/O-bound generation: threads measured ~4x prefork -c 2 at 50 ms (docs/benchmarks.md)."""
    worker_concurrency: PositiveInt = 128
    """Jobs (so upstream calls) one worker process holds at once; measured in
    docs/benchmarks.md ("Filling the provider")."""
    task_events: bool = True
    """Workers send Celery's task events from their start, so Flower shows every task in
    the state it is in; they cost ~1 ms of worker CPU a job (docs/benchmarks.md). Off:
    none until Flower asks (its ``--enable-events``), and the tasks run before that do
    not show."""

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        # The messages never quote the URL: it may hold a password.
        parts = value.split(";")
        schemes = {urlsplit(part.strip()).scheme for part in parts}
        if not schemes <= set(REDIS_SCHEMES):
            raise ValueError("GENQ_REDIS_URL must start with redis://, rediss:// or sentinel://")
        if len(parts) > 1 and schemes != {"sentinel"}:
            raise ValueError("only sentinel:// URLs may be listed with ';'")
        for part in parts:
            try:
                port = urlsplit(part.strip()).port
            except ValueError:
                raise ValueError("GENQ_REDIS_URL has a port that is not a number") from None
            if not urlsplit(part.strip()).hostname and port is None:
                raise ValueError("GENQ_REDIS_URL names no host")
        return value

    @property
    def longest_call_s(self) -> float:
        """The longest one upstream call can take: its deadline (connect + read timeout)
        plus one stalled read. A call slot's lease lasts this long (plus a second)."""
        return self.upstream_connect_timeout_s + 2 * self.upstream_timeout_s

    @property
    def longest_attempt_s(self) -> float:
        """The longest one run of a job can take: the wait for a call slot, the upstream
        call, then the record write."""
        short = self.targets_per_job * self.interactive_slot_wait_s  # one short wait a target
        wait = max(self.batch_slot_wait_s, short)
        return wait + self.longest_call_s + self.redis_socket_timeout_s

    @property
    def served_models(self) -> frozenset[str] | None:
        """The models jobs may name; None: any (development with no list)."""
        if self.allowed_models:
            return frozenset([*self.allowed_models, self.upstream_model])
        return None if self.env == "development" else frozenset([self.upstream_model])

    @property
    def uses_sentinel(self) -> bool:
        """Whether Redis is reached through Redis Sentinel."""
        return self.redis_url.startswith("sentinel://")

    @field_validator("api_keys", "admin_api_keys", "allowed_models", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return _split_keys(value)

    @model_validator(mode="after")
    def _check_coherent(self) -> Settings:
        if self.uses_sentinel and not self.redis_sentinel_master:
            raise ValueError("sentinel:// needs GENQ_REDIS_SENTINEL_MASTER (the master's name)")
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("GENQ_TASK_SOFT_TIME_LIMIT_S must be below GENQ_TASK_TIME_LIMIT_S")
        if self.upstream_timeout_s >= self.task_soft_time_limit_s:
            raise ValueError("GENQ_UPSTREAM_TIMEOUT_S must be below GENQ_TASK_SOFT_TIME_LIMIT_S")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            # A shorter visibility timeout redelivers a job that is still running.
            raise ValueError("GENQ_VISIBILITY_TIMEOUT_S must exceed GENQ_TASK_TIME_LIMIT_S")
        if self.visibility_timeout_s <= self.longest_attempt_s:
            raise ValueError(
                "GENQ_VISIBILITY_TIMEOUT_S must exceed the longest attempt: "
                "GENQ_BATCH_SLOT_WAIT_S + connect + 2 x GENQ_UPSTREAM_TIMEOUT_S + "
                "GENQ_REDIS_SOCKET_TIMEOUT_S "
                f"({self.longest_attempt_s:g} s)"
            )
        if not self.upstream_min_in_flight <= self.upstream_initial_in_flight:
            raise ValueError(
                "GENQ_UPSTREAM_INITIAL_IN_FLIGHT must be >= GENQ_UPSTREAM_MIN_IN_FLIGHT"
            )
        if not self.upstream_min_in_flight <= self.upstream_max_in_flight:
            raise ValueError("GENQ_UPSTREAM_MAX_IN_FLIGHT must be >= its MIN_IN_FLIGHT")
        if self.retry_base_s > self.retry_cap_s:
            raise ValueError("GENQ_RETRY_BASE_S must not exceed GENQ_RETRY_CAP_S")
        if self.breaker_max_reset_timeout_s < self.breaker_reset_timeout_s:
            raise ValueError(
                "GENQ_BREAKER_MAX_RESET_TIMEOUT_S must be at least GENQ_BREAKER_RESET_TIMEOUT_S"
            )
        if (self.breaker_window_s is None) != (self.breaker_failure_rate is None):
            raise ValueError("set GENQ_BREAKER_WINDOW_S and GENQ_BREAKER_FAILURE_RATE together")
        if self.sweep_grace_s + 2 * self.sweep_every_s > self.visibility_timeout_s:
            # A lost message is sent again within these; a held one is back within the
            # visibility timeout: the lost must not wait longer than the held.
            raise ValueError(
                "GENQ_SWEEP_GRACE_S + 2 x GENQ_SWEEP_EVERY_S must not exceed "
                "GENQ_VISIBILITY_TIMEOUT_S"
            )
        if self.retry_cap_s >= self.visibility_timeout_s:
            # A retry waiting on its countdown is an unacked message too.
            raise ValueError("GENQ_RETRY_CAP_S must be below GENQ_VISIBILITY_TIMEOUT_S")
        self._check_failover()
        if self.env == "production":
            keys = [k.get_secret_value() for k in self.api_keys + self.admin_api_keys]
            if not self.api_keys:
                raise ValueError("GENQ_API_KEYS must be set in production")
            if any(k.lower() in _PLACEHOLDER_KEYS or len(k) < 16 for k in keys):
                raise ValueError("GENQ_API_KEYS holds a placeholder or short key (< 16 chars)")
        return self

    def _check_failover(self) -> None:
        """Each failover target's token read from the variable it names, which must be
        set (the value is never in a message); no target twice, nor the primary again."""
        tokens: list[SecretStr | None] = []
        seen = {(self.upstream_protocol, str(self.upstream_url), self.upstream_model)}
        for n, target in enumerate(self.upstream_failover):
            where = f"GENQ_UPSTREAM_FAILOVER[{n}]"
            if (target.protocol, str(target.url), target.model) in seen:
                raise ValueError(f"{where} repeats the primary or an earlier target")
            seen.add((target.protocol, str(target.url), target.model))
            token = os.environ.get(target.token_env) if target.token_env else None
            if target.token_env and not token:
                raise ValueError(f"{where}.token_env: the variable {target.token_env} is not set")
            tokens.append(SecretStr(token) if token else None)
        self._failover_tokens = tokens

    def failover_token(self, index: int) -> SecretStr | None:
        """The token of ``upstream_failover[index]``, read from its variable at start-up."""
        return self._failover_tokens[index]

    @property
    def target_circuits(self) -> list[str]:
        """The circuit names of the primary (for its default model) and of every failover
        target, in the order jobs try them."""
        primary = (self.upstream_protocol, str(self.upstream_url), self.upstream_model)
        targets = [primary, *((t.protocol, str(t.url), t.model) for t in self.upstream_failover)]
        return [circuit_name(p, url.rstrip("/"), m) for p, url, m in targets]

    @property
    def targets_per_job(self) -> int:
        """The most targets one job may try: the primary and every failover target."""
        return 1 + len(self.upstream_failover)


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
