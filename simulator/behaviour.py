"""What the upstream simulator does with a generation call; no I/O, no model.

The simulator is a development and test tool. Here it reads a request in any of its
three protocols, then decides the reply under the run-time configuration: a 401 for the
wrong token, the next scripted step, the mode's fault (outage, down, hang, rate_limit,
loading), a random 500, or the normal answer. ``simulator.server`` carries it out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "BadRequest",
    "ConfigError",
    "Mode",
    "Reply",
    "Request",
    "SimulatorConfig",
    "decide",
    "parse_request",
]

Protocol = Literal["hf", "tgi", "openai"]
DEFAULT_MODEL = "simulator/echo-1"
"""The model named in answers when the request names none (tgi) or cannot be read."""
DEFAULT_MAX_NEW_TOKENS = 20
"""Words generated when a request sets no limit (TGI's default ``max_new_tokens``)."""

BAD_TOKEN = {"error": "Authorization header is correct, but the token seems invalid"}
OUTAGE = {"error": "Service Unavailable (simulated outage)"}
RATE_LIMITED = {"error": "Rate limit reached"}
INTERNAL_ERROR = {"error": "Internal Server Error (simulated)"}


class ConfigError(ValueError):
    """Raised when a configuration field is unknown or its value has the wrong type or range."""


class BadRequest(ValueError):
    """Raised when a generation request cannot be read: ``status`` 400 missing, 422 mistyped."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """What a generation call asks for, whatever its protocol."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...]
    model: str
    full_text: bool = False  # hf/tgi ``return_full_text``: the prompt comes first


def parse_request(protocol: Protocol, raw: bytes, model: str) -> Request:
    """The request in ``raw``, a body in ``protocol``'s shape; raises BadRequest."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(422, "request body must be a JSON object")
    if protocol == "openai":
        return _parse_chat(body)
    if "inputs" not in body:
        raise BadRequest(400, "missing field 'inputs'")
    inputs, params = body["inputs"], body.get("parameters") or {}
    if not isinstance(inputs, str) or not isinstance(params, dict):
        raise BadRequest(422, "'inputs' must be a string and 'parameters' an object")
    if not isinstance(full_text := params.get("return_full_text", False), bool):
        raise BadRequest(422, "'return_full_text' must be a boolean")
    _check_sampling(params, strict=True)
    limit = _max_tokens(params.get("max_new_tokens"))
    return Request(inputs, limit, _stop(params.get("stop")), model, full_text)


def _parse_chat(body: dict[str, Any]) -> Request:
    messages, model = body.get("messages"), body.get("model", DEFAULT_MODEL)
    if messages is None:
        raise BadRequest(400, "missing field 'messages'")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise BadRequest(422, "'messages' must be a list of objects")
    if not isinstance(model, str) or not model:
        raise BadRequest(422, "'model' must be a non-empty string")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise BadRequest(400, "'messages' has no message with role 'user'")
    if not isinstance(prompt := users[-1].get("content"), str):
        raise BadRequest(422, "the last user message's 'content' must be a string")
    _check_sampling(body, strict=False)
    return Request(prompt, _max_tokens(body.get("max_tokens")), _stop(body.get("stop")), model)


def _check_sampling(params: dict[str, Any], *, strict: bool) -> None:
    for name in ("temperature", "top_p"):
        value = params.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(422, f"'{name}' must be a number")
        # HF and TGI refuse the neutral values OpenAI accepts: 0 < temperature, 0 < top_p < 1.
        if strict and value is not None and (value <= 0 or (name == "top_p" and value >= 1)):
            raise BadRequest(422, f"'{name}' is out of range for this protocol: {value}")


def _max_tokens(value: object) -> int:
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(422, "the token limit must be a non-negative integer")
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None or isinstance(value, str):
        return () if value is None else (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise BadRequest(422, "'stop' must be a string or a list of strings")


class Mode(StrEnum):
    """How generation calls that no script step claims are answered."""

    OK = "ok"  # answer normally (error_rate still applies)
    OUTAGE = "outage"  # 503 without estimated_time
    DOWN = "down"  # close the connection without answering
    HANG = "hang"  # wait hang_s, then answer normally: trips client read timeouts
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After: retry_after_s
    LOADING = "loading"  # 503 with estimated_time, like a cold Hugging Face model


@dataclass(frozen=True)
class Reply:
    """The answer to one generation call: status, JSON body, headers and delay, or a drop."""

    status: int
    body: object = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    drop: bool = False  # close the connection instead of answering
    label: str | None = None  # the stats outcome when the status does not say it

    @property
    def outcome(self) -> str:
        """The key this reply is counted under in ``stats()["by_outcome"]``."""
        return self.label or ("ok" if self.status == 200 else f"error_{self.status}")


@dataclass(frozen=True)
class Step:
    """One scripted answer, consumed by one generation call before the mode applies."""

    status: int  # 200 without a body answers normally
    retry_after: float | None = None  # sent as Retry-After; no header when None
    estimated_time: float | None = None  # turns the default body into a "loading" one
    body: object = None  # sent verbatim; None means the default body for the status

    def reply(self, model: str, normal: Reply, delay_s: float) -> Reply:
        """This step's answer; ``normal`` is the one the call would get without faults."""
        if self.status == 200 and self.body is None:
            return replace(normal, delay_s=delay_s)
        headers = _retry_after(self.retry_after) if self.retry_after is not None else ()
        body = self.body
        if body is None and self.estimated_time is not None:
            body = _loading(model, self.estimated_time)
        elif body is None:
            known = {401: BAD_TOKEN, 429: RATE_LIMITED, 500: INTERNAL_ERROR, 503: OUTAGE}
            body = known.get(self.status, {"error": f"simulated HTTP {self.status}"})
        return Reply(self.status, body, headers, delay_s)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything switchable at run time; the defaults answer every call at once, correctly."""

    latency_ms: float = 0.0  # added before every generation answer, faults included
    error_rate: float = 0.0  # fraction (0..1) of mode-"ok" calls answered 500
    seed: int = 0  # seed of the error_rate RNG; setting it restarts the sequence
    mode: Mode = Mode.OK
    hang_s: float = 30.0  # how long mode "hang" waits before answering
    retry_after_s: float = 1.0  # Retry-After of mode "rate_limit"
    estimated_time_s: float = 20.0  # estimated_time of mode "loading"
    script: tuple[Step, ...] = ()  # steps still to be consumed, the next one first
    require_token: str | None = None  # when set, any other bearer token (or none) gets 401

    def as_dict(self) -> dict[str, object]:
        """The JSON form served by ``/_sim/config`` and ``/_sim/stats``."""
        steps = [{k: v for k, v in asdict(s).items() if v is not None} for s in self.script]
        return {**asdict(self), "mode": self.mode.value, "script": steps}

    def merged(self, changes: object) -> SimulatorConfig:
        """A copy with ``changes`` applied; raises ConfigError naming the first bad field."""
        if not isinstance(changes, Mapping):
            raise ConfigError(f"config must be an object of fields to change, got {changes!r}")
        if unknown := sorted(set(changes) - _FIELD_NAMES):
            known = ", ".join(sorted(_FIELD_NAMES))
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known: {known}")
        token = changes.get("require_token", self.require_token)
        seed = changes.get("seed", self.seed)
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigError(f"require_token must be a non-empty string or null, got {token!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        if not isinstance(mode := changes.get("mode", self.mode), str) or mode not in list(Mode):
            raise ConfigError(f"mode must be one of {', '.join(Mode)}, got {mode!r}")
        return SimulatorConfig(
            latency_ms=_number(changes, "latency_ms", self.latency_ms),
            error_rate=_number(changes, "error_rate", self.error_rate, high=1.0),
            seed=seed,
            mode=Mode(mode),
            hang_s=_number(changes, "hang_s", self.hang_s),
            retry_after_s=_number(changes, "retry_after_s", self.retry_after_s),
            estimated_time_s=_number(changes, "estimated_time_s", self.estimated_time_s),
            script=_script(changes["script"]) if "script" in changes else self.script,
            require_token=token,
        )


_FIELD_NAMES = frozenset(f.name for f in fields(SimulatorConfig))


def decide(
    config: SimulatorConfig, draw: Callable[[], float], token: str | None, model: str, normal: Reply
) -> tuple[Reply, SimulatorConfig]:
    """The answer to one call, and the configuration after it (a script step is consumed).

    ``normal`` is the fault-free answer; ``draw`` returns the next number in [0, 1) of the
    seeded sequence that ``error_rate`` is compared against.
    """
    delay = config.latency_ms / 1000.0
    if config.require_token is not None and token != config.require_token:
        return Reply(401, BAD_TOKEN, delay_s=delay), config
    if config.script:
        after = replace(config, script=config.script[1:])
        return config.script[0].reply(model, normal, delay), after
    match config.mode:
        case Mode.DOWN:
            return Reply(0, delay_s=delay, drop=True, label="down"), config
        case Mode.HANG:
            return replace(normal, delay_s=delay + config.hang_s, label="hang"), config
        case Mode.OUTAGE:
            return Reply(503, OUTAGE, delay_s=delay), config
        case Mode.RATE_LIMIT:
            return Reply(429, RATE_LIMITED, _retry_after(config.retry_after_s), delay), config
        case Mode.LOADING:
            return Reply(503, _loading(model, config.estimated_time_s), delay_s=delay), config
    if config.error_rate > 0 and draw() < config.error_rate:
        return Reply(500, INTERNAL_ERROR, delay_s=delay), config
    return replace(normal, delay_s=delay), config


def _loading(model: str, estimated_time: float) -> dict[str, object]:
    return {"error": f"Model {model} is currently loading", "estimated_time": estimated_time}


def _retry_after(seconds: float) -> tuple[tuple[str, str], ...]:
    # RFC 9110 allows whole seconds; fractions are kept so that tests can run fast.
    text = str(int(seconds)) if seconds.is_integer() else f"{seconds:.3f}".rstrip("0")
    return (("Retry-After", text),)


def _number(changes: Mapping[str, object], name: str, default: float, high: float = 1e9) -> float:
    value = changes.get(name, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= high:
        return float(value)
    raise ConfigError(f"{name} must be a number from 0 to {high:g}, got {value!r}")


def _script(value: object) -> tuple[Step, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"script must be a list of steps, got {value!r}")
    return tuple(_step(raw, f"script[{index}]") for index, raw in enumerate(value))


def _step(raw: object, where: str) -> Step:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be an object like {{'status': 429}}, got {raw!r}")
    if unknown := sorted(map(str, set(raw) - {"status", "retry_after", "estimated_time", "body"})):
        raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}")
    status = raw.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise ConfigError(f"{where}.status must be an HTTP status from 200 to 599, got {status!r}")
    optional = {k: raw.get(k) for k in ("retry_after", "estimated_time")}
    retry_after, estimated_time = (
        None if v is None else _number({f"{where}.{k}": v}, f"{where}.{k}", 0.0)
        for k, v in optional.items()
    )
    return Step(status, retry_after, estimated_time, raw.get("body"))
