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


def _head_preferring(model, token_id: int) -> None:
    """Give the model a head whose only preference is one token: greedy decoding then always picks it."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head


def test_stops_at_end_of_turn(tiny_model_dir, tokenizer):
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    _head_preferring(model, tokenizer.convert_tokens_to_ids("<|im_end|>"))  # the answer must stop at once
    [result] = generate(model, tokenizer, [format_prompt(tokenizer, "hi", "x")], max_new_tokens=10)
    assert result.new_tokens == 1 and result.text == "" and not result.hit_cap


def test_an_answer_that_never_ends_is_marked_as_stopped_by_the_cap(tiny_model_dir, tokenizer):
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    _head_preferring(model, tokenizer("a", add_special_tokens=False)["input_ids"][0])
    prompts = [format_prompt(tokenizer, "hi", "x"), format_prompt(tokenizer, "a longer question here", "x")]
    results = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=7)
    assert all(result.hit_cap and result.new_tokens == 7 for result in results)


def test_shared_prefix_is_computed_once_and_answers_are_unchanged(tiny_model_dir, tokenizer, support_rows):
    """Few-shot prompts share the system prompt and the examples: that prefix runs once, and every
    answer equals the one generated from the whole prompt (rows of different lengths pad in the middle)."""
    from llm_lora.evaluation import evaluation_prompts
    from llm_lora.generation import MIN_SHARED_PREFIX, shared_prefix_length

    torch.manual_seed(0)
    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    rows = support_rows["test"][:7]
    prompts = evaluation_prompts(tokenizer, rows, "Extract JSON.", few_shot=support_rows["train"][:2])
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    assert len({len(ids) for ids in encoded}) > 1
    prefix = shared_prefix_length(encoded)
    assert prefix >= MIN_SHARED_PREFIX and all(prefix < len(ids) for ids in encoded)

    lengths: list[int] = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        reused = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=12)
        reused_lengths, lengths[:] = list(lengths), []
        whole = generate(model, tokenizer, prompts, batch_size=3, max_new_tokens=12, reuse_prefix=False)
    finally:
        hook.remove()
    assert [g.text for g in reused] == [g.text for g in whole]
    assert [g.new_tokens for g in reused] == [g.new_tokens for g in whole]
    assert [g.prompt_tokens for g in reused] == [len(ids) for ids in encoded]
    # The prefix ran once (the first forward), then each batch's first forward ran only its own tokens.
    assert reused_lengths[0] == prefix
    assert max(reused_lengths[1:]) == max(len(ids) for ids in encoded) - prefix
    assert max(lengths) == max(len(ids) for ids in encoded)


def test_prompts_without_a_shared_prefix_take_the_plain_path(tiny_model_dir, tokenizer):
    from llm_lora.generation import shared_prefix_length

    model = load_model(ModelConfig(name=str(tiny_model_dir)))
    prompts = ["alpha beta gamma", "delta epsilon"]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    assert shared_prefix_length(encoded) == 0
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps a token of its own
    results = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=4)
    assert [g.prompt_tokens for g in results] == [len(ids) for ids in encoded]
