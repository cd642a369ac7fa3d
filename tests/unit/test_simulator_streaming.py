"""The simulator's streamed answers, read by the official clients: OpenAI's chunks
(``openai``, with ``include_usage``), TGI's token events (``text_generation``), the
pace between them (``token_ms``) and an answer cut mid-way (``stream_cut_after``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
import requests
from text_generation import Client

from simulator.server import SimulatorServer


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


def test_openai_chat_streams_a_word_a_chunk_then_usage(sim: SimulatorServer) -> None:
    """The chunks join to the whole answer; the last content-less chunk says why it
    ended; with include_usage a last chunk holds the usage."""
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    whole = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three"}]
    )
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_tgi_streams_tokens_the_last_with_the_generated_text(sim: SimulatorServer) -> None:
    """text_generation's generate_stream reads a token an event; the last carries the
    generated text and why it ended."""
    responses = list(Client(sim.url).generate_stream("x y z", max_new_tokens=5))
    assert "".join(r.token.text for r in responses) == "simulated: z y x"
    assert responses[-1].generated_text == "simulated: z y x"
    assert responses[-1].details is not None


def test_token_ms_paces_the_chunks(sim: SimulatorServer) -> None:
    """token_ms apart: five pieces take at least four intervals."""
    sim.configure(token_ms=40)
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    started = time.monotonic()
    stream = client.completions.create(model="m", prompt="a b c d", stream=True)
    first = next(iter(stream))
    first_at = time.monotonic() - started
    list(stream)
    assert first.choices[0].text == "simulated:"
    assert first_at < 0.16 <= time.monotonic() - started


def test_a_cut_stream_ends_without_its_end(sim: SimulatorServer) -> None:
    """stream_cut_after=2: two events, then the connection closes with no [DONE]."""
    sim.configure(stream_cut_after=2)
    body = {"model": "m", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
    response = requests.post(f"{sim.url}/v1/chat/completions", json=body, timeout=5)
    events = [line for line in response.text.splitlines() if line.startswith("data:")]
    assert len(events) == 2 and "[DONE]" not in response.text
