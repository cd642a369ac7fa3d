"""worker.cache.cache_key: one key per canonical request, whatever order it was written in."""

from __future__ import annotations

from typing import Any

import pytest

from core.contract import GenerateRequest
from worker.cache import cache_key

PARAMS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"]}
DOC: dict[str, Any] = {
    "id": "d1",
    "text": "Redis keeps keys.",
    "title": "Redis",
    "url": "https://r/1",
}


def request(**changes: Any) -> GenerateRequest:
    """A request with every field set; ``changes`` override top-level fields."""
    body: dict[str, Any] = {
        "prompt": "What does Redis keep?",
        "params": dict(PARAMS),
        "context": [dict(DOC), {"id": "d2", "text": "Celery runs tasks."}],
    }
    return GenerateRequest.model_validate(body | changes)


def key(req: GenerateRequest, protocol: str = "hf", model: str = "m-1") -> str:
    return cache_key(protocol, model, req)


def test_key_is_under_the_cache_prefix() -> None:
    """A cache key lives under ``genq:cache:`` followed by a SHA-256 hex digest."""
    value = key(request())
    assert value.startswith("genq:cache:")
    digest = value.removeprefix("genq:cache:")
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")


def test_parameter_and_field_order_do_not_change_the_key() -> None:
    """Params, context fields and top-level fields given in other orders give the same key."""
    params = dict(reversed(list(PARAMS.items())))
    doc = dict(reversed(list(DOC.items())))
    reordered = GenerateRequest.model_validate(
        {
            "context": [doc, {"text": "Celery runs tasks.", "id": "d2"}],
            "params": params,
            "prompt": "What does Redis keep?",
        }
    )
    assert list(reordered.params.model_dump()) != list(params)  # the orders really differ
    assert key(reordered) == key(request())


def test_default_params_equal_explicit_defaults() -> None:
    """Omitting params gives the key of stating their default values."""
    implicit = GenerateRequest(prompt="p")
    explicit = GenerateRequest.model_validate(
        {"prompt": "p", "params": {"max_new_tokens": 256, "temperature": 0.7, "top_p": 1.0}}
    )
    assert key(implicit) == key(explicit)


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_new_tokens", 65), ("temperature", 0.6), ("top_p", 0.8), ("stop", ["\n\n"])],
)
def test_each_parameter_changes_the_key(name: str, value: Any) -> None:
    """A different value of any one generation parameter gives a different key."""
    assert key(request(params=PARAMS | {name: value})) != key(request())


def test_empty_stop_list_differs_from_a_stop_sequence() -> None:
    """No stop sequences and one stop sequence are different requests."""
    assert key(request(params=PARAMS | {"stop": []})) != key(request())


def test_model_protocol_and_prompt_change_the_key() -> None:
    """Another model, protocol or prompt gives a different key."""
    base = key(request())
    assert key(request(), model="m-2") != base
    assert key(request(), protocol="tgi") != base
    assert key(request(prompt="What does Redis keep? ")) != base


@pytest.mark.parametrize(
    ("name", "value"),
    [("id", "d9"), ("text", "Redis keeps values."), ("title", "Valkey"), ("url", "https://r/2")],
)
def test_each_context_field_changes_the_key(name: str, value: str) -> None:
    """A different id, text, title or url of a context document gives a different key."""
    changed = request(context=[DOC | {name: value}, {"id": "d2", "text": "Celery runs tasks."}])
    assert key(changed) != key(request())


def test_context_order_and_presence_change_the_key() -> None:
    """Documents in another order, a missing title, or no context give different keys."""
    base = key(request())
    swapped = request(context=[{"id": "d2", "text": "Celery runs tasks."}, dict(DOC)])
    untitled = request(context=[DOC | {"title": None}, {"id": "d2", "text": "Celery runs tasks."}])
    assert len({base, key(swapped), key(untitled), key(request(context=[]))}) == 4


def test_policies_do_not_change_the_key() -> None:
    """The ``cache`` and ``fallback`` policies are not part of the key."""
    base = key(request())
    for cache in ("fallback", "prefer", "off"):
        for fallback in ("auto", "none"):
            assert key(request(cache=cache, fallback=fallback)) == base


def test_key_does_not_depend_on_field_boundaries() -> None:
    """Text moved from one field to another (prompt vs model) never yields the same key."""
    assert key(request(prompt="ab"), model="c") != key(request(prompt="a"), model="bc")


def test_messages_and_context_mode_change_the_key() -> None:
    """The key covers what the model is sent: chat messages differ from the same prompt,
    and sending the context differs from keeping it for the fallback only."""
    docs = [{"id": "d", "text": "t"}]
    prompt = GenerateRequest(prompt="hi", context=docs)
    chat = GenerateRequest(messages=[{"role": "user", "content": "hi"}], context=docs)
    fallback_only = GenerateRequest(prompt="hi", context=docs, context_mode="fallback_only")
    assert len({key(prompt), key(chat), key(fallback_only)}) == 3


def test_the_scope_changes_the_key() -> None:
    """Two keys' owners, and the shared scope, give three different keys."""
    req = request()
    keys = {cache_key("hf", "m", req, "owner-a"), cache_key("hf", "m", req, "owner-b")}
    assert len(keys | {cache_key("hf", "m", req)}) == 3
