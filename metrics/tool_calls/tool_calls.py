"""Scoring of function calls written by a model against the calls expected of it.

`evaluate` copies this file into its own module cache and imports it there, so it
imports nothing from the project; `llm_lora.metrics` imports this file's rules for
per-example scoring and for reading calls out of served answers, so all use one copy.
"""

import json
import re
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = """
Scores model answers that should be function calls. An answer's calls are read from
`<tool_call>...</tool_call>` blocks (the project's fallback rendering and the Hermes/Qwen
one), from a `[TOOL_CALLS]` list (Mistral's), or from an answer that is wholly one JSON
call object or a list of them (Llama 3.1's); a call is an object with a string `name` and
`arguments` (or `parameters`) that is a JSON object or a JSON string of one. Arguments are
compared as parsed JSON: numbers by value, true never equals 1, strings exactly.
Calls of one answer are compared as a set (parallel calls may come in any order).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): Raw model outputs.
    references (list of str): The expected calls of each answer, as JSON text of a list of
        {"name": ..., "arguments": {...}} objects.

Returns:
    tool_call_accuracy (float): Share of answers whose calls equal the expected ones
        (same functions, same arguments, no call more or less).
    tool_name_accuracy (float): Share of answers that call exactly the expected functions.
    tool_argument_accuracy (float): Share of arguments right, over the arguments of the
        expected calls and of the calls made (each call paired with an expected call of the
        same function; an unpaired call's arguments are all wrong). Left out when no call on
        either side has arguments.
    tool_call_parse_rate (float): Share of answers that read as calls at all.

Examples:
    >>> metric = evaluate.load("metrics/tool_calls")
    >>> metric.compute(predictions=['<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'],
    ...                references=['[{"name": "f", "arguments": {"a": 1.0}}]'])
    {'tool_call_accuracy': 1.0, 'tool_name_accuracy': 1.0, 'tool_argument_accuracy': 1.0, 'tool_call_parse_rate': 1.0}
"""

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL | re.IGNORECASE)
_MISTRAL = "[TOOL_CALLS]"


def arguments_value(arguments):
    """Arguments as a JSON object: an object as is, a JSON string of an object parsed (once more if it
    holds a JSON string again, as some recorded files do); anything else None."""
    for _ in range(3):
        if isinstance(arguments, dict):
            return arguments
        if not isinstance(arguments, str):
            return None
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    return arguments if isinstance(arguments, dict) else None


def _call(value):
    """One {"name", "arguments"} call from a decoded object, or None when it is not a call."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        return None
    if "function" in value and isinstance(value["function"], dict):  # OpenAI's {"type": "function", "function": {...}}
        return _call(value["function"])
    raw = value.get("arguments", value.get("parameters", {}))
    arguments = arguments_value(raw)
    if arguments is None:
        return None
    return {"name": value["name"].strip(), "arguments": arguments}


def _calls(value):
    """The calls of a decoded JSON value: one call object or a non-empty list of them; else None."""
    items = value if isinstance(value, list) else [value]
    calls = [_call(item) for item in items]
    return calls if calls and all(call is not None for call in calls) else None


def _decode(text):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_tool_calls(text):
    """The function calls an answer makes, or None when it makes none that parse.

    Args:
        text: Raw model output.

    Returns:
        A list of {"name": str, "arguments": dict}, in the answer's order; None when the answer
        holds no call, or holds a call block that does not parse (a broken call is no call).
    """
    if not isinstance(text, str):
        return None
    blocks = _BLOCK.findall(text)
    if blocks:
        calls = [_calls(_decode(block)) for block in blocks]
        if any(call is None for call in calls):
            return None
        return [call for block_calls in calls for call in block_calls]
    stripped = text.strip()
    if stripped.startswith(_MISTRAL):
        return _calls(_decode(stripped[len(_MISTRAL):].strip()))
    fenced = _FENCE.fullmatch(stripped)
    if fenced is not None:
        stripped = fenced.group(1)
    if not stripped.startswith(("{", "[")):
        return None
    return _calls(_decode(stripped))


def text_before_calls(text):
    """The prose an answer writes before its first call block (an assistant's content beside its calls)."""
    if not isinstance(text, str):
        return ""
    start = text.find("<tool_call>")
    return (text if start < 0 else text[:start]).strip()


def normalize_value(value):
    """A JSON value in the form used for comparison: numbers by value, booleans apart from numbers,
    objects by their keys regardless of order, lists in order."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((key, normalize_value(item)) for key, item in value.items())))
    if isinstance(value, list):
        return ("list", tuple(normalize_value(item) for item in value))
    return value


def call_key(call):
    """A hashable form of one call, equal for equal calls."""
    return (call["name"], normalize_value(call["arguments"]))


def _pairs(predicted, expected):
    """Each expected call with the made call it is judged against (same function, the exact call first), or None."""
    unused = list(range(len(predicted)))
    pairs = []
    for want in expected:
        same_name = [i for i in unused if predicted[i]["name"] == want["name"]]
        exact = [i for i in same_name if call_key(predicted[i]) == call_key(want)]
        pick = (exact or same_name or [None])[0]
        if pick is not None:
            unused.remove(pick)
        pairs.append((want, None if pick is None else predicted[pick]))
    return pairs, [predicted[i] for i in unused]


def score_calls(prediction, expected):
    """Score one answer against its expected calls.

    Args:
        prediction: Raw model output.
        expected: The expected calls, each {"name", "arguments"}.

    Returns:
        {"parses": bool, "calls_match": bool, "names_match": bool, "arguments_right": int,
        "arguments_total": int}.
    """
    predicted = parse_tool_calls(prediction)
    made = predicted or []
    pairs, extra = _pairs(made, expected)
    right = total = 0
    for want, got in pairs:
        if got is None:
            total += len(want["arguments"])
            continue
        keys = set(want["arguments"]) | set(got["arguments"])
        total += len(keys)
        right += sum(key in want["arguments"] and key in got["arguments"]
                     and normalize_value(want["arguments"][key]) == normalize_value(got["arguments"][key])
                     for key in keys)
    total += sum(len(call["arguments"]) for call in extra)
    return {
        "parses": predicted is not None,
        "calls_match": predicted is not None and Counter(map(call_key, made)) == Counter(map(call_key, expected)),
        "names_match": predicted is not None and Counter(c["name"] for c in made) == Counter(c["name"] for c in expected),
        "arguments_right": right,
        "arguments_total": total,
    }


def parse_reference(reference):
    """Expected calls from their JSON text.

    Raises:
        ValueError: When the text is not a non-empty list of calls.
    """
    calls = _calls(_decode(reference)) if isinstance(reference, str) else None
    if not calls:
        raise ValueError(f"Reference is not a list of calls: {reference!r}")
    return calls


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ToolCalls(evaluate.Metric):
    """Call accuracy, function-name accuracy, per-argument accuracy and parse rate of function calls."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("tool_calls needs at least one prediction/reference pair; got none.")
        if len(predictions) != len(references):
            raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
        scores = [score_calls(p, parse_reference(r)) for p, r in zip(predictions, references, strict=True)]
        count = len(scores)
        results = {
            "tool_call_accuracy": sum(s["calls_match"] for s in scores) / count,
            "tool_name_accuracy": sum(s["names_match"] for s in scores) / count,
        }
        total = sum(s["arguments_total"] for s in scores)
        if total:
            results["tool_argument_accuracy"] = sum(s["arguments_right"] for s in scores) / total
        results["tool_call_parse_rate"] = sum(s["parses"] for s in scores) / count
        return {key: float(value) for key, value in results.items()}
