"""Function calls in prompts and answers: the model's own chat template where it knows tools, else one fallback.

A chat template "knows tools" when it renders all three of OpenAI's parts: the functions
offered (`apply_chat_template(tools=...)`), an assistant message's `tool_calls`, and a
`tool` message's result. Then the template renders them, as the model was trained by its
makers. Any other template (SmolLM2's, plain ChatML, a base model's plain layout) gets
the fallback rendering, written into ordinary system, user and assistant text:

- the functions go after the system prompt, one compact JSON object per function between
  `<tools>` and `</tools>`, with one line saying how to call them;
- a call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (compact JSON, the
  arguments in the row's order), one block per call, after any text the message has;
- a tool's result is a user turn `<tool_response>...</tool_response>` (consecutive results
  in one turn, one block each).

This is the layout of Hermes' and Qwen's templates, so an answer reads back with the same
rule whichever rendering wrote it (`metrics/tool_calls`). Training, evaluation, batch
inference, export and serving all go through `llm_lora.prompt_formatting`, which uses this
module, so a prompt with tools is the same text everywhere.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the fallback rendering is read where no model is loaded (checks, reports)
    from transformers import PreTrainedTokenizerBase

TOOLS_OPEN, TOOLS_CLOSE = "<tools>", "</tools>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
HOW_TO_CALL = (f'To call a function, answer with {CALL_OPEN}{{"name":...,"arguments":{{...}}}}{CALL_CLOSE},'
               " one block per call.")

_PROBE = "llm_lora_probe_fn"
_PROBE_RESULT = "llm_lora_probe_result"
_native: dict[str, bool] = {}


def _compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tools_text(tools: list[dict]) -> str:
    """The functions offered, as the fallback writes them after the system prompt."""
    lines = "\n".join(_compact(tool.get("function", tool)) for tool in tools)
    return f"You can call these functions:\n{TOOLS_OPEN}\n{lines}\n{TOOLS_CLOSE}\n{HOW_TO_CALL}"


def calls_text(calls: list[dict], content: str = "") -> str:
    """An assistant message's calls (each {"name", "arguments"}), after its text, as the fallback writes them."""
    blocks = "\n".join(f"{CALL_OPEN}{_compact({'name': c['name'], 'arguments': c['arguments']})}{CALL_CLOSE}"
                       for c in calls)
    return f"{content}\n{blocks}" if content else blocks


def results_text(results: list[str]) -> str:
    """Tool results, as the user turn the fallback writes for them."""
    return "\n".join(f"{RESULT_OPEN}{result}{RESULT_CLOSE}" for result in results)


def knows_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template renders tools, calls and tool results itself."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return False
    if template not in _native:
        tool = {"type": "function", "function": {"name": _PROBE, "description": "probe",
                                                 "parameters": {"type": "object", "properties": {}}}}
        call = {"id": "call_0", "type": "function", "function": {"name": _PROBE + "_call", "arguments": {}}}
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_0", "content": _PROBE_RESULT}]
        try:
            text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that fails on these parts does not know them
            text = ""
        _native[template] = all(mark in text for mark in (_PROBE, _PROBE + "_call", _PROBE_RESULT))
    return _native[template]


def native_message(message: dict) -> dict:
    """A canonical message in the form chat templates read (transformers' tool-use convention)."""
    out = {"role": message["role"]}
    if message.get("content") or not message.get("tool_calls"):
        out["content"] = message.get("content", "")
    if message.get("tool_calls"):
        out["tool_calls"] = [{"id": call.get("id"), "type": "function",
                              "function": {"name": call["name"], "arguments": call["arguments"]}}
                             for call in message["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None and message["role"] == "tool":
            out[key] = message[key]
    return out


def fallback_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Canonical messages as plain system/user/assistant text in the fallback rendering."""
    out: list[dict] = []
    results: list[str] = []

    def flush() -> None:
        if results:
            out.append({"role": "user", "content": results_text(results)})
            results.clear()

    for message in messages:
        role, content = message["role"], message.get("content", "")
        if role == "tool":
            results.append(content)
            continue
        flush()
        if role == "assistant" and message.get("tool_calls"):
            content = calls_text(message["tool_calls"], content)
        out.append({"role": role, "content": content})
    flush()
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{tools_text(tools)}"}
        else:
            out.insert(0, {"role": "system", "content": tools_text(tools)})
    return out


def call_grammar(tools: list[dict], middle: str, suffix: str, name: str | None = None) -> str:
    """llama.cpp's GBNF grammar for the rest of a call once its prefill is written: one of the functions (or
    `name`) by name, its arguments as its parameters' JSON Schema allows, and the rendering's suffix.

    Raises:
        ValueError: A parameters schema llama.cpp's converter cannot turn into a grammar.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    choices = []
    for index, tool in enumerate(tools):
        function = tool.get("function", tool)
        if name is not None and function["name"] != name:
            continue
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        try:
            rule = converter.visit(converter.resolve_refs(schema, "tools"), f"f{index}-arguments")
        except Exception as error:  # the converter raises several kinds for schemas it does not handle
            raise ValueError(f"tools[{index}].function.parameters: {error}") from None
        lead = "" if name is not None else converter._format_literal(function["name"] + middle) + " "
        choices.append(f"{lead}{rule}")
    tail = f" {converter._format_literal(suffix)}" if suffix else ""
    converter._add_rule("root", f"({' | '.join(choices)}){tail}")
    return converter.format_grammar()
