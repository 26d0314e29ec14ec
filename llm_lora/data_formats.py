"""Turn rows of any supported shape into one canonical example.

Supported shapes:
    prompt_completion: {"prompt": str, "completion": str}
    messages:          {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                       (OpenAI style; must end with an assistant turn)
    instruction:       {"instruction": str, "input": str (optional), "output": str}
Anything else maps onto one of these through `data.columns` in the YAML.

The canonical example is a chat: optional system prompt, the turns before the
answer, and the answer. Training, evaluation and inference all format that one
shape with `llm_lora.prompt_formatting`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

FORMATS = ("prompt_completion", "messages", "instruction")
ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """One row that does not fit its format; the message names the field."""


@dataclass(frozen=True)
class Example:
    """A canonical chat example.

    Attributes:
        context: The turns before the answer (user and assistant), in order.
        completion: The final assistant answer: what is trained and what is scored.
        system: A system prompt carried by the row itself (overrides the YAML's).
        source: Where the row came from ("file:line"), for reports.
    """

    context: tuple[tuple[str, str], ...]
    completion: str
    system: str | None = None
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        """The last user turn: what a person would call "the input"."""
        return next(content for role, content in reversed(self.context) if role == "user")

    def key(self) -> tuple:
        """Identity for duplicate and leakage checks: same turns, same answer."""
        return (self.system, self.context, self.completion)

    def to_row(self) -> dict:
        """A JSON-friendly dict (for artifacts and reports)."""
        return {
            "system": self.system,
            "context": [list(turn) for turn in self.context],
            "prompt": self.prompt,
            "completion": self.completion,
            "source": self.source,
        }

    @classmethod
    def from_row(cls, row: dict) -> Example:
        """Inverse of `to_row`."""
        return cls(
            context=tuple((role, content) for role, content in row["context"]),
            completion=row["completion"],
            system=row.get("system"),
            source=row.get("source", ""),
        )


def detect_format(row: dict) -> str:
    """Guess a row's format from its keys (after column mapping).

    Raises:
        RowError: When the keys fit no format.
    """
    # Decided by the key that names the format, so a missing partner field is reported by name.
    if "messages" in row:
        return "messages"
    if "instruction" in row:
        return "instruction"
    if "prompt" in row:
        return "prompt_completion"
    raise RowError(
        f"cannot tell the format from the fields {sorted(row)}: expected prompt/completion, "
        "messages, or instruction/output (or set data.format and data.columns)"
    )


def _as_text(value):
    """A number or boolean where text is expected, as its JSON text: a label column of 0/1/2 or true/false
    (the usual shape of classification data) is the answer "1", not a type error. NaN (a blank cell in a
    table) is no value at all."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return value


def _text(row: dict, name: str, required: bool = True) -> str | None:
    value = _as_text(row.get(name))
    if value is None:
        if required:
            raise RowError(f"missing field {name!r}")
        return None
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        if required:
            raise RowError(f"field {name!r} is empty")
        return None  # an optional column left blank in this row (a CSV cell): not given
    return value


def _from_messages(messages: object) -> tuple[str | None, list[tuple[str, str]], str]:
    if not isinstance(messages, list) or not messages:
        raise RowError("field 'messages' must be a non-empty list")
    system = None
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RowError(f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = _as_text(message.get("content"))
        if not isinstance(content, str):
            raise RowError(f"{where}.content must be a string, got {type(content).__name__}")
        if role == "system":
            if index != 0:
                raise RowError(f"{where}: a system message may only come first")
            system = content
            continue
        if not content.strip():
            raise RowError(f"{where}.content is empty")
        turns.append((role, content))
    if not turns or turns[-1][0] != "assistant":
        raise RowError("messages must end with an assistant turn (the answer to train on)")
    if not any(role == "user" for role, _ in turns[:-1]):
        raise RowError("messages need a user turn before the final assistant turn")
    return system, turns[:-1], turns[-1][1]


def to_example(row: dict, data_format: str = "auto", columns: dict[str, str] | None = None, source: str = "") -> Example:
    """Convert one raw row into an Example.

    Args:
        row: The row as read (a dict).
        data_format: One of FORMATS, or "auto" to detect it from the keys.
        columns: Canonical field name -> the row's column name (e.g.
            {"prompt": "question", "completion": "answer"}).
        source: "file:line" for messages.

    Returns:
        The canonical example.

    Raises:
        RowError: With the offending field named.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected an object, got {type(row).__name__}")
    if columns:
        row = _with_canonical_names(row, columns)
    kind = detect_format(row) if data_format == "auto" else data_format
    if kind == "prompt_completion":
        prompt, completion = _text(row, "prompt"), _text(row, "completion")
        system = _text(row, "system", required=False)
        return Example(context=(("user", prompt),), completion=completion, system=system, source=source)
    if kind == "instruction":
        instruction, output = _text(row, "instruction"), _text(row, "output")
        extra_input = _text(row, "input", required=False)
        user = f"{instruction}\n\n{extra_input}" if extra_input and extra_input.strip() else instruction
        return Example(context=(("user", user),), completion=output, source=source)
    if kind == "messages":
        if "messages" not in row:
            raise RowError("missing field 'messages'")
        system, turns, completion = _from_messages(row["messages"])
        return Example(context=tuple(turns), completion=completion, system=system, source=source)
    raise RowError(f"unknown format {kind!r} (expected one of {', '.join(FORMATS)})")


ANSWER_FIELDS = ("completion", "output")


def _with_canonical_names(row: dict, columns: dict[str, str], optional: tuple[str, ...] = ()) -> dict:
    """The row with each `data.columns` column copied under its canonical name."""
    missing = [column for canonical, column in columns.items() if column not in row and canonical not in optional]
    if missing:
        raise RowError(f"missing column {missing[0]!r} (mapped in data.columns)")
    return {**row, **{canonical: row[column] for canonical, column in columns.items() if column in row}}


def to_inference_input(
    row: dict, data_format: str = "auto", columns: dict[str, str] | None = None
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The system prompt and turns of an unanswered row, for inference.

    Accepts the training formats without their answer: a prompt, an
    instruction (with optional input), or messages ending with a user turn.

    Returns:
        (the row's own system prompt or None, the context turns).

    Raises:
        RowError: With the offending field named.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected an object, got {type(row).__name__}")
    if columns:  # the training run's column names; the answer's column is what inference produces
        row = _with_canonical_names(row, columns, optional=ANSWER_FIELDS)
    if "messages" in row or data_format == "messages":
        messages = row.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            # A placeholder answer lets the training-format checks run unchanged.
            if messages[-1].get("role") == "assistant":
                raise RowError("messages end with an assistant turn; inference needs the conversation up to a user turn")
            messages = [*messages, {"role": "assistant", "content": "-"}]
        example = to_example({**row, "messages": messages}, "messages")
        return example.system, example.context
    answer = {"completion": "-"} if data_format in ("auto", "prompt_completion") else {"output": "-"}
    if data_format == "auto" and "instruction" in row:
        answer = {"output": "-"}
    example = to_example({**row, **answer}, data_format)
    return example.system, example.context
