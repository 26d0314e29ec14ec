"""The one formatting function shared by training, evaluation and inference.

Training, evaluation and inference all call `format_prompt`, so the text the
model sees at inference is byte-for-byte the prompt it was trained on.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Used only for tokenizers without a chat template (base models such as phi-2).
PLAIN_TEMPLATE = "{system}### Input:\n{prompt}\n\n### Response:\n"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def build_messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The chat messages for one input: an optional system turn, then the user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return messages


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system_prompt: str | None = None) -> str:
    """Render one input as the text the model continues with its answer.

    Args:
        tokenizer: The base model's tokenizer (its chat template decides the layout).
        prompt: The user input (for the shipped task, the email).
        system_prompt: Instructions placed before the input.

    Returns:
        The prompt text, ending where the assistant's answer begins. It already
        holds any BOS token, so tokenize it with `add_special_tokens=False`.
    """
    if has_chat_template(tokenizer):
        # An explicit empty system turn is not sent when no system prompt is set:
        # the template may then add its own default, which is the model's usual behaviour.
        return tokenizer.apply_chat_template(
            build_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True
        )
    system = f"{system_prompt}\n\n" if system_prompt else ""
    bos = tokenizer.bos_token or ""
    return bos + PLAIN_TEMPLATE.format(system=system, prompt=prompt)


def end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """The token that ends an assistant answer: trained, and where generation stops.

    For chat templates it is read off the template itself (ChatML's
    `<|im_end|>`, Llama 3's `<|eot_id|>`), which is not always `eos_token`.
    """
    if has_chat_template(tokenizer):
        marker = "\x00ANSWER\x00"
        messages = build_messages("x", None)
        prefix = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": marker}], tokenize=False
        )
        tail = full[full.find(marker) + len(marker) :].strip() if full.startswith(prefix) else ""
        # The tail is the end-of-turn token, maybe followed by a newline or a next-turn marker.
        for token in tokenizer.all_special_tokens:
            if tail.startswith(token):
                return token
    return tokenizer.eos_token


def format_completion(tokenizer: PreTrainedTokenizerBase, completion: str) -> str:
    """The answer as trained: the completion followed by the end-of-turn token."""
    return completion + end_of_turn(tokenizer)
