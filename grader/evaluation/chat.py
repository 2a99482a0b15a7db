"""Chat records: validating ``{"messages": [...]}`` before a tokenizer's template ever sees them.

The NLL and the generation code both feed messages to the task tokenizer's chat template. A
template that meets a missing key or an integer ``content`` fails with a Jinja traceback that
names neither the record nor the field, so every record is validated here first and a malformed
one raises :class:`RecordError` naming ``records[i].messages[j].field``.

Whose fault a :class:`RecordError` is depends on whose file it is (a candidate's data set, or the
task's hidden data), so it is a plain ``ValueError`` and the caller maps it: ``CandidateFault`` for
a candidate's file, a grader error for hidden data.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError

from grader.schema import Strict


class RecordError(ValueError):
    """A chat record is malformed; the message names the record and the field."""


class ChatMessage(Strict):
    """One turn. Unknown keys are refused: the template would ignore them silently, and a key such
    as a per-message loss ``weight`` would then change nothing while looking as if it did."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    """Who speaks; the task templates know only these three roles."""
    content: str
    """The text of the turn (plain text, not a list of content parts)."""


_MESSAGES = TypeAdapter(list[ChatMessage])


def validate_messages(messages: Any, where: str, need_assistant: bool) -> list[dict[str, str]]:
    """Check one conversation and return it as plain dicts for ``apply_chat_template``.

    ``where`` prefixes the error (``records[3]``); ``need_assistant`` demands at least one assistant
    turn, without which a response-only NLL has nothing to count.
    """
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}.messages: expected a non-empty list of messages")
    try:
        parsed = _MESSAGES.validate_python(messages)
    except ValidationError as exc:
        raise RecordError(_describe(exc, f"{where}.messages")) from None
    if need_assistant and not any(m.role == "assistant" for m in parsed):
        raise RecordError(f"{where}.messages: no assistant message, so no response tokens to score")
    return [m.model_dump() for m in parsed]


def record_messages(record: Any, index: int, need_assistant: bool) -> list[dict[str, str]]:
    """The validated messages of ``records[index]``; other top-level keys are allowed and ignored."""
    where = f"records[{index}]"
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected an object with a 'messages' list, got {type(record).__name__}")
    if "messages" not in record:
        raise RecordError(f"{where}: no 'messages' key")
    return validate_messages(record["messages"], where, need_assistant)


def template_error(exc: Exception, where: str) -> RecordError:
    """A template failure (its ``raise_exception``, e.g. a system turn that is not first) as a RecordError."""
    return RecordError(f"{where}.messages: rejected by the chat template: {exc}")


def _describe(exc: ValidationError, prefix: str) -> str:
    """``records[3].messages[1].role: Input should be ...``, one path per error, like :func:`describe`."""
    parts = []
    for e in exc.errors():
        loc = prefix
        for p in e["loc"]:
            loc += f"[{p}]" if isinstance(p, int) else f".{p}"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
