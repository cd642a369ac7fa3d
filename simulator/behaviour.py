"""What the upstream simulator does with a generation call; no I/O, no model.

The simulator is a development and test tool. Given a call already read by
``simulator.protocols``, it decides the reply under the run-time configuration: a 401 for
the wrong token, the next scripted step, the mode's fault (outage, down, hang, rate_limit,
loading, redirect), a random 500 or a random fault of ``fault_rates``, a context-length
refusal, or the normal answer; error bodies are in the shape of the protocol called.
It also models provider capacity: at most ``capacity`` calls served at once, the others
turned away with 429 (:func:`over_capacity`) or queued (``overflow``), each call slower by
``load_latency_ms`` for every other call being served. ``simulator.server`` carries it out
and keeps the count of calls in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from urllib.parse import parse_qs, urlsplit

from simulator.answers import context_error, error_body, render
from simulator.protocols import BadRequest, Request, Route

__all__ = [
    "REDIRECT_MARK",
    "Call",
    "ConfigError",
    "Mode",
    "Overflow",
    "Reply",
    "SimulatorConfig",
    "decide",
    "over_capacity",
]

REDIRECT_MARK = "_sim_redirected"
"""Query parameter that mode ``redirect`` adds to its Location: that call is not redirected."""
REDIRECT_STATUSES = (307, 308)  # the redirects that keep the method and body


class ConfigError(ValueError):
    """Raised when a configuration field is unknown or its value has the wrong type or range."""


@dataclass(frozen=True)
class Call:
    """One generation call: its route, the model it names, where it went, what it asks."""

    route: Route
    model: str
    target: str  # the path and query it was sent to; redirects point back to it
    request: Request | BadRequest  # BadRequest when the body cannot be read

    @property
    def redirected(self) -> bool:
        """Whether mode ``redirect`` already sent this call here (its marker is in the query)."""
        return REDIRECT_MARK in parse_qs(urlsplit(self.target).query)


class Mode(StrEnum):
    """How generation calls that no script step claims are answered."""

    OK = "ok"  # answer normally (error_rate still applies)
    OUTAGE = "outage"  # 503 without estimated_time
    DOWN = "down"  # close the connection without answering
    HANG = "hang"  # wait hang_s, then answer normally: trips client read timeouts
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After: retry_after_s
    LOADING = "loading"  # 503 with estimated_time, like a cold Hugging Face model
    REDIRECT = "redirect"  # redirect_status to the same path once, then answer as mode ok


class Overflow(StrEnum):
    """What a generation call gets when ``capacity`` calls are already being served."""

    REJECT = "reject"  # 429 at once with Retry-After: retry_after_s, as hosted APIs answer
    QUEUE = "queue"  # wait for a free place, as a self-hosted TGI or vLLM server queues


@dataclass(frozen=True)
class Reply:
    """The answer to one generation call: status, JSON body, headers and delay, or a drop.

    A ``body`` of None is sent as an empty body (redirects).
    """

    status: int
    body: object = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    drop: bool = False  # close the connection instead of answering
    label: str | None = None  # the stats outcome when the status does not say it

    @property
    def outcome(self) -> str:
        """The key this reply is counted under in ``stats()["by_outcome"]``."""
        if self.label or self.status == 200:
            return self.label or "ok"
        return f"{'redirect' if 300 <= self.status < 400 else 'error'}_{self.status}"


@dataclass(frozen=True)
class Step:
    """One scripted answer, consumed by one generation call before the mode applies."""

    status: int  # 200 without a body answers normally; 3xx redirects to the same path
    retry_after: float | None = None  # sent as Retry-After; no header when None
    estimated_time: float | None = None  # turns the default body into a "loading" one
    body: object = None  # sent verbatim; None means the default body for the status

    def reply(self, call: Call, normal: Reply, delay_s: float) -> Reply:
        """This step's answer; ``normal`` is the one the call would get without faults."""
        if self.status == 200 and self.body is None:
            return replace(normal, delay_s=delay_s)
        if 300 <= self.status < 400:  # to the same path: the next call takes the next step
            return _redirect(self.status, call.target, delay_s, self.body)
        headers = _retry_after(self.retry_after) if self.retry_after is not None else ()
        body = self.body
        if body is None and self.estimated_time is not None:
            body = _loading(call.model, self.estimated_time)
        elif body is None:
            body = error_body(call.route.family, self.status)
        return Reply(self.status, body, headers, delay_s)


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything switchable at run time; the defaults answer every call at once, correctly."""

    latency_ms: float = 0.0  # added before every generation answer, faults included
    error_rate: float = 0.0  # fraction (0..1) of mode-"ok" calls answered 500
    # Fractions of mode-"ok" calls answered as a fault mode would, e.g. {"hang": 0.05,
    # "down": 0.05}: a mix of faults, drawn from the seeded sequence (a chaos run's upstream).
    fault_rates: tuple[tuple[Mode, float], ...] = ()
    seed: int = 0  # seed of the error_rate RNG; setting it restarts the sequence
    mode: Mode = Mode.OK
    hang_s: float = 30.0  # how long mode "hang" waits before answering
    retry_after_s: float = 1.0  # Retry-After of mode "rate_limit"
    estimated_time_s: float = 20.0  # estimated_time of mode "loading"
    script: tuple[Step, ...] = ()  # steps still to be consumed, the next one first
    require_token: str | None = None  # when set, any other bearer token (or none) gets 401
    redirect_status: int = 307  # the status of mode "redirect": 307 or 308
    max_context_tokens: int | None = None  # prompt + token limit above it: refused (400/422)
    capacity: int | None = None  # most generation calls served at once; None: unlimited
    overflow: Overflow = Overflow.REJECT  # what a call beyond capacity gets
    # Added to latency_ms for each other call being served when a call starts: latency
    # grows with load, as on TGI or vLLM under continuous batching.
    load_latency_ms: float = 0.0
    token_ms: float = 0.0  # between a streamed answer's events (after the latency)
    # A streamed answer's connection is closed after this many events, with no end: an
    # upstream that fails mid-answer. None: every event is sent.
    stream_cut_after: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The JSON form served by ``/_sim/config`` and ``/_sim/stats``."""
        steps = [{k: v for k, v in asdict(s).items() if v is not None} for s in self.script]
        rates = {mode.value: rate for mode, rate in self.fault_rates}
        return {
            **asdict(self),
            "mode": self.mode.value,
            "overflow": self.overflow.value,
            "script": steps,
            "fault_rates": rates,
        }

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
        redirect = changes.get("redirect_status", self.redirect_status)
        if not isinstance(redirect, int) or redirect not in REDIRECT_STATUSES:
            raise ConfigError(f"redirect_status must be 307 or 308, got {redirect!r}")
        overflow = changes.get("overflow", self.overflow)
        if not isinstance(overflow, str) or overflow not in list(Overflow):
            raise ConfigError(f"overflow must be one of {', '.join(Overflow)}, got {overflow!r}")
        return SimulatorConfig(
            latency_ms=_number(changes, "latency_ms", self.latency_ms),
            error_rate=_number(changes, "error_rate", self.error_rate, high=1.0),
            seed=seed,
            mode=Mode(mode),
            hang_s=_number(changes, "hang_s", self.hang_s),
            retry_after_s=_number(changes, "retry_after_s", self.retry_after_s),
            estimated_time_s=_number(changes, "estimated_time_s", self.estimated_time_s),
            script=_script(changes["script"]) if "script" in changes else self.script,
            fault_rates=(
                _fault_rates(changes["fault_rates"])
                if "fault_rates" in changes
                else self.fault_rates
            ),
            require_token=token,
            redirect_status=redirect,
            max_context_tokens=_limit(changes, "max_context_tokens", self.max_context_tokens),
            capacity=_limit(changes, "capacity", self.capacity),
            overflow=Overflow(overflow),
            load_latency_ms=_number(changes, "load_latency_ms", self.load_latency_ms),
            token_ms=_number(changes, "token_ms", self.token_ms),
            stream_cut_after=_limit(changes, "stream_cut_after", self.stream_cut_after),
        )


_FIELD_NAMES = frozenset(f.name for f in fields(SimulatorConfig))


def decide(
    config: SimulatorConfig,
    draw: Callable[[], float],
    token: str | None,
    call: Call,
    load: int = 0,
) -> tuple[Reply, SimulatorConfig]:
    """The answer to one call, and the configuration after it (a script step is consumed).

    ``draw`` returns the next number in [0, 1) of the seeded sequence that ``error_rate``
    is compared against; ``load`` is how many other calls are being served, each adding
    ``load_latency_ms`` to the delay.
    """
    delay = (config.latency_ms + config.load_latency_ms * load) / 1000.0
    family = call.route.family
    if config.require_token is not None and token != config.require_token:
        return Reply(401, error_body(family, 401), delay_s=delay), config
    normal = _normal(call, config)
    if config.script:
        after = replace(config, script=config.script[1:])
        return config.script[0].reply(call, normal, delay), after
    if (fault := _fault(config.mode, call, config, normal, delay)) is not None:
        return fault, config
    if config.error_rate > 0 and draw() < config.error_rate:
        return Reply(500, error_body(family, 500), delay_s=delay), config
    if config.fault_rates:
        point = draw()
        for mode, rate in config.fault_rates:
            if point < rate:
                return _fault(mode, call, config, normal, delay) or replace(
                    normal, delay_s=delay
                ), config
            point -= rate
    return replace(normal, delay_s=delay), config


def over_capacity(config: SimulatorConfig, call: Call) -> Reply:
    """The answer, at once, to a call beyond ``capacity`` in overflow mode ``reject``."""
    headers = _retry_after(config.retry_after_s)
    return Reply(429, error_body(call.route.family, 429), headers, label="over_capacity")


def _fault(
    mode: Mode, call: Call, config: SimulatorConfig, normal: Reply, delay: float
) -> Reply | None:
    """Mode ``mode``'s answer to ``call``; None for mode ``ok`` (and a redirected call)."""
    family = call.route.family
    match mode:
        case Mode.DOWN:
            return Reply(0, delay_s=delay, drop=True, label="down")
        case Mode.HANG:
            return replace(normal, delay_s=delay + config.hang_s, label="hang")
        case Mode.OUTAGE:
            return Reply(503, error_body(family, 503), delay_s=delay)
        case Mode.RATE_LIMIT:
            headers = _retry_after(config.retry_after_s)
            return Reply(429, error_body(family, 429), headers, delay)
        case Mode.LOADING:
            return Reply(503, _loading(call.model, config.estimated_time_s), delay_s=delay)
        case Mode.REDIRECT if not call.redirected:
            separator = "&" if "?" in call.target else "?"
            location = f"{call.target}{separator}{REDIRECT_MARK}=1"
            return _redirect(config.redirect_status, location, delay)
    return None


def _normal(call: Call, config: SimulatorConfig) -> Reply:
    """The fault-free answer: the body's refusal, a context-length refusal, or the answer."""
    route, request = call.route, call.request
    if isinstance(request, BadRequest):
        body = error_body(route.family, request.status, str(request), request.param)
        return Reply(request.status, body)
    limit = config.max_context_tokens
    if limit is not None and (refusal := context_error(route, request, limit)) is not None:
        return Reply(*refusal)
    return Reply(200, render(route, request))


def _redirect(status: int, location: str, delay: float, body: object = None) -> Reply:
    return Reply(status, body, (("Location", location),), delay, label=f"redirect_{status}")


def _loading(model: str, estimated_time: float) -> dict[str, object]:
    # The Hugging Face API's answer for a cold model, whatever the route.
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


def _limit(changes: Mapping[str, object], name: str, default: int | None) -> int | None:
    value = changes.get(name, default)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")


def _fault_rates(value: object) -> tuple[tuple[Mode, float], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"fault_rates must be an object like {{'hang': 0.05}}, got {value!r}")
    faults = set(Mode) - {Mode.OK}
    if unknown := sorted(str(name) for name in value if name not in faults):
        raise ConfigError(f"fault_rates: unknown mode(s) {', '.join(unknown)}")
    try:
        rates = tuple((Mode(name), _number(value, name, 0.0, high=1.0)) for name in sorted(value))
    except ConfigError as exc:
        raise ConfigError(f"fault_rates: {exc}") from None
    if sum(rate for _, rate in rates) > 1.0:
        raise ConfigError("fault_rates must add up to at most 1")
    return rates


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
