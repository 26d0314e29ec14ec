"""The one formatting function shared by training, evaluation and inference.

Training renders an example with `format_segments`; evaluation and inference
render the same example's context with `format_prompt`. Both walk the same
chat-template calls, so the prompt the model sees at inference is byte for
byte the text it was trained to continue.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

# Used only for tokenizers without a chat template (base models such as phi-2).
PLAIN_TEMPLATE = "{system}### Input:\n{prompt}\n\n### Response:\n"

Turns = Sequence[tuple[str, str]]


class TemplateError(ValueError):
    """A chat template that rewrites earlier turns, so turns cannot be masked separately."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _turns(context: str | Turns) -> list[tuple[str, str]]:
    return [("user", context)] if isinstance(context, str) else list(context)


def build_messages(context: str | Turns, system_prompt: str | None) -> list[dict[str, str]]:
    """Chat messages: an optional system turn, then the context turns."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": role, "content": content} for role, content in _turns(context)]
    return messages


def _plain_prompt(
    tokenizer: PreTrainedTokenizerBase, context: str | Turns, system_prompt: str | None, template: str
) -> str:
    turns = _turns(context)
    # Earlier turns of a conversation are folded into the prompt as "role: text" lines.
    prompt = turns[0][1] if len(turns) == 1 else "\n\n".join(f"{role}: {text}" for role, text in turns)
    system = f"{system_prompt}\n\n" if system_prompt else ""
    return (tokenizer.bos_token or "") + template.format(system=system, prompt=prompt)


def with_examples(context: str | Turns, examples: Sequence[tuple[str | Turns, str]]) -> list[tuple[str, str]]:
    """Put solved examples before an input as earlier user/assistant turns (a few-shot prompt).

    The result is an ordinary conversation, so `format_prompt` renders it with the
    model's own chat template, as it renders any multi-turn row.

    Args:
        context: The input, or the conversation so far ending with a user turn.
        examples: (input or turns, answer) pairs, shown in this order.

    Returns:
        The turns: each example's input and answer, then the context.
    """
    turns: list[tuple[str, str]] = []
    for example_context, answer in examples:
        turns += [*_turns(example_context), ("assistant", answer)]
    return turns + _turns(context)


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    context: str | Turns,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
) -> str:
    """Render an input as the text the model continues with its answer.

    Args:
        tokenizer: The base model's tokenizer (its chat template decides the layout).
        context: The user input, or the conversation so far as (role, text) turns
            ending with a user turn.
        system_prompt: Instructions placed before the input.
        plain_template: Layout for tokenizers without a chat template.

    Returns:
        The prompt text, ending where the assistant's answer begins. It already
        holds any BOS token, so tokenize it with `add_special_tokens=False`.
    """
    if has_chat_template(tokenizer):
        # With no system prompt the template may add its own default: the model's usual behaviour.
        return tokenizer.apply_chat_template(
            build_messages(context, system_prompt), tokenize=False, add_generation_prompt=True
        )
    return _plain_prompt(tokenizer, context, system_prompt, plain_template)


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


def format_segments(
    tokenizer: PreTrainedTokenizerBase,
    context: str | Turns,
    completion: str,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
    loss_on: str = "completion",
) -> list[tuple[str, bool]]:
    """Render a whole example as text pieces, each marked trained or not.

    The pieces concatenate to the training text. The last piece is the answer
    plus end-of-turn; everything before it equals `format_prompt(context)`.

    Args:
        tokenizer: The base model's tokenizer.
        context: The input or the conversation before the answer.
        completion: The final assistant answer.
        system_prompt: Instructions placed before the input.
        plain_template: Layout for tokenizers without a chat template.
        loss_on: "completion" (final answer only), "assistant_turns" (every
            assistant turn; chat templates only) or "all" (every token).

    Returns:
        (text, carries_loss) pairs.

    Raises:
        TemplateError: The chat template renders earlier turns differently
            once later turns follow, so per-turn masks would be wrong.
    """
    turns = _turns(context)
    everything = loss_on == "all"
    if not has_chat_template(tokenizer):
        prompt = _plain_prompt(tokenizer, turns, system_prompt, plain_template)
        return [(prompt, everything), (format_completion(tokenizer, completion), True)]
    eot = end_of_turn(tokenizer)
    messages = build_messages(turns, system_prompt)
    answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    segments: list[tuple[str, bool]] = []
    done = ""
    for index in [*answers, len(messages)]:
        prefix = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        if not prefix.startswith(done):
            raise TemplateError(
                "the chat template changes earlier turns when later ones follow; use data.loss_on: completion "
                "with single-turn rows, or a model whose template appends turns"
            )
        segments.append((prefix[len(done) :], everything))
        final = index == len(messages)
        content = completion if final else messages[index]["content"]
        trained = final or everything or loss_on == "assistant_turns"
        segments.append((content + eot, trained))
        done = prefix + content + eot
    return [(text, trained) for text, trained in segments if text]
