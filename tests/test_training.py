"""LoRA training on a tiny random model: only adapters train, loss falls, plain PEFT reloads it."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_lora.config import load_config
from llm_lora.data_preparation import prepare_splits
from llm_lora.model_loading import load_model
from llm_lora.training import build_lora_config, load_adapter, train_lora
from tests.conftest import write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tokenizer, support_rows):
    root = tmp_path_factory.mktemp("train")
    data_dir = root / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        rows = support_rows[split][:32]
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = write_config(
        root / "run.yaml", tiny_model_dir, data_dir,
        training={"max_steps": 12, "batch_size": 8, "learning_rate": 5e-3, "precision": "fp32", "logging_steps": 1},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
    )
    config = load_config(path)
    prepared = prepare_splits(config.data, tokenizer)
    result = train_lora(config, prepared.splits["train"], prepared.splits["validation"], root / "out", tokenizer)
    return config, prepared, result


def test_loss_falls_and_metrics_are_reported(trained):
    _, _, result = trained
    losses = [record["loss"] for record in result.loss_history if "loss" in record]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.metrics["optimizer_steps"] == 12
    assert result.metrics["train_tokens_per_s"] > 0
    assert result.metrics["validation_loss"] > 0
    assert 0 < result.metrics["trainable_parameters"] < result.metrics["total_parameters"]


def test_adapter_files_are_small_and_plain_peft_loads_them(trained, tiny_model_dir):
    config, _, result = trained
    files = {path.name for path in result.adapter_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, str(result.adapter_dir))
    ids = torch.tensor([[1, 2, 3, 4]])
    ours = load_adapter(load_model(config.model), result.adapter_dir)
    assert torch.allclose(tuned(ids).logits, ours(ids).logits, atol=1e-5)
    # The adapter changed the model: it is not the base model any more.
    assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits, ours(ids).logits)


def test_all_linear_targets_every_projection(trained):
    config, _, result = trained
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }
    assert build_lora_config(config.lora).r == 4


def test_packed_and_padded_batches_give_the_same_loss(tiny_model_dir, tokenizer, support_rows):
    from llm_lora.config import ModelConfig
    from llm_lora.data_formats import to_example
    from llm_lora.tokenization import tokenize_examples
    from llm_lora.training import build_collator

    model = load_model(ModelConfig(name=str(tiny_model_dir), attn_implementation="sdpa"))
    examples = [to_example(row) for row in support_rows["train"][:4]]
    rows = tokenize_examples(examples, tokenizer, "Extract JSON.", 256).rows
    features = [{key: row[key] for key in ("input_ids", "attention_mask", "labels")} for row in rows]
    padded = build_collator(tokenizer, packing=False)(features)
    packed = build_collator(tokenizer, packing=True)(features)
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(set(lengths)) > 1  # rows of different lengths, so the padded batch has padding
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    # As in training (train_lora turns the cache off): with a KV cache, transformers skips packed-row masking.
    with torch.no_grad():
        padded_out = model(**padded, use_cache=False)
        packed_out = model(**packed, use_cache=False)
        crossed = {key: value for key, value in packed.items() if key != "position_ids"}
        crossed_logits = model(**crossed, use_cache=False).logits
    assert torch.allclose(padded_out.loss, packed_out.loss, rtol=1e-4), (padded_out.loss, packed_out.loss)
    # Token by token, each packed row sees only itself: its logits equal the padded batch's.
    start = 0
    for index, length in enumerate(lengths):
        packed_row = packed_out.logits[0, start : start + length]
        assert torch.allclose(packed_row, padded_out.logits[index, :length], atol=1e-4)
        if index > 0:  # without restarting positions, later rows would attend to earlier ones
            assert not torch.allclose(crossed_logits[0, start : start + length], packed_row, atol=1e-4)
        start += length
