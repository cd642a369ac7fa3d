"""The demo's sample: 30 common prompts (answered in the warm-up, so cached), 30
questions that carry documents (so an excerpt can answer them), and 10 new prompts for
after the outage. Every prompt of the main batch has a cached twin or documents."""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLE_PROMPTS", "after_lines", "doc_questions", "main_lines", "warmup_lines"]

MAX_TOKENS = 24

TOPICS = [
    "circuit breakers",
    "message queues",
    "exponential backoff",
    "idempotency keys",
    "rate limits",
    "retry budgets",
    "dead-letter queues",
    "cache expiry",
    "health checks",
    "load shedding",
]
FORMS = ["Explain {} in one sentence", "Give one pitfall of {}", "Why do services use {}"]
DOCS = {
    "breaker": "The shared circuit breaker opens after five consecutive upstream failures. "
    "While it is open, workers do not call the upstream; they answer from the result cache "
    "or from an excerpt of the job's documents. After the reset timeout one probe request "
    "is let through; when the probe succeeds the circuit closes again.",
    "cache": "Every successful upstream answer is stored in Redis under a digest of the "
    "canonical request: the model, the prompt and every parameter. A cached answer is "
    "served when the upstream cannot be used, unless the job prefers the cache. Entries "
    "expire after a day.",
    "batches": "A batch input file holds one JSON request per line. The API checks every "
    "line before anything runs; one bad line fails the whole batch with its line number. "
    "Items run on the batch queue, and the output file can be read while the batch runs.",
    "retries": "Transient upstream errors such as timeouts, 5xx answers and 429 rate "
    "limits are retried with exponential backoff and full jitter, honouring Retry-After. "
    "Rejections such as 400 fail at once. Retries stop when the circuit opens.",
    "queues": "genq has two queues on Redis: interactive and batch. Workers poll the "
    "interactive queue first, so a single job never waits behind a large batch. Tasks are "
    "acknowledged late, so a job whose worker dies is delivered again.",
    "excerpts": "When neither the upstream nor the cache can answer, the worker quotes the "
    "passages of the job's own documents that best match the prompt, ranked with BM25, "
    "and cites them. An excerpt is marked degraded, with the reason and the circuit.",
}
#: What the five questions on each document ask about (split at "|").
SUBJECTS = {
    "breaker": "after five failures|while it is open|after the reset timeout|"
    "to the probe request|when the probe succeeds",
    "cache": "to a successful answer|to the digest|when the upstream is down|"
    "when a job prefers the cache|after a day",
    "batches": "to each line|to a bad line|before anything runs|on the batch queue|"
    "to the output file",
    "retries": "to timeouts|to 429 rate limits|with Retry-After|to a 400 rejection|"
    "when the circuit opens",
    "queues": "on the interactive queue|to a single job|behind a large batch|"
    "with late acknowledgement|when a worker dies",
    "excerpts": "without the upstream or the cache|to the passages|with BM25|"
    "to the citations|to a degraded answer",
}

SAMPLE_PROMPTS = [form.format(topic) for topic in TOPICS for form in FORMS]
"""The common prompts: answered in the warm-up, repeated in the main batch."""


def _doc(name: str) -> dict[str, str]:
    return {"id": name, "title": f"genq notes: {name}", "text": DOCS[name]}


def doc_questions() -> list[dict[str, Any]]:
    """30 questions, each with its document and the next one as ``context``."""
    names = list(DOCS)
    return [
        {
            "prompt": f"According to the notes on {name}, what happens {subject}?",
            "context": [_doc(name), _doc(names[(i + 1) % len(names)])],
            "max_tokens": MAX_TOKENS,
        }
        for i, name in enumerate(names)
        for subject in SUBJECTS[name].split("|")
    ]


def warmup_lines() -> list[dict[str, Any]]:
    """OpenAI batch lines of the common prompts."""
    return [
        {
            "custom_id": f"warm-{i:02d}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": prompt, "max_tokens": MAX_TOKENS},
        }
        for i, prompt in enumerate(SAMPLE_PROMPTS, start=1)
    ]


def main_lines() -> list[dict[str, Any]]:
    """Prompt lines: the common prompts (cached) and the questions (context), in turns."""
    common = [{"prompt": p, "max_tokens": MAX_TOKENS} for p in SAMPLE_PROMPTS]
    return [line for pair in zip(common, doc_questions(), strict=True) for line in pair]


def after_lines() -> list[dict[str, Any]]:
    return [{"prompt": f"The upstream is back: say hello about {t}"} for t in TOPICS]
