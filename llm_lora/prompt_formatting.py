"""The one formatting function shared by training, evaluation and inference.

Training renders an example with `format_segments`; evaluation and inference
render the same example's context with `format_prompt`. Both walk the same
chat-template calls, so the prompt the model sees at inference is byte for
byte the text it was trained to continue.

Rows with tools (OpenAI's function calling) go the same way: the functions, the
assistant's calls and the tools' results are rendered by the model's own chat
template where it knows tools, else by the one fallback rendering of
`llm_lora.tool_calls`, for every caller alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_lora.data_formats import Turn, make_turn, turn_meta
from llm_lora.tool_calls import fallback_messages, knows_tools, native_message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Used only for tokenizers without a chat template (base models such as phi-2).
PLAIN_TEMPLATE = "{system}### Input:\n{prompt}\n\n### Response:\n"

Turns = Sequence[Turn]
Tools = list[dict] | str | None  # OpenAI's tools list, or its JSON text (an example's `tools`)


class TemplateError(ValueError):
    """A chat template that rewrites earlier turns, so turns cannot be masked separately."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _turns(context: str | Turns) -> list[Turn]:
    return [("user", context)] if isinstance(context, str) else [tuple(turn) for turn in context]


def _tool_list(tools: Tools) -> list[dict] | None:
    if isinstance(tools, str):
        return json.loads(tools) if tools else None
    return tools or None


def build_messages(context: str | Turns, system_prompt: str | None) -> list[dict]:
    """Chat messages: an optional system turn, then the context turns (with their calls, results and weights)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": turn[0], "content": turn[1], **turn_meta(turn)} for turn in _turns(context)]
    return messages


def _rich(messages: list[dict], tools: list[dict] | None) -> bool:
    return bool(tools) or any(message.get("tool_calls") or message["role"] == "tool" for message in messages)


def template_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list[dict] | None
) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools argument) handed to the chat template, or to the plain layout.

    Plain text chats are {"role", "content"} only, as they always were. With tools, calls or tool
    results: the template's own rendering where it knows tools, else the fallback's plain text.
    Assistant messages stay one for one, in order, either way.
    """
    if not _rich(messages, tools):
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    if has_chat_template(tokenizer) and knows_tools(tokenizer):
        return [native_message(m) for m in messages], tools
    return fallback_messages(messages, tools), None


def _apply(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list[dict] | None,
           add_generation_prompt: bool) -> str:
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **extra)


def _plain_prompt(
    tokenizer: PreTrainedTokenizerBase, context: str | Turns, system_prompt: str | None, template: str
) -> str:
    turns = _turns(context)
    # Earlier turns of a conversation are folded into the prompt as "role: text" lines.
    prompt = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{turn[0]}: {turn[1]}" for turn in turns)
    system = f"{system_prompt}\n\n" if system_prompt else ""
    return (tokenizer.bos_token or "") + template.format(system=system, prompt=prompt)


def _plain_from_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str) -> str:
    """The plain layout of template messages (a leading system message is the layout's {system})."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = [(m["role"], m["content"]) for m in messages[1 if system is not None else 0:]]
    return _plain_prompt(tokenizer, turns, system, template)


def with_examples(context: str | Turns, examples: Sequence[tuple[str | Turns, str | Turn]]) -> list[Turn]:
    """Put solved examples before an input as earlier user/assistant turns (a few-shot prompt).

    The result is an ordinary conversation, so `format_prompt` renders it with the
    model's own chat template, as it renders any multi-turn row.

    Args:
        context: The input, or the conversation so far ending with a user turn.
        examples: (input or turns, answer) pairs, shown in this order; an answer is its text, or its
            assistant turn (an answer that calls functions).

    Returns:
        The turns: each example's input and answer, then the context.
    """
    turns: list[Turn] = []
    for example_context, answer in examples:
        turns += [*_turns(example_context), answer if isinstance(answer, tuple) else ("assistant", answer)]
    return turns + _turns(context)


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    context: str | Turns,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
    tools: Tools = None,
) -> str:
    """Render an input as the text the model continues with its answer.

    Args:
        tokenizer: The base model's tokenizer (its chat template decides the layout).
        context: The user input, or the conversation so far as turns ending with a user
            (or tool) turn.
        system_prompt: Instructions placed before the input.
        plain_template: Layout for tokenizers without a chat template.
        tools: The functions the model may call (OpenAI's `tools` list, or its JSON text).

    Returns:
        The prompt text, ending where the assistant's answer begins. It already
        holds any BOS token, so tokenize it with `add_special_tokens=False`.
    """
    messages, tool_list = template_messages(tokenizer, build_messages(context, system_prompt), _tool_list(tools))
    if has_chat_template(tokenizer):
        # With no system prompt the template may add its own default: the model's usual behaviour.
        return _apply(tokenizer, messages, tool_list, add_generation_prompt=True)
    return _plain_from_messages(tokenizer, messages, plain_template)


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token that ends an assistant answer: trained, and where generation stops.

    For chat templates it is read off the template itself (ChatML's
    `<|im_end|>`, Llama 3's `<|eot_id|>`), which is not always `eos_token`.
    """
    if has_chat_template(tokenizer):
        marker = "\x00ANSWER\x00"
        messages = build_messages("x", None)
        prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": marker}], tokenize=False)
        tail = full[full.find(marker) + len(marker) :].strip() if full.startswith(prefix) else ""
        # The tail is the end-of-turn token, maybe followed by a newline or a next-turn marker.
        for token in tokenizer.all_special_tokens:
            if tail.startswith(token):
                return token
    return tokenizer.eos_token


def format_completion(tokenizer: PreTrainedTokenizerBase, completion: str) -> str:
    """The answer as trained: the completion followed by the end-of-turn token."""
    return completion + end_of_turn(tokenizer)


def trained_answers(turns: Turns, loss_on: str = "auto") -> list[bool]:
    """Which assistant turns carry loss, in order (the last one is the final answer).

    OpenAI's rule: every assistant message whose `weight` is 1 (the default) is trained, one with
    weight 0 is context only; rows that carry any weight follow their weights whatever `loss_on`
    says. Other rows follow `loss_on`: "auto", "assistant_turns" and "all" train every assistant
    turn (OpenAI's default), "completion" the final answer only.
    """
    answers = [turn_meta(turn) for turn in turns if turn[0] == "assistant"]
    if any("weight" in meta for meta in answers):
        return [meta.get("weight", 1) != 0 for meta in answers]
    return [loss_on != "completion" or index == len(answers) - 1 for index in range(len(answers))]


def format_segments(
    tokenizer: PreTrainedTokenizerBase,
    context: str | Turns,
    completion: str | Turn,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
    loss_on: str = "auto",
    tools: Tools = None,
) -> list[tuple[str, bool]]:
    """Render a whole example as text pieces, each marked trained or not.

    The pieces concatenate to the training text. The last piece is the answer
    plus end-of-turn; everything before it equals `format_prompt(context)`.

    Args:
        tokenizer: The base model's tokenizer.
        context: The input or the conversation before the answer.
        completion: The final assistant answer: its text, or its turn (calls, weight).
        system_prompt: Instructions placed before the input.
        plain_template: Layout for tokenizers without a chat template.
        loss_on: "auto" (every assistant turn), "completion" (final answer only),
            "assistant_turns" (every assistant turn; chat templates only) or "all"
            (every token); rows with weights follow their weights (`trained_answers`).
        tools: The functions the row offers.

    Returns:
        (text, carries_loss) pairs.

    Raises:
        TemplateError: The chat template renders earlier turns differently
            once later turns follow, so per-turn masks would be wrong.
    """
    answer = completion if isinstance(completion, tuple) else ("assistant", completion)
    turns = [*_turns(context), answer]
    trained = trained_answers(turns, loss_on)
    weighted = any("weight" in turn_meta(turn) for turn in turns if turn[0] == "assistant")
    everything = loss_on == "all" and not weighted
    messages, tool_list = template_messages(tokenizer, build_messages(turns, system_prompt), _tool_list(tools))
    if not has_chat_template(tokenizer):
        prompt = _plain_from_messages(tokenizer, messages[:-1], plain_template)
        return [(prompt, everything), (format_completion(tokenizer, messages[-1]["content"]), trained[-1])]
    eot = end_of_turn(tokenizer)
    native = tool_list is not None or any("tool_calls" in message for message in messages)
    answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, carries_loss in zip(answers, trained):
        prefix = _apply(tokenizer, messages[:index], tool_list, add_generation_prompt=True)
        if not prefix.startswith(done):
            raise TemplateError(
                "the chat template changes earlier turns when later ones follow; use data.loss_on: completion "
                "with single-turn rows, or a model whose template appends turns"
            )
        segments.append((prefix[len(done) :], everything))
        if native and messages[index].get("tool_calls"):
            text = _rendered_answer(tokenizer, messages[: index + 1], tool_list, prefix, eot)
        else:
            text = messages[index]["content"] + eot
        segments.append((text, carries_loss or everything))
        done = prefix + text
    return [(text, trained) for text, trained in segments if text]


def _rendered_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list[dict] | None,
                     prefix: str, eot: str) -> str:
    """An assistant turn as the model's own template writes it (its calls), up to and with its end-of-turn."""
    full = _apply(tokenizer, messages, tools, add_generation_prompt=False)
    body = full[len(prefix):] if full.startswith(prefix) else ""
    end = body.rfind(eot)
    if end < 0:
        raise TemplateError("the chat template writes a tool-call turn that does not start after the prompt or"
                            f" end with {eot!r}; its calls cannot be trained as an answer")
    return body[: end + len(eot)]


_PROBE_FUNCTION = "llm_lora_probe_function"
_PROBE_ARGUMENT = "llm_lora_probe_argument"


@dataclass(frozen=True)
class CallLayout:
    """How the prompt's model writes one call as its answer: prefix, name, middle, arguments, suffix.

    For the fallback rendering: `<tool_call>{"name":"` + name + `","arguments":` + {...} + `}</tool_call>`.
    """

    prefix: str
    middle: str
    suffix: str

    def prefill(self, name: str | None = None) -> str:
        """The start of an answer that is a call (of `name`, up to its arguments, when given)."""
        return self.prefix if name is None else self.prefix + name + self.middle


def call_layout(
    tokenizer: PreTrainedTokenizerBase,
    context: str | Turns,
    system_prompt: str | None,
    tools: Tools,
    plain_template: str = PLAIN_TEMPLATE,
) -> CallLayout:
    """The layout of a call in the rendering this prompt's model was trained on, read off a probe call
    rendered by `format_segments` (the same text the model was trained to write there).

    Raises:
        TemplateError: The template writes calls in a form whose name or arguments cannot be found.
    """
    probe = make_turn("assistant", "", tool_calls=[
        {"id": "call_probe", "name": _PROBE_FUNCTION, "arguments": {_PROBE_ARGUMENT: 1}}])
    answer = format_segments(tokenizer, context, probe, system_prompt, plain_template, "auto", tools)[-1][0]
    eot = end_of_turn(tokenizer)
    answer = answer[: -len(eot)] if answer.endswith(eot) else answer
    name_at = answer.find(_PROBE_FUNCTION)
    argument_at = answer.find(_PROBE_ARGUMENT, max(name_at, 0))
    opening = answer.rfind("{", name_at, argument_at) if name_at >= 0 and argument_at >= 0 else -1
    closing = answer.find("}", argument_at) if argument_at >= 0 else -1
    if opening < 0 or closing < 0:
        raise TemplateError("the chat template writes calls in a form whose name and arguments cannot be found")
    return CallLayout(prefix=answer[:name_at], middle=answer[name_at + len(_PROBE_FUNCTION):opening],
                      suffix=answer[closing + 1:])
