"""genq's OpenAI-compatible single-request routes, judged by unmodified clients (the
``openai`` SDK: sync, async, ``with_raw_response``; LangChain's ``ChatOpenAI``) against a
real API and worker, for each upstream protocol the worker may speak to the simulator."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from pydantic import SecretStr

from devstack.redis import RedisProcess, ensure_redis_server
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    ADMIN_KEY,
    API_KEY,
    OTHER_KEY,
    auth,
    genq_env,
    serve_api,
    start_worker,
    wait_final,
)
from worker.breaker.circuit import DEFAULT_OPEN_VIEW_TTL_S as OPEN_VIEW_TTL_S

pytestmark = pytest.mark.integration

MODEL = "simulator/echo-1"
DOC = {"id": "d1", "text": "genq answers from its documents when the model cannot."}


class Genq:
    """An API and a worker on a redis-server of their own, the upstream one protocol."""

    def __init__(self, url: str, sim: SimulatorServer, protocol: str) -> None:
        self.url, self.sim, self.protocol = url, sim, protocol
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)

    def circuit(self) -> str:
        listed = requests.get(f"{self.url}/v1/circuits", headers=auth(), timeout=5).json()
        return str(listed[0]["name"])

    def steer(self, action: str) -> None:
        name = self.circuit()
        response = requests.post(
            f"{self.url}/v1/circuits/{name}/{action}", headers=auth(ADMIN_KEY), timeout=5
        )
        response.raise_for_status()
        time.sleep(OPEN_VIEW_TTL_S + 0.2)  # every worker's view of the circuit is new


@pytest.fixture(scope="module", params=["hf", "tgi", "openai"])
def genq(request: pytest.FixtureRequest) -> Iterator[Genq]:
    protocol = str(request.param)
    own = RedisProcess(ensure_redis_server(say=lambda _: None))
    own.start()
    try:
        with SimulatorServer() as sim:
            url = f"{sim.url}/v1" if protocol == "openai" else sim.url
            env = genq_env(own.url, url, GENQ_UPSTREAM_PROTOCOL=protocol)
            worker = start_worker(env, f"openai-{protocol}", f"worker-openai-{protocol}")
            try:
                with serve_api(env, f"api-openai-{protocol}") as api:
                    yield Genq(api, sim, protocol)
            finally:
                worker.terminate()
                worker.wait(timeout=20)
    finally:
        own.stop()


def test_chat_completion_through_the_sdk(genq: Genq) -> None:
    """``chat.completions.create`` answers OpenAI's object, with genq's provenance."""
    completion = genq.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=16,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.model == MODEL
    extra: dict[str, Any] = completion.model_extra or {}
    assert extra["genq"]["source"] == "upstream" and extra["genq"]["degraded"] is False
    job = requests.get(f"{genq.url}/v1/jobs/{extra['genq']['job_id']}", headers=auth(), timeout=5)
    assert job.json()["result"]["text"] == completion.choices[0].message.content


def test_text_completion_through_the_sdk_with_raw_response(genq: Genq) -> None:
    """``completions.with_raw_response.create``: a 200 whose parsed body is a text
    completion, usage included when the upstream reports it."""
    raw = genq.client.completions.with_raw_response.create(
        model=MODEL, prompt="Say something", max_tokens=8
    )
    assert raw.status_code == 200
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_async_client_and_genq_fields_as_extra_body(genq: Genq) -> None:
    """The async client works the same; genq's own fields go as extra body fields."""

    async def ask() -> Any:
        client = openai.AsyncOpenAI(base_url=f"{genq.url}/v1", api_key=API_KEY, max_retries=0)
        async with client:
            return await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What answers?"}],
                extra_body={"context": [DOC], "cache": "off", "failover": "none"},
            )

    completion = asyncio.run(ask())
    assert completion.choices[0].message.content


def test_a_degraded_answer_is_a_200_and_no_answer_a_503(genq: Genq) -> None:
    """Circuit forced open: a request with context gets an excerpt (200, degraded); one
    without gets a 503 the SDK raises, with Retry-After."""
    genq.steer("open")
    try:
        completion = genq.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Who answers?"}],
            extra_body={"context": [DOC]},
        )
        genq_fields = (completion.model_extra or {})["genq"]
        assert (genq_fields["source"], genq_fields["degraded"]) == ("excerpt", True)
        assert genq_fields["fallback_reason"] == "circuit_forced_open"
        with pytest.raises(openai.InternalServerError) as caught:
            genq.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "No context"}]
            )
        assert caught.value.status_code == 503
        assert caught.value.response.headers["Retry-After"]
    finally:
        genq.steer("reset")


def test_unsupported_parameters_are_a_400_naming_them(genq: Genq) -> None:
    """``n`` > 1, ``tools`` and ``logprobs`` are refused with a 400 naming the parameter."""
    cases: list[dict[str, Any]] = [
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"logprobs": True},
    ]
    for extra in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            genq.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], extra_body=extra
            )
        (name,) = extra
        assert caught.value.status_code == 400
        assert isinstance(caught.value.body, dict) and caught.value.body["param"] == name


def test_a_stream_relays_the_answer_piece_by_piece(genq: Genq) -> None:
    """``stream=True``: the chunks join to the job's answer, OpenAI and TGI upstreams in
    one piece a word (the simulator's), an hf upstream in one; the last content-less
    chunk says why it ended and carries genq's object; with include_usage, a usage chunk."""
    genq.sim.configure(token_ms=20)
    chunks = list(
        genq.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "one two three four"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == (1 if genq.protocol == "hf" else 5)
    last = next(c for c in reversed(chunks) if c.choices)
    assert last.choices[0].finish_reason in ("stop", "length")
    genq_fields = (last.model_extra or {})["genq"]
    job = requests.get(f"{genq.url}/v1/jobs/{genq_fields['job_id']}", headers=auth(), timeout=5)
    assert "".join(pieces) == job.json()["result"]["text"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_the_async_client_streams_text_completions(genq: Genq) -> None:
    """``AsyncOpenAI`` reads a streamed text completion to its end."""

    async def ask() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{genq.url}/v1", api_key=API_KEY, max_retries=0)
        async with client:
            stream = await client.completions.create(model=MODEL, prompt="a b c", stream=True)
            return [chunk.choices[0].text async for chunk in stream if chunk.choices]

    assert "".join(asyncio.run(ask())).startswith("simulated:")


def test_a_degraded_answer_streams_as_one_chunk(genq: Genq) -> None:
    """Circuit forced open: the excerpt comes as one chunk, the last saying degraded."""
    genq.steer("open")
    try:
        chunks = list(
            genq.client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Who answers?"}],
                extra_body={"context": [DOC]},
                stream=True,
            )
        )
    finally:
        genq.steer("reset")
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) == 1
    genq_fields = (chunks[-1].model_extra or {})["genq"]
    assert (genq_fields["source"], genq_fields["degraded"]) == ("excerpt", True)


def test_a_stream_cut_mid_answer_ends_in_an_error_and_is_not_cached(genq: Genq) -> None:
    """The upstream closes after three events: the client's stream ends with an error
    event (the SDK raises it) after the pieces that came; the cut counts against the
    circuit; the cut answer is not cached (asked again, the upstream answers, not the
    cache)."""
    if genq.protocol == "hf":
        pytest.skip("an hf upstream answers whole: nothing is streamed to cut")
    genq.sim.configure(stream_cut_after=3)
    received: list[str] = []

    def read_to_the_end() -> None:
        for chunk in genq.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "cut me off please"}],
            stream=True,
            extra_body={"cache": "prefer"},
        ):
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="mid-answer") as caught:
        read_to_the_end()
    assert received and len(received) <= 3
    # The job goes on (its retries cut off too): once it is final, nothing it did may
    # have cached an answer.
    job_id = re.search(r"\(job (\w+)\)", str(caught.value))
    assert job_id is not None
    cut = wait_final(genq.url, f"/v1/jobs/{job_id.group(1)}", timeout_s=30)
    assert cut["attempts"][0]["error_type"] == "upstream_unavailable"
    listed = requests.get(f"{genq.url}/v1/circuits", headers=auth(), timeout=5).json()
    assert listed[0]["failure_count"] >= 1 or listed[0]["state"] != "closed"  # it counted
    genq.sim.configure(stream_cut_after=None)
    again = genq.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "cut me off please"}],
        extra_body={"cache": "prefer"},
    )
    assert (again.model_extra or {})["genq"]["source"] == "upstream"


def test_models_are_listed_and_retrieved(genq: Genq) -> None:
    """``models.list()`` holds the default model; ``models.retrieve`` a model id with a
    slash; an id that cannot be a model is a 404 the SDK raises."""
    assert MODEL in [m.id for m in genq.client.models.list()]
    assert genq.client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        genq.client.models.retrieve("no..such")


def test_files_are_listed_per_key(genq: Genq) -> None:
    """``files.list()`` shows this key's uploads and not another key's."""
    mine = genq.client.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    other = openai.OpenAI(base_url=f"{genq.url}/v1", api_key=OTHER_KEY, max_retries=0)
    theirs = other.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    listed = [f.id for f in genq.client.files.list()]
    assert mine.id in listed and theirs.id not in listed
    genq.client.files.delete(mine.id)
    assert mine.id not in [f.id for f in genq.client.files.list()]


def test_unknown_paths_and_methods_answer_in_openais_shape(genq: Genq) -> None:
    """An unknown path under /v1 is a 404, and a method a path does not take a 405 with
    every method it does take in Allow, both in OpenAI's error shape, which the SDK reads."""
    response = requests.get(f"{genq.url}/v1/embeddings", headers=auth(), timeout=5)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    response = requests.delete(f"{genq.url}/v1/chat/completions", headers=auth(), timeout=5)
    assert response.status_code == 405 and "error" in response.json()
    assert response.headers["Allow"] == "POST"
    response = requests.delete(f"{genq.url}/v1/batches", headers=auth(), timeout=5)
    assert response.headers["Allow"] == "GET, POST"  # two routes, one path
    with pytest.raises(openai.NotFoundError):
        genq.client.embeddings.create(model=MODEL, input="x")


def test_langchain_chat_openai_invokes_genq(genq: Genq) -> None:
    """LangChain's ``ChatOpenAI``, unmodified, pointed at genq: ``invoke`` answers with
    the text and the model genq's answer names; ``stream`` gives the same text."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        base_url=f"{genq.url}/v1", api_key=SecretStr(API_KEY), model=MODEL, max_retries=0
    )
    answer = chat.invoke("Write a haiku about queues")
    assert isinstance(answer.content, str) and answer.content
    assert answer.response_metadata["model_name"] == MODEL
    streamed = "".join(str(piece.content) for piece in chat.stream("Write a haiku about queues"))
    assert streamed == answer.content
