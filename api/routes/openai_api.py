"""OpenAI's single-request routes over genq's queue: ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /v1/models`` and ``GET /v1/models/{id}``.

Each request is an interactive job like ``POST /v1/jobs``'s (the same breaker, call
limit, cache, fallback, failover, record and ``Idempotency-Key``); the response waits
for the job's final write on the completion signal (``api.completions``), then answers
OpenAI's object plus a ``genq`` object: ``{job_id, source, degraded, fallback_reason,
circuit, retry_after, citations, target, failover}``. A degraded answer is a 200 with
``genq.degraded: true``; no answer is a 503 with ``Retry-After`` in OpenAI's error shape.

Bodies are read as batch lines are (``api.batch_input``): OpenAI's parameters and genq's
own (``context``, ``context_mode``, ``cache``, ``fallback``, ``failover``) as extra body
fields; any other parameter (``n`` > 1, ``tools``, ``logprobs``, …) is a 400 naming it.
``stream: true`` answers server-sent events in OpenAI's chunk format (``api.streams``),
each piece as soon as the upstream sends it, ending ``data: [DONE]``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool, TypeAdapter, ValidationError

from api import streams
from api.auth import Principal
from api.batch_input import BatchPolicy, ChatFields, CompletionFields, to_request
from api.completions import Completions
from api.deps import CeleryDep, CompletionsDep, PrincipalDep, SettingsDep, async_jobs
from api.idempotency import IdempotencyKey
from api.responses import SUBMITS, V1
from api.routes.jobs import enqueue, wait_final
from api.streams import openai_events
from core.contract import BatchEndpoint, ModelId
from core.openai_batch import completion_body
from core.records import JobRecord
from core.settings import Settings

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], responses=V1)

_MODEL_ID: TypeAdapter[str] = TypeAdapter(ModelId)

ANSWER_WAIT_S = 600.0
"""How long a request waits for its job (the ``openai`` SDK's own timeout): past it, a
504 names the job, which ``GET /v1/jobs/{id}`` still answers."""

#: The seconds a client is told to wait when the failed job's error names none.
RETRY_AFTER_S = 5

_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with `stream: true`, server-sent chunks",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            # Each event: `data:` a chunk (JSON), then `data: [DONE]`.
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    "required": ["data"],
                }
            },
        },
    },
    400: {"description": "an unsupported or invalid parameter (OpenAI's error shape)"},
    502: {"description": "the upstream answered something unusable"},
    503: {"description": "no target could answer and the job has no fallback: Retry-After"},
    504: {"description": "no answer within the wait; the job goes on (its id is named)"},
}


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False
    """A last chunk holds the answer's ``usage`` (``choices`` empty)."""


class _Streamed(BaseModel):
    stream: StrictBool = False
    """Server-sent events, each piece of the answer as the upstream sends it."""
    stream_options: StreamOptions | None = None


class ChatCompletionCreate(ChatFields, _Streamed):
    """OpenAI's chat completion create parameters that genq serves."""


class CompletionCreate(CompletionFields, _Streamed):
    """OpenAI's completion create parameters that genq serves."""


@router.post("/chat/completions", responses=SUBMITS | _ANSWERS)
async def chat_completions(
    body: ChatCompletionCreate,
    principal: PrincipalDep,
    settings: SettingsDep,
    celery: CeleryDep,
    completions: CompletionsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's chat completion, answered through genq (``messages``; a ``developer``
    message is a system message)."""
    return await _answer(
        "/v1/chat/completions", body, principal, settings, celery, completions, idempotency_key
    )


@router.post("/completions", responses=SUBMITS | _ANSWERS)
async def text_completions(
    body: CompletionCreate,
    principal: PrincipalDep,
    settings: SettingsDep,
    celery: CeleryDep,
    completions: CompletionsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's (legacy) text completion of a ``prompt``, answered through genq."""
    return await _answer(
        "/v1/completions", body, principal, settings, celery, completions, idempotency_key
    )


async def _answer(
    endpoint: BatchEndpoint,
    body: ChatCompletionCreate | CompletionCreate,
    principal: Principal,
    settings: Settings,
    celery: Celery,
    completions: Completions,
    idempotency_key: str | None,
) -> Response:
    try:
        request = to_request(body, BatchPolicy())
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(part) for part in error["loc"])
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, detail=f"{param}: {error['msg']}"
        ) from None
    if body.stream and streams.full():
        detail = f"this API process relays {streams.MAX_OPEN_STREAMS} streams already"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail, {"Retry-After": "1"})
    jobs = async_jobs()
    record = await enqueue(request, principal, settings, jobs, celery, idempotency_key, body.stream)
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        model = request.model or settings.upstream_model
        events = openai_events(endpoint, record, model, usage, ANSWER_WAIT_S)
        return StreamingResponse(events, media_type="text/event-stream")
    final = await wait_final(completions, record, ANSWER_WAIT_S)
    return _response(endpoint, final)


def _response(endpoint: BatchEndpoint, record: JobRecord) -> JSONResponse:
    if record.result is not None:
        return JSONResponse(completion_body(endpoint, record.id, record.result, record.id))
    if record.error is None:
        message = (
            f"job {record.id} is not answered yet: GET /v1/jobs/{record.id} will say when it is"
        )
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail=message)
    error = record.error
    if error.type.is_client_error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=error.message)
    retry_after = str(max(1, round(error.retry_after or RETRY_AFTER_S)))
    code = (
        status.HTTP_503_SERVICE_UNAVAILABLE
        if error.type.is_unavailable
        else status.HTTP_502_BAD_GATEWAY
    )
    raise HTTPException(
        code, detail=f"{error.message} (job {record.id})", headers={"Retry-After": retry_after}
    )


@router.get("/models")
def list_models(_: PrincipalDep, settings: SettingsDep) -> dict[str, Any]:
    """The models jobs may name: the default and ``GENQ_ALLOWED_MODELS`` (a failover
    target answers with its own model, which a job does not name)."""
    return {"object": "list", "data": [_model(m) for m in _listed(settings)]}


@router.get("/models/{model_id:path}", responses={404: {"description": "not a served model"}})
def retrieve_model(
    model_id: Annotated[str, Path(min_length=1, max_length=256)],
    _: PrincipalDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """One model jobs may name (in development without ``GENQ_ALLOWED_MODELS``, any)."""
    served = settings.served_models
    listed = model_id in _listed(settings)
    if not listed and (served is not None or not _valid_model(model_id)):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"The model {model_id!r} does not exist"
        )
    return _model(model_id)


def _listed(settings: Settings) -> list[str]:
    return list(dict.fromkeys([settings.upstream_model, *settings.allowed_models]))


def _valid_model(model_id: str) -> bool:
    try:
        _MODEL_ID.validate_python(model_id)
    except ValidationError:
        return False
    return True


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "genq"}


_STARTED = int(time.time())
"""``created`` of every model: genq does not know when a model was made."""
