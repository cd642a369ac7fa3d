"""What the model is sent: a job's prompt or chat messages, with its context documents.

Templates (README "Context documents" shows them too):

- Context documents, when the job's ``context_mode`` is ``prompt`` (the default), become
  one block that keeps each document's id, so the model can cite it::

      Answer from the documents below when they are relevant, and cite each one you
      use by its id in square brackets, like [doc-1].

      [doc-1] Title <https://…>
      The document's text.

  A chat job gets it as a system message, first (added to the job's own system message
  when it starts with one); a prompt job gets it, then a blank line, before its prompt.
- Chat messages sent to a text-generation route (``hf``; ``tgi``'s ``/generate``) are
  rendered one line each, ``<role>: <content>``, then ``assistant:``.
"""

from __future__ import annotations

from core.contract import ChatMessage, ContextDoc, GenerateRequest

__all__ = ["ModelInput", "context_block", "model_input", "render_chat"]

INSTRUCTION = (
    "Answer from the documents below when they are relevant, and cite each one you use "
    "by its id in square brackets, like [doc-1]."
)

#: (prompt, messages): exactly one is not None.
ModelInput = tuple[str | None, list[ChatMessage] | None]


def context_block(docs: list[ContextDoc]) -> str:
    """The documents as the model reads them (see the module docstring)."""
    parts = [INSTRUCTION]
    for doc in docs:
        title = f" {doc.title}" if doc.title else ""
        url = f" <{doc.url}>" if doc.url else ""
        parts.append(f"[{doc.id}]{title}{url}\n{doc.text}")
    return "\n\n".join(parts)


def model_input(request: GenerateRequest) -> ModelInput:
    """The job's prompt or messages, with its context when its ``context_mode`` says so."""
    if not request.context or request.context_mode == "fallback_only":
        return request.prompt, request.messages
    block = context_block(request.context)
    if request.prompt is not None:
        return f"{block}\n\n{request.prompt}", None
    messages = list(request.messages or ())
    if messages and messages[0].role == "system":
        merged = ChatMessage(role="system", content=f"{messages[0].content}\n\n{block}")
        return None, [merged, *messages[1:]]
    return None, [ChatMessage(role="system", content=block), *messages]


def render_chat(messages: list[ChatMessage]) -> str:
    """Messages as one text-generation prompt: ``<role>: <content>`` lines, then
    ``assistant:``."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"
