"""genq's upstream client (worker.upstream) against the upstream simulator over HTTP, for
every protocol, route and job kind: the answer, usage and finish_reason; context sent;
redirects followed; a context-length refusal failing at once. No Redis needed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.contract import ChatMessage, ContextDoc, GenerateRequest, GenerationParams
from core.errors import UpstreamRejected
from core.settings import Protocol
from simulator.server import SimulatorServer, simulated_text
from worker.prompt import model_input, render_chat
from worker.upstream import UpstreamTarget, generate

CHAT = [
    ChatMessage(role="system", content="brief"),
    ChatMessage(role="user", content="one two three four"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer() as sim:
        yield sim


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[SimulatorServer]:
    server.reset()
    yield server
    server.reset()


def target(sim: SimulatorServer, protocol: Protocol, route: Any = None) -> UpstreamTarget:
    return UpstreamTarget(protocol, sim.url, "simulator/echo-1", None, 1.0, 5.0, route)


def sent_text(request: GenerateRequest, chat_route: bool) -> str:
    """The text the simulator echoes: the prompt, the last user message on chat routes,
    or the rendered messages on text-generation routes."""
    prompt, messages = model_input(request)
    if prompt is not None:
        return prompt
    return (messages or [])[-1].content if chat_route else render_chat(messages or [])


@pytest.mark.parametrize(
    ("protocol", "route", "chat", "chat_route"),
    [
        ("openai", None, False, True),
        ("openai", "completions", False, False),
        ("openai", None, True, True),
        ("tgi", None, False, False),
        ("tgi", "chat", False, True),
        ("tgi", None, True, True),
        ("hf", None, False, False),
        ("hf", None, True, False),
    ],
)
def test_every_protocol_route_and_job_kind_answers_with_usage_and_finish_reason(
    sim: SimulatorServer, protocol: Protocol, route: Any, chat: bool, chat_route: bool
) -> None:
    """Each combination gets the simulator's text, usage, and finish_reason length when
    max tokens cut it."""
    params = GenerationParams(max_new_tokens=2)
    request = (
        GenerateRequest(messages=CHAT, params=params)
        if chat
        else GenerateRequest(prompt="one two three four", params=params)
    )
    result = generate(target(sim, protocol, route), request)
    assert result.text == simulated_text(sent_text(request, chat_route), 2)
    assert result.finish_reason == "length"
    assert result.usage is not None and result.usage["completion_tokens"] >= 2


def test_context_documents_reach_the_simulator(sim: SimulatorServer) -> None:
    """With context_mode prompt the documents are part of what the model is asked."""
    docs = [ContextDoc(id="doc-9", text="zebra")]
    request = GenerateRequest(prompt="q", context=docs, params=GenerationParams(max_new_tokens=50))
    answer = generate(target(sim, "hf"), request).text
    assert "zebra" in answer and "[doc-9]" in answer
    kept = request.model_copy(update={"context_mode": "fallback_only"})
    assert "zebra" not in generate(target(sim, "hf"), kept).text


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("protocol", ["hf", "tgi", "openai"])
def test_redirects_are_followed(sim: SimulatorServer, protocol: Protocol, status: int) -> None:
    """A generation route that redirects once is followed to its answer."""
    sim.configure(mode="redirect", redirect_status=status)
    result = generate(target(sim, protocol), GenerateRequest(prompt="a b"))
    assert result.text.startswith("simulated:")
    assert sim.stats()["by_outcome"] == {f"redirect_{status}": 1, "ok": 1}


@pytest.mark.parametrize(
    ("protocol", "route", "quoted"),
    [
        ("openai", None, "context_length_exceeded"),
        ("openai", "completions", "context_length_exceeded"),
        ("tgi", None, "`inputs` tokens + `max_new_tokens`"),
    ],
)
def test_a_context_length_refusal_is_a_final_rejection_with_the_upstreams_message(
    sim: SimulatorServer, protocol: Protocol, route: Any, quoted: str
) -> None:
    """Over the model's context, the upstream's 4xx is a rejection (not retried, not
    counted by the breaker) that quotes the upstream."""
    sim.configure(max_context_tokens=8)
    long = GenerateRequest(prompt=" ".join(["word"] * 40))
    with pytest.raises(UpstreamRejected) as caught:
        generate(target(sim, protocol, route), long)
    assert not caught.value.transient
    assert quoted in caught.value.message
