"""worker.excerpt.build_excerpt: relevant passages of the context documents, bounded and cited."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contract import Citation, ContextDoc
from worker import excerpt
from worker.excerpt import ELLIPSIS, build_excerpt, tokenize

REDIS = (
    "Redis persistence writes the dataset to disk. RDB snapshots save the whole dataset at "
    "intervals, while the append-only file logs every write operation the server receives. "
    "On restart Redis replays the append-only file to rebuild the dataset in memory, so a "
    "crash loses at most one second of writes with the default fsync policy."
)
COOKING = (
    "Bread dough rises when yeast ferments sugar into gas. Knead the dough for ten minutes, "
    "cover the bowl with a damp cloth and leave it somewhere warm for an hour. Bake at two "
    "hundred degrees until the crust is golden and the loaf sounds hollow when tapped."
)
GARDEN = (
    "Tomatoes need full sun and regular watering. Plant seedlings after the last frost, "
    "stake them early, and pinch out side shoots so the plant puts its energy into fruit. "
    "Mulch keeps the soil moist and prevents splashing that spreads leaf disease."
)
PARTS = re.compile(r"(?:^|\n\n)\[(\d+)\] ")


def doc(doc_id: str, text: str) -> ContextDoc:
    return ContextDoc(id=doc_id, text=text, title=f"Title {doc_id}", url=f"https://docs/{doc_id}")


def quoted(text: str) -> list[tuple[int, str]]:
    """The ``(marker number, passage)`` pairs of an excerpt's text."""
    pieces = PARTS.split(text)
    assert pieces[0] == "", text  # the text starts with a marker
    return [(int(n), body) for n, body in zip(pieces[1::2], pieces[2::2], strict=True)]


def flat(text: str) -> str:
    return " ".join(text.split())


CORPUS = [doc("cooking", COOKING), doc("redis", REDIS), doc("garden", GARDEN)]


def test_picks_the_passage_that_shares_the_prompts_terms() -> None:
    """The Redis passage is quoted first, and only it, for a question about Redis persistence."""
    result = build_excerpt("How does Redis persistence work?", CORPUS, 1_200)
    assert result is not None
    assert quoted(result.text) == [(1, REDIS)]
    assert result.citations == [Citation(id="redis", title="Title redis", url="https://docs/redis")]


def test_better_match_ranks_first() -> None:
    """The document sharing more prompt terms is quoted before one sharing fewer."""
    docs = [doc("bread", COOKING), doc("redis", REDIS)]
    result = build_excerpt("dataset persistence and bread", docs, 2_000)
    assert result is not None
    assert [c.id for c in result.citations] == ["redis", "bread"]
    assert [n for n, _ in quoted(result.text)] == [1, 2]


def test_citations_are_the_quoted_documents_only_once_each() -> None:
    """A document quoted twice is cited once; documents not quoted are not cited."""
    long_redis = f"{REDIS}\n\n{REDIS.replace('Redis', 'Valkey')}"
    docs = [doc("garden", GARDEN), doc("redis", long_redis), doc("cooking", COOKING)]
    result = build_excerpt("redis valkey append-only file", docs, 2_000)
    assert result is not None
    assert [n for n, _ in quoted(result.text)] == [1, 1]
    assert result.citations == [Citation(id="redis", title="Title redis", url="https://docs/redis")]


def test_no_common_term_quotes_the_beginning_of_the_first_document() -> None:
    """With no term in common, the excerpt is the start of the first document, cited."""
    result = build_excerpt("quantum zebra xylophone", CORPUS, 100)
    assert result is not None
    [(number, body)] = quoted(result.text)
    assert number == 1
    assert body.endswith(ELLIPSIS)
    assert COOKING.startswith(body.removesuffix(ELLIPSIS))
    assert result.citations == [
        Citation(id="cooking", title="Title cooking", url="https://docs/cooking")
    ]


def test_stop_words_alone_are_no_overlap() -> None:
    """A prompt of stop words only falls back to the first document, not a random match."""
    result = build_excerpt("what is the of and to", [doc("garden", GARDEN), *CORPUS], 1_200)
    assert result is not None
    assert result.citations[0].id == "garden"


def test_long_passage_is_cut_at_a_word_boundary() -> None:
    """A passage longer than the budget ends in an ellipsis after a whole word."""
    result = build_excerpt("redis dataset", CORPUS, 120)
    assert result is not None
    assert len(result.text) <= 120
    [(_, body)] = quoted(result.text)
    head = body.removesuffix(ELLIPSIS)
    assert body.endswith(ELLIPSIS)
    assert REDIS.startswith(head)
    assert REDIS[len(head)] == " "


def test_empty_or_blank_documents_give_none() -> None:
    """No documents, or documents of whitespace only, give no excerpt."""
    assert build_excerpt("redis", [], 1_200) is None
    assert build_excerpt("redis", [doc("blank", " \n\n\t ")], 1_200) is None


def test_non_positive_budget_is_refused() -> None:
    """max_chars below 1 raises ValueError instead of returning an empty answer."""
    with pytest.raises(ValueError, match="max_chars"):
        build_excerpt("redis", CORPUS, 0)


def test_tokenize_lowercases_unicode_words_without_stop_words() -> None:
    """Tokens are lowercased unicode words; stop words and contraction pieces are dropped."""
    assert tokenize("The Café's ÜBER-cool data_set, 42 ideas!") == [
        "café",
        "über",
        "cool",
        "data_set",
        "42",
        "ideas",
    ]


def test_term_counts_respect_word_boundaries_and_case() -> None:
    """Terms count as whole words, any case, next to punctuation; not inside other words."""
    passages = ["Cat, CAT and (cat) — the cat's bowl", "concatenate catalogue bobcat cat_food"]
    assert excerpt._term_frequencies({"cat", "café"}, [p.lower() for p in passages]) == {
        "cat": {0: 4}
    }


def test_long_prompt_is_searched_for_its_most_repeated_terms() -> None:
    """A prompt of many terms keeps QUERY_TERMS_MAX of them, the repeated ones first."""
    filler = " ".join(f"word{i}" for i in range(100))
    query = excerpt._query(f"{filler} redis redis persistence persistence")
    assert len(query) == excerpt.QUERY_TERMS_MAX
    assert {"redis", "persistence"} <= query
    result = build_excerpt(f"{filler} redis redis persistence persistence", CORPUS, 1_200)
    assert result is not None
    assert result.citations[0].id == "redis"


def test_only_the_start_of_each_document_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond SEARCH_MAX_CHARS shared among the documents, text is not searched or quoted."""
    monkeypatch.setattr(excerpt, "SEARCH_MAX_CHARS", 2 * len(COOKING))
    docs = [doc("late", f"{COOKING}\n\n{REDIS}"), doc("garden", GARDEN)]
    result = build_excerpt("redis persistence", docs, 1_200)
    assert result is not None
    assert "Redis" not in result.text
    assert result.citations[0].id == "late"  # no match: the start of the first document


def test_substrings_of_words_do_not_match() -> None:
    """A term inside a longer word (cat in concatenate) does not count as the term."""
    scores = excerpt._bm25({"cat"}, ["concatenate catalogue bobcat", "a cat sat"])
    assert scores[0] == 0.0
    assert scores[1] > 0.0


@pytest.mark.parametrize("max_chars", [1, 3, 5, 12, 40, 80, 150, 299, 300, 601, 1_200, 5_000])
def test_never_exceeds_max_chars_and_markers_match_citations(max_chars: int) -> None:
    """At every budget the text fits, and each ``[n]`` quotes the n-th cited document."""
    docs = [doc(f"d{i}", f"{REDIS}\n\n{COOKING}\n\n{GARDEN} {i}") for i in range(4)]
    result = build_excerpt("redis bread tomatoes dataset", docs, max_chars)
    assert result is not None
    assert len(result.text) <= max_chars
    if not result.text.startswith("["):  # a budget below one marker: a bare cut
        assert len(result.citations) == 1
        return
    parts = quoted(result.text)
    assert sorted({n for n, _ in parts}) == list(range(1, len(result.citations) + 1))
    by_id = {d.id: d for d in docs}
    for number, body in parts:
        source = flat(by_id[result.citations[number - 1].id].text)
        assert body.removesuffix(ELLIPSIS) in source


texts = st.text(
    alphabet=st.sampled_from("abc déf Ωx.,!?\n\t-_" + "0123456789"), min_size=1, max_size=1_500
)


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=80),
    bodies=st.lists(texts, min_size=1, max_size=6),
    max_chars=st.integers(min_value=1, max_value=2_000),
)
def test_property_bounded_for_any_text(prompt: str, bodies: list[str], max_chars: int) -> None:
    """For any documents and budget: None only for blank documents, else within max_chars."""
    docs = [doc(f"d{i}", body) for i, body in enumerate(bodies)]
    result = build_excerpt(prompt, docs, max_chars)
    if all(not body.strip() for body in bodies):
        assert result is None
        return
    assert result is not None
    assert 0 < len(result.text) <= max_chars
    assert 1 <= len(result.citations) <= len(docs)
    assert len({c.id for c in result.citations}) == len(result.citations)
