"""Turn rows of any supported shape into one canonical example.

Supported shapes:
    prompt_completion: {"prompt": str, "completion": str}
    messages:          OpenAI's chat fine-tuning rows: {"messages": [...], "tools": [...], ...}, read
                       and checked as OpenAI reads them (`llm_lora.openai_format`); "openai" is the
                       same format under OpenAI's name
    instruction:       {"instruction": str, "input": str (optional), "output": str}
Anything else maps onto one of these through `data.columns` in the YAML.

The canonical example is a chat: optional system prompt, the turns before the
answer, and the answer, plus the tools the row offers. Training, evaluation and
inference all format that one shape with `llm_lora.prompt_formatting`.

A turn is `(role, content)`, or `(role, content, meta)` when it carries more than
text: `meta` is the JSON text of its function calls (`tool_calls`: id, name and
arguments as an object), the call a tool message answers (`tool_call_id`), a
`name`, or an OpenAI training `weight`. Text keeps turns hashable (duplicate and
leakage checks) and JSON-friendly (artifacts), and plain turns stay as they were.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

FORMATS = ("prompt_completion", "messages", "openai", "instruction")
ROLES = ("system", "user", "assistant")

Turn = tuple  # (role, content) or (role, content, meta JSON)


class RowError(ValueError):
    """One row that does not fit its format; the message names the field."""


def make_turn(role: str, content: str, **meta) -> Turn:
    """A turn; meta entries that are None are left out, and a turn without meta is a plain pair."""
    meta = {key: value for key, value in meta.items() if value is not None}
    return (role, content, json.dumps(meta, ensure_ascii=False)) if meta else (role, content)


def turn_meta(turn: Turn) -> dict:
    """What a turn carries beside its text (see the module docstring); {} for a plain turn."""
    return json.loads(turn[2]) if len(turn) > 2 and turn[2] else {}


def turn_calls(turn: Turn) -> list[dict]:
    """A turn's function calls as {"id", "name", "arguments"} ([] for a turn that calls nothing)."""
    return turn_meta(turn).get("tool_calls", [])


def expected_calls(meta: dict) -> list[dict]:
    """The calls an answer makes, as scoring compares them: {"name", "arguments"} each."""
    return [{"name": call["name"], "arguments": call["arguments"]} for call in meta.get("tool_calls", [])]


@dataclass(frozen=True)
class Example:
    """A canonical chat example.

    Attributes:
        context: The turns before the answer (user, assistant and tool), in order.
        completion: The final assistant answer as text: what is scored for a text answer. For an
            answer that calls functions, the calls in the fallback rendering (`llm_lora.tool_calls`).
        system: A system prompt carried by the row itself (overrides the YAML's).
        source: Where the row came from ("file:line"), for reports.
        answer_meta: The final answer's meta JSON (its calls and weight, see `make_turn`), or "".
        tools: The JSON text of the functions the row offers (OpenAI's `tools` list), or "".
        parallel_tool_calls: The row's `parallel_tool_calls`, when it gives one.
    """

    context: tuple[Turn, ...]
    completion: str
    system: str | None = None
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    answer_meta: str = ""
    tools: str = ""
    parallel_tool_calls: bool | None = None

    @property
    def prompt(self) -> str:
        """The last user turn: what a person would call "the input" ("" for a row without one)."""
        return next((turn[1] for turn in reversed(self.context) if turn[0] == "user"), "")

    @property
    def answer(self) -> Turn:
        """The final assistant answer as a turn, with its calls and weight (and only the text beside the calls)."""
        if not self.answer_meta:
            return ("assistant", self.completion)
        calls = json.loads(self.answer_meta).get("tool_calls")
        content = self.completion
        if calls:  # the completion is the text, then the calls in the fallback rendering
            from llm_lora.tool_calls import calls_text

            blocks = calls_text(calls)
            content = self.completion[: -len(blocks)].rstrip("\n") if self.completion.endswith(blocks) else ""
        return ("assistant", content, self.answer_meta)

    @property
    def tool_list(self) -> list[dict] | None:
        """The functions the row offers (None: no tools)."""
        return json.loads(self.tools) if self.tools else None

    def key(self) -> tuple:
        """Identity for duplicate and leakage checks: same turns, same tools, same answer."""
        return (self.system, self.context, self.completion, self.answer_meta, self.tools)

    def input_key(self, system_prompt: str | None) -> tuple:
        """What makes two rows the same input: the system prompt the model sees, the turns and the tools."""
        return (self.system if self.system is not None else system_prompt, self.context, self.tools)

    def to_row(self) -> dict:
        """A JSON-friendly dict (for artifacts and reports); rows without tools keep their old shape."""
        row = {
            "system": self.system,
            "context": [list(turn) for turn in self.context],
            "prompt": self.prompt,
            "completion": self.completion,
            "source": self.source,
        }
        if self.answer_meta:
            row["answer_meta"] = json.loads(self.answer_meta)
        if self.tools:
            row["tools"] = json.loads(self.tools)
        if self.parallel_tool_calls is not None:
            row["parallel_tool_calls"] = self.parallel_tool_calls
        return row

    @classmethod
    def from_row(cls, row: dict) -> Example:
        """Inverse of `to_row`."""
        meta = row.get("answer_meta")
        tools = row.get("tools")
        return cls(
            context=tuple(tuple(turn) for turn in row["context"]),
            completion=row["completion"],
            system=row.get("system"),
            source=row.get("source", ""),
            answer_meta=json.dumps(meta, ensure_ascii=False) if meta else "",
            tools=json.dumps(tools, ensure_ascii=False) if tools else "",
            parallel_tool_calls=row.get("parallel_tool_calls"),
        )

    def to_messages_row(self) -> dict:
        """The example as an OpenAI chat fine-tuning row (the one shape that holds any format's rows)."""
        from llm_lora.openai_format import messages_row

        return messages_row(self)


def detect_format(row: dict) -> str:
    """Guess a row's format from its keys (after column mapping).

    Raises:
        RowError: When the keys fit no format.
    """
    # Decided by the key that names the format, so a missing partner field is reported by name.
    preference_refusal(row)
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


PREFERENCE_KEYS = (("preferred_output", "non_preferred_output"), ("chosen", "rejected"))


def preference_refusal(row: dict) -> None:
    """Refuse a preference pair (OpenAI's DPO rows, TRL's chosen/rejected) in one line: it is not a training row here.

    Raises:
        RowError: When the row is a preference pair.
    """
    for keys in PREFERENCE_KEYS:
        if all(key in row for key in keys):
            shape = "OpenAI's DPO format" if keys[0] == "preferred_output" else "TRL's preference format"
            raise RowError(
                f"a preference pair ({shape}: {', '.join(keys)}): preference tuning (DPO) is not available yet;"
                " supervised rows (messages, or prompt/completion) train here"
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
    if kind in ("messages", "openai"):
        from llm_lora.openai_format import read_chat_row

        return read_chat_row(row, source)
    raise RowError(f"unknown format {kind!r} (expected one of {', '.join(FORMATS)})")


ANSWER_FIELDS = ("completion", "output")


def _with_canonical_names(row: dict, columns: dict[str, str], optional: tuple[str, ...] = ()) -> dict:
    """The row with each `data.columns` column copied under its canonical name."""
    missing = [column for canonical, column in columns.items() if column not in row and canonical not in optional]
    if missing:
        raise RowError(f"missing column {missing[0]!r} (mapped in data.columns)")
    return {**row, **{canonical: row[column] for canonical, column in columns.items() if column in row}}


@dataclass(frozen=True)
class InferenceInput:
    """An unanswered row: what the model is asked.

    Attributes:
        system: The row's own system prompt, or None.
        context: The turns so far, ending where the model answers (a user or tool turn).
        tools: The JSON text of the functions the row offers, or "".
    """

    system: str | None
    context: tuple[Turn, ...]
    tools: str = ""

    @property
    def tool_list(self) -> list[dict] | None:
        return json.loads(self.tools) if self.tools else None


def read_inference_input(
    row: dict, data_format: str = "auto", columns: dict[str, str] | None = None
) -> InferenceInput:
    """The system prompt, turns and tools of an unanswered row, for inference.

    Accepts the training formats without their answer: a prompt, an
    instruction (with optional input), or messages ending with a user or tool
    turn (with the row's `tools`, as in training).

    Raises:
        RowError: With the offending field named.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected an object, got {type(row).__name__}")
    if columns:  # the training run's column names; the answer's column is what inference produces
        row = _with_canonical_names(row, columns, optional=ANSWER_FIELDS)
    if "messages" in row or data_format in ("messages", "openai"):
        messages = row.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            # A placeholder answer lets the training-format checks run unchanged.
            if messages[-1].get("role") == "assistant":
                raise RowError("messages end with an assistant turn; inference needs the conversation up to a user turn")
            messages = [*messages, {"role": "assistant", "content": "-"}]
        example = to_example({**row, "messages": messages}, "messages")
        return InferenceInput(example.system, example.context, example.tools)
    answer = {"completion": "-"} if data_format in ("auto", "prompt_completion") else {"output": "-"}
    if data_format == "auto" and "instruction" in row:
        answer = {"output": "-"}
    example = to_example({**row, **answer}, data_format)
    return InferenceInput(example.system, example.context)


def to_inference_input(
    row: dict, data_format: str = "auto", columns: dict[str, str] | None = None
) -> tuple[str | None, tuple[Turn, ...]]:
    """The system prompt and turns of an unanswered row (`read_inference_input` without its tools).

    Raises:
        RowError: With the offending field named.
    """
    given = read_inference_input(row, data_format, columns)
    return given.system, given.context
