"""worker.prompt: what the model is sent, context documents included, by the templates."""

from __future__ import annotations

from core.contract import ChatMessage, ContextDoc, GenerateRequest
from worker.prompt import INSTRUCTION, context_block, model_input, render_chat

DOCS = [
    ContextDoc(id="doc-1", title="Queues", url="https://q.example", text="A queue holds work."),
    ContextDoc(id="doc-2", text="Workers take it."),
]
BLOCK = (
    f"{INSTRUCTION}\n\n[doc-1] Queues <https://q.example>\nA queue holds work.\n\n"
    "[doc-2]\nWorkers take it."
)


def test_the_block_keeps_every_document_id_title_and_url() -> None:
    """Each document is '[id] title <url>' then its text, after the instruction."""
    assert context_block(DOCS) == BLOCK


def test_a_prompt_gets_the_documents_before_it() -> None:
    """A prompt job is sent the block, a blank line, then the prompt."""
    prompt, messages = model_input(GenerateRequest(prompt="What holds work?", context=DOCS))
    assert (prompt, messages) == (f"{BLOCK}\n\nWhat holds work?", None)


def test_chat_gets_a_system_message_first_or_merged_into_its_own() -> None:
    """Chat without a system message gets one first; with one, the block is appended to it."""
    user = ChatMessage(role="user", content="What holds work?")
    _, plain = model_input(GenerateRequest(messages=[user], context=DOCS))
    assert plain == [ChatMessage(role="system", content=BLOCK), user]
    system = ChatMessage(role="system", content="Be brief.")
    _, merged = model_input(GenerateRequest(messages=[system, user], context=DOCS))
    assert merged == [ChatMessage(role="system", content=f"Be brief.\n\n{BLOCK}"), user]


def test_fallback_only_context_is_not_sent() -> None:
    """With context_mode fallback_only, the job's prompt or messages go as they are."""
    request = GenerateRequest(prompt="p", context=DOCS, context_mode="fallback_only")
    assert model_input(request) == ("p", None)


def test_messages_render_as_role_lines_then_assistant() -> None:
    """For text-generation routes, messages become '<role>: <content>' lines and 'assistant:'."""
    messages = [ChatMessage(role="system", content="S"), ChatMessage(role="user", content="U")]
    assert render_chat(messages) == "system: S\nuser: U\nassistant:"
