"""Recorded answers: another model's answers on the test rows, read from a file and scored like the others.

Someone leaving a hosted fine-tune keeps what it answered on their test rows. A recorded-answers
file holds one line per test row: the row as the data has it with its answer replaced by the
model's (for chat rows, the last assistant message as the API returned it: `content` and/or
`tool_calls`; for prompt/completion rows, the completion), plus the response's `usage`
(`prompt_tokens`, `completion_tokens`: what the API billed) and, optionally, `latency_s`. Lines are
matched to the test rows by their input (system prompt, turns and tools), so their order is free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_lora.config import DataConfig, RecordedBaseline
from llm_lora.data_formats import ANSWER_FIELDS, Example, RowError, read_inference_input, to_example
from llm_lora.data_sources import DataError, read_file
from llm_lora.generation import Generation

# Keys an API's assistant message may carry beside what is scored (the Python client's model_dump()).
_ANSWER_KEYS = ("role", "content", "tool_calls", "function_call")


@dataclass(frozen=True)
class RecordedAnswer:
    """One recorded answer.

    Attributes:
        text: The answer as text (calls in the fallback rendering, which scoring reads back).
        prompt_tokens: The prompt tokens the API billed (None: not recorded).
        completion_tokens: The generated tokens it billed (None: not recorded).
        latency_s: The request's latency, when recorded.
        source: "file:line".
    """

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    source: str


def _usage(row: dict, where: str) -> tuple[int | None, int | None]:
    usage = row.get("usage")
    if usage is None:
        return None, None
    if not isinstance(usage, dict):
        raise DataError(f"{where}: usage must be an object with prompt_tokens and completion_tokens")
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{where}: usage.{key} must be a whole number of tokens, got {value!r}")
        counts.append(value)
    return counts[0], counts[1]


def _answer_text(message: dict, where: str) -> str:
    """The model's message as scored text: its content, then its calls in the fallback rendering."""
    probe = {"messages": [{"role": "user", "content": "-"},
                          {key: value for key, value in message.items() if key in _ANSWER_KEYS and value is not None}]}
    if not (message.get("tool_calls") or message.get("function_call")):
        content = message.get("content")
        if content is None or content == "":  # an empty answer is an answer: a wrong one
            return ""
        probe["messages"][1] = {"role": "assistant", "content": content}
    try:
        example = to_example(probe, "messages")
    except RowError as exc:
        raise DataError(f"{where}: the recorded answer: {str(exc).replace('messages[1]', 'the last message')}") from None
    return example.completion


def _split(row: dict, data: DataConfig, where: str) -> tuple[dict, str]:
    """(the row without its answer, the model's answer as text)."""
    if "messages" in row or data.format in ("messages", "openai"):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: the last message must be the model's answer (role assistant)")
        return {**row, "messages": messages[:-1]}, _answer_text(messages[-1], where)
    columns = data.columns or {}
    for field in ANSWER_FIELDS:
        column = columns.get(field, field)
        if column in row:
            answer = row[column]
            if not isinstance(answer, str):
                raise DataError(f"{where}: {column} must be the model's answer as text, got {type(answer).__name__}")
            return {key: value for key, value in row.items() if key != column}, answer
    raise DataError(f"{where}: no answer: the row needs its answer column (completion or output) holding the model's answer")


def read_recorded_answers(path: Path, data: DataConfig) -> dict[tuple, RecordedAnswer]:
    """Every answer of a recorded-answers file, by the input key of its row (`Example.input_key`).

    Raises:
        DataError: An unreadable line, a row that does not fit the data's format, or an input answered twice;
            named by file and line.
    """
    raw = read_file(path)
    if raw.bad:
        where, reason = raw.bad[0]
        raise DataError(f"{where}: {reason}")
    answers: dict[tuple, RecordedAnswer] = {}
    for row, where in raw.rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object")
        prompt_tokens, completion_tokens = _usage(row, where)
        latency = row.get("latency_s")
        if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0):
            raise DataError(f"{where}: latency_s must be a number of seconds, got {latency!r}")
        unanswered, text = _split({k: v for k, v in row.items() if k not in ("usage", "latency_s")}, data, where)
        try:
            given = read_inference_input(unanswered, data.format, data.columns)
        except RowError as exc:
            raise DataError(f"{where}: {exc}") from None
        key = Example(context=given.context, completion="", system=given.system, tools=given.tools).input_key(
            data.system_prompt)
        if key in answers:
            raise DataError(f"{where}: answers the same input as {answers[key].source}; one answer per test row")
        answers[key] = RecordedAnswer(text, prompt_tokens, completion_tokens,
                                      None if latency is None else float(latency), where)
    if not answers:
        raise DataError(f"{path}: no recorded answers")
    return answers


def match_answers(answers: dict[tuple, RecordedAnswer], rows: list[dict], system_prompt: str | None,
                  where: str) -> list[RecordedAnswer]:
    """The recorded answer of each test row, in the rows' order.

    Args:
        answers: `read_recorded_answers`' output.
        rows: Test rows (prepared rows, or `Example.to_row()` dicts).
        system_prompt: The YAML's system prompt (a row's own wins), part of each row's input.
        where: The config key that names the file, for the message.

    Raises:
        DataError: Some test rows have no recorded answer (the message names how many and the first ones).
    """
    keys = [Example.from_row(row).input_key(system_prompt) for row in rows]
    missing = [row.get("source") or f"test row {index}" for index, (row, key) in enumerate(zip(rows, keys))
               if key not in answers]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{where}: no recorded answer for {len(missing)} of the {len(rows)} test rows: {shown}"
                        " (one line per test row: its input with the model's answer)")
    return [answers[key] for key in keys]


def recorded_generations(answers: list[RecordedAnswer]) -> list[Generation]:
    """Recorded answers as generations: the billed tokens as the token counts, the recorded latency (else 0)."""
    return [Generation(text=a.text, new_tokens=a.completion_tokens or 0, prompt_tokens=a.prompt_tokens or 0,
                       latency_s=a.latency_s or 0.0, hit_cap=False) for a in answers]


def usage_recorded(answers: list[RecordedAnswer]) -> bool:
    """Whether every answer says what it was billed (else no token counts or costs are reported for it)."""
    return all(a.prompt_tokens is not None and a.completion_tokens is not None for a in answers)


def check_recorded(entries: list[RecordedBaseline], data: DataConfig, test_rows: list[Example]) -> None:
    """Each recorded-answers file readable and covering these test rows (the check before a run).

    Raises:
        DataError: One line naming the key, the file and the rows without an answer.
    """
    rows = [example.to_row() for example in test_rows]
    for index, entry in enumerate(entries):
        where = f"baselines.recorded[{index}].answers_file ({entry.answers_file})"
        match_answers(read_recorded_answers(entry.answers_file, data), rows, data.system_prompt, where)

