"""One formatting function for training, evaluation and inference."""

from transformers import AutoTokenizer

from llm_lora.prompt_formatting import end_of_turn, format_completion, format_prompt

SYSTEM = "Extract the fields as JSON."


def test_chat_template_with_system_prompt(tokenizer):
    text = format_prompt(tokenizer, "My order ORD-123456 broke.", SYSTEM)
    assert text == (
        "<|im_start|>system\nExtract the fields as JSON.<|im_end|>\n"
        "<|im_start|>user\nMy order ORD-123456 broke.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_system_prompt_the_template_default_applies(tokenizer):
    # SmolLM2's template inserts its own system prompt: tokens paid on every example.
    assert "You are a helpful AI assistant" in format_prompt(tokenizer, "hi", None)


def test_end_of_turn_is_read_off_the_template(tokenizer):
    assert end_of_turn(tokenizer) == "<|im_end|>"
    assert format_completion(tokenizer, '{"a":1}') == '{"a":1}<|im_end|>'


def test_plain_template_when_tokenizer_has_none(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    plain = AutoTokenizer.from_pretrained(tmp_path)
    plain.chat_template = None
    text = format_prompt(plain, "Email body", SYSTEM)
    assert text == f"{plain.bos_token}{SYSTEM}\n\n### Input:\nEmail body\n\n### Response:\n"
    assert end_of_turn(plain) == plain.eos_token
