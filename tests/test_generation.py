"""Batched greedy generation equals one-at-a-time generation; answers stop at end-of-turn."""

import torch

from llm_lora.config import ModelConfig
from llm_lora.generation import generate
from llm_lora.model_loading import load_model
from llm_lora.prompt_formatting import format_prompt


def test_batched_equals_single(tiny_model_dir, tokenizer, support_rows):
    torch.manual_seed(0)
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    prompts = [format_prompt(tokenizer, row["prompt"], "Extract JSON.") for row in support_rows["test"][:6]]
    batched = generate(model, tokenizer, prompts, batch_size=6, max_new_tokens=12)
    single = [generate(model, tokenizer, [prompt], batch_size=1, max_new_tokens=12)[0] for prompt in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(1 <= g.new_tokens <= 12 and g.prompt_tokens > 20 for g in batched)
    assert tokenizer.padding_side == "right"  # restored after generation


def test_stops_at_end_of_turn(tiny_model_dir, tokenizer):
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # A head whose only preference is the end-of-turn token: the answer must stop at once.
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[end] = 10.0
    model.lm_head = head
    [result] = generate(model, tokenizer, [format_prompt(tokenizer, "hi", "x")], max_new_tokens=10)
    assert result.new_tokens == 1 and result.text == ""
