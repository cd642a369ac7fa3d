"""The excerpt answer: the context passages most relevant to the prompt, cited.

When the upstream cannot be used and the cache has no answer, the worker quotes the
job's own context documents. Each document is split into passages of about 300-600
characters (sentences packed up to ``PASSAGE_MAX_CHARS``; a paragraph break ends a
passage once it holds ``PASSAGE_MIN_CHARS``), the passages are ranked by Okapi BM25
against the prompt, and the best are quoted in rank order until ``max_chars``::

    [1] best passage, from doc A

    [2] next passage, from doc B

    [1] third passage, from doc A again

Marker ``[n]`` is the n-th entry of ``Excerpt.citations`` (one per quoted document).
The passage that no longer fits whole is cut at a word boundary with ``…`` and ends the
text, so the text never exceeds ``max_chars``. With no term in common between prompt
and documents, the beginning of the first document(s) is quoted instead.

Why a ~40-line BM25 of our own and not a library: this runs on the fallback hot path,
on a new corpus every call (the job's documents), so building the index counts as much
as querying it. Measured on this 2-core machine (Python 3.11, the bench's 50 docs ×
2,000 chars ≈ 245 passages, a 7-term prompt; one call = split + rank + assemble, the
same splitting for all; ranges over four rounds of 1,000 calls, some under other load):

==================  ==========  ==========  ================================================
ranker              p50         p99         what it brings
==================  ==========  ==========  ================================================
this module         1.9-2.7 ms  2.8-3.8 ms  nothing; ``str.find`` per term, no tokenizing
rank-bm25 0.2.2     11-21 ms    20-48 ms    numpy (+180 ms import); unmaintained since 2022
bm25s 0.3.16        17-21 ms    34-62 ms    numpy + scipy (+450 ms import)
==================  ==========  ==========  ================================================

Both libraries need every passage tokenized into Python lists first (~5 ms here alone)
and then build arrays or sparse matrices that a one-shot corpus never amortizes; all
three picked the same passages. The pure version is the only one under the 5 ms p99
target and adds no dependency. It counts each prompt term with one ``str.find`` pass
over the lowered passages (word boundaries checked as ``\\w`` does) instead of
tokenizing them, and measures lengths in characters. Work per call is bounded: at most
``QUERY_TERMS_MAX`` prompt terms and ``SEARCH_MAX_CHARS`` of context.
``python -m bench.fallback_micro_bench`` re-measures.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from core.contract import Citation, ContextDoc

__all__ = ["Excerpt", "build_excerpt", "tokenize"]

PASSAGE_MAX_CHARS = 600
"""A passage is never longer (a longer sentence is split at word boundaries)."""
PASSAGE_MIN_CHARS = 300
"""Short paragraphs are joined with the next one until a passage holds this many."""
ELLIPSIS = "…"
MIN_CUT_CHARS = 40
"""A passage cut shorter than this to fit is left out rather than quoted."""
_SEPARATOR = "\n\n"

# Okapi BM25 with Lucene's always-positive idf: any shared term scores above zero.
_K1 = 1.5
_B = 0.75
QUERY_TERMS_MAX = 24
"""A longer prompt is searched for its most repeated terms (longer first on ties): each
term costs one pass over the passages, ~0.1 ms per 100 kB here."""
SEARCH_MAX_CHARS = 100_000
"""Context searched per call, shared evenly by the documents (the start of each): a job
carrying 50 × 100,000 chars costs what the benchmarked 50 × 2,000 chars cost."""

# Common English function words, and the pieces contractions split into (it's → s).
_STOP_TEXT = (
    "a an and are as at be but by do does for from had has have how i if in into is it "
    "its me my no not of on or our so than that the their them then there these they "
    "this to was we were what when where which who why will with you your "
    "he she his her him us s t d ll m re ve"
)
_STOP_WORDS = frozenset(_STOP_TEXT.split())
_WORD = re.compile(r"\w+")
_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_ENDS = (". ", "! ", "? ", "… ")


@dataclass(frozen=True)
class Excerpt:
    """An answer quoted from context documents; ``[n]`` in the text is ``citations[n-1]``."""

    text: str
    citations: list[Citation]


@dataclass(frozen=True)
class _Passage:
    doc: int
    text: str


def tokenize(text: str) -> list[str]:
    """Lowercased unicode words of ``text``, without English stop words."""
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS]


def build_excerpt(prompt: str, docs: Sequence[ContextDoc], max_chars: int) -> Excerpt | None:
    """The passages of ``docs`` most relevant to ``prompt``, within ``max_chars``.

    None when there is nothing to quote (no documents, or only whitespace in them).
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    share = SEARCH_MAX_CHARS // max(len(docs), 1)
    passages = [p for i, doc in enumerate(docs) for p in _split(i, _head(doc.text, share))]
    if not passages:
        return None
    scores = _bm25(_query(prompt), [p.text for p in passages])
    ranked = sorted((i for i, s in enumerate(scores) if s > 0.0), key=lambda i: -scores[i])
    chosen = [passages[i] for i in ranked] or passages  # no overlap: documents in order
    return _assemble(chosen, docs, max_chars)


def _query(prompt: str) -> set[str]:
    """The prompt's terms, at most ``QUERY_TERMS_MAX``: the most repeated, then longest."""
    counts = Counter(tokenize(prompt))
    if len(counts) <= QUERY_TERMS_MAX:
        return set(counts)
    ranked = sorted(counts, key=lambda term: (-counts[term], -len(term)))
    return set(ranked[:QUERY_TERMS_MAX])


def _head(text: str, limit: int) -> str:
    """The start of ``text``, at most ``limit`` chars, ending at a space when cut."""
    if len(text) <= limit:
        return text
    space = text.rfind(" ", limit // 2, limit)
    return text[: space if space != -1 else limit]


def _split(doc: int, text: str) -> list[_Passage]:
    """One document's passages: paragraphs joined up to 300 chars, cut at sentences by 600."""
    passages: list[_Passage] = []
    current = ""
    for paragraph in _PARAGRAPH.split(text):
        paragraph = _clean(paragraph)
        if not paragraph:
            continue
        if len(current) >= PASSAGE_MIN_CHARS:
            passages.append(_Passage(doc, current))
            current = ""
        current = f"{current} {paragraph}" if current else paragraph
        while len(current) > PASSAGE_MAX_CHARS:
            cut = _cut_point(current)
            passages.append(_Passage(doc, current[:cut].rstrip()))
            current = current[cut:].lstrip()
    if current and passages and len(passages[-1].text) + 1 + len(current) <= PASSAGE_MAX_CHARS:
        current = f"{passages.pop().text} {current}"  # a short tail joins the passage before
    if current:
        passages.append(_Passage(doc, current))
    return passages


def _clean(text: str) -> str:
    """``text`` on one line, single spaces: 0.3 ms per 100 kB, where ``\\s+`` took 4 ms."""
    text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    while "  " in text:
        text = text.replace("  ", " ")
    return text.strip()


def _cut_point(text: str) -> int:
    """Where to end a passage of ``text``: the last sentence end that leaves 300-600 chars,
    else the last space, else (one 600-char word) at 600."""
    end = max(text.rfind(mark, PASSAGE_MIN_CHARS, PASSAGE_MAX_CHARS) for mark in _SENTENCE_ENDS)
    if end != -1:
        return end + 1
    space = text.rfind(" ", PASSAGE_MAX_CHARS // 2, PASSAGE_MAX_CHARS + 1)
    return space if space != -1 else PASSAGE_MAX_CHARS


def _bm25(query: set[str], passages: Sequence[str]) -> list[float]:
    """Okapi BM25 score of each passage for ``tokenize``d query terms (0.0: none in it).

    Passage length is counted in characters: the same length ratio as in words, and no
    passage needs tokenizing.
    """
    lowered = [text.lower() for text in passages]
    found = _term_frequencies(query, lowered)
    n = len(passages)
    average = (sum(map(len, passages)) / n) if n else 1.0
    scores = [0.0] * n
    for tfs in found.values():
        idf = math.log((n - len(tfs) + 0.5) / (len(tfs) + 0.5) + 1.0)
        for i, tf in tfs.items():
            norm = _K1 * (1.0 - _B + _B * len(passages[i]) / average)
            scores[i] += idf * tf * (_K1 + 1.0) / (tf + norm)
    return scores


def _term_frequencies(query: set[str], lowered: list[str]) -> dict[str, dict[int, int]]:
    """``{term: {passage: count}}`` by one ``str.find`` pass per term: no tokenizing."""
    text = "\n".join(lowered)
    starts = list(itertools.accumulate((len(t) + 1 for t in lowered), initial=0))
    found: dict[str, dict[int, int]] = {}
    for term in query:
        tfs: dict[int, int] = {}
        at = text.find(term)
        while at != -1:
            end = at + len(term)
            if not (_is_word(text, at - 1) or _is_word(text, end)):
                i = bisect.bisect_right(starts, at) - 1
                tfs[i] = tfs.get(i, 0) + 1
            at = text.find(term, end)
        if tfs:
            found[term] = tfs
    return found


def _is_word(text: str, at: int) -> bool:
    """Whether ``text[at]`` exists and is a word character as ``\\w`` means it."""
    if at < 0 or at >= len(text):
        return False
    char = text[at]
    return char.isalnum() or char == "_"


def _assemble(passages: list[_Passage], docs: Sequence[ContextDoc], max_chars: int) -> Excerpt:
    """Quote ``passages`` in order, each marked ``[n]``, until ``max_chars`` is reached."""
    numbers: dict[int, int] = {}
    parts: list[str] = []
    used = 0
    for passage in passages:
        number = numbers.get(passage.doc, len(numbers) + 1)
        marker = f"[{number}] "
        room = max_chars - used - (len(_SEPARATOR) if parts else 0) - len(marker)
        fits = len(passage.text) <= room
        if not fits and room < (MIN_CUT_CHARS if parts else 1):
            break
        numbers[passage.doc] = number
        part = marker + (passage.text if fits else _cut(passage.text, room))
        used += len(part) + (len(_SEPARATOR) if parts else 0)
        parts.append(part)
        if not fits:  # cut to fit: the budget is spent
            break
    if not parts:  # a budget smaller than one marker: a bare cut of the best passage
        return Excerpt(_cut(passages[0].text, max_chars), [_cite(docs[passages[0].doc])])
    cited = sorted(numbers, key=numbers.__getitem__)
    return Excerpt(_SEPARATOR.join(parts), [_cite(docs[i]) for i in cited])


def _cut(text: str, limit: int) -> str:
    """``text`` shortened to at most ``limit`` chars, at a word boundary, ending in ``…``."""
    if len(text) <= limit:
        return text
    head = text[: limit - len(ELLIPSIS)]
    space = head.rfind(" ")
    if space > len(head) // 2:
        head = head[:space]
    return head.rstrip() + ELLIPSIS


def _cite(doc: ContextDoc) -> Citation:
    return Citation(id=doc.id, title=doc.title, url=doc.url)
