"""training.chunked_loss, offload_activations and optimizer: the same training as the plain path, by other means."""

import json

import pytest
import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from llm_lora.config import LoraSettings, ModelConfig, RunConfig, load_config
from llm_lora.data_formats import to_example
from llm_lora.data_preparation import prepare_splits
from llm_lora.model_loading import load_model
from llm_lora.tokenization import tokenize_examples
from llm_lora.training import CompletionLossTrainer, attach_lora, build_collator, build_lora_config, train_lora
from llm_lora.training import chunked_loss
from llm_lora.training.trainer import _as_dataset, build_training_arguments
from tests.conftest import write_config


def _nudged_peft_model(base, **lora):
    model = get_peft_model(base, build_lora_config(LoraSettings(dropout=0.0, **lora)))
    model.config.use_cache = False
    with torch.no_grad():  # B starts at zero: nudge it so that every LoRA parameter gets a gradient
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    return model


def _batch(tokenizer, support_rows, packing):
    rows = tokenize_examples([to_example(row) for row in support_rows["train"][:4]], tokenizer, "Extract JSON.", 256).rows
    return build_collator(tokenizer, packing=packing)(
        [{key: row[key] for key in ("input_ids", "attention_mask", "labels")} for row in rows]
    )


def _loss_and_grads(trainer, model, batch, num_items):
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _tiny_phi(tokenizer, directory):
    """A 2-layer Phi: its output layer has a bias, which the chunked loss must add too."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(0)
    config = PhiConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    PhiForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("architecture, packing", [("llama", False), ("llama", True), ("phi", True)])
def test_chunked_loss_gives_the_plain_loss_and_gradients(tmp_path, monkeypatch, tiny_model_dir, tokenizer,
                                                         support_rows, architecture, packing):
    """Loss and every LoRA gradient equal the logits path's, with chunks of three positions (many chunks,
    the last one short); the output layer never runs on the training step and is back in place after it."""
    directory = tiny_model_dir if architecture == "llama" else _tiny_phi(tokenizer, tmp_path / "phi")
    torch.manual_seed(0)
    model = _nudged_peft_model(load_model(ModelConfig(name=str(directory), attn_implementation="sdpa")))
    head = chunked_loss.plain_output_head(model)
    assert head is not None and (head.bias is not None) == (architecture == "phi")
    monkeypatch.setattr(chunked_loss, "LOGITS_PER_CHUNK", 3 * head.out_features)
    batch = _batch(tokenizer, support_rows, packing)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled % 3 and labelled > 30  # several chunks, a short last one
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none")
    chunked = CompletionLossTrainer(model=model, args=args, chunked_loss=True)
    plain = CompletionLossTrainer(model=model, args=args)
    head_calls = []
    head.register_forward_hook(lambda *_: head_calls.append(1))
    model.train()
    for num_items in (None, torch.tensor(labelled + 7)):
        ours, our_grads = _loss_and_grads(chunked, model, batch, num_items)
        assert head_calls == []
        theirs, their_grads = _loss_and_grads(plain, model, batch, num_items)
        assert len(head_calls) == 1
        head_calls.clear()
        assert torch.allclose(ours, theirs, rtol=1e-5), (ours, theirs)
        assert our_grads.keys() == their_grads.keys() and len(our_grads) > 0
        for name, grad in our_grads.items():
            assert grad.abs().sum() > 0, name
            assert torch.allclose(grad, their_grads[name], rtol=1e-4, atol=1e-7), name
    assert model.get_base_model().get_output_embeddings() is head
    # Evaluation keeps the logits: the same loss as transformers' own Trainer computes.
    model.eval()
    with torch.no_grad():
        evaluated = chunked.compute_loss(model, dict(batch))
        reference = Trainer.compute_loss(plain, model, dict(batch))
    assert len(head_calls) == 2 and torch.allclose(evaluated, reference, rtol=1e-5)


def test_chunked_loss_leaves_an_adapted_output_layer_to_the_logits_path(tiny_model_dir):
    model = _nudged_peft_model(load_model(ModelConfig(name=str(tiny_model_dir))), target_modules=["q_proj", "lm_head"])
    assert chunked_loss.plain_output_head(model) is None
    plain = _nudged_peft_model(load_model(ModelConfig(name=str(tiny_model_dir))))
    assert chunked_loss.plain_output_head(plain) is plain.get_base_model().lm_head


def test_chunked_loss_offload_and_8bit_adamw_train_like_the_plain_settings(tmp_path, tiny_model_dir, tokenizer,
                                                                          support_rows):
    """Three steps with the levers on take the plain path's steps: the same losses and adapter. (bitsandbytes
    keeps 32-bit moments for tensors under 4,096 values, as all of this tiny model's are, so its AdamW
    follows torch's; offloading is a no-op on a CPU.)"""
    from safetensors.torch import load_file

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in support_rows[split][:8]))
    results = {}
    levers = {"chunked_loss": True, "offload_activations": True, "optimizer": "adamw_8bit"}
    for name, extra in (("plain", {}), ("levers", levers)):
        path = write_config(
            tmp_path / f"{name}.yaml", tiny_model_dir, data_dir,
            training={"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "precision": "fp32", "logging_steps": 1,
                      "gradient_checkpointing": True, "warmup_ratio": 0.0, **extra},
            lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        )
        config = load_config(path)
        prepared = prepare_splits(config.data, tokenizer)
        results[name] = train_lora(config, prepared.splits["train"], [], tmp_path / f"out-{name}", tokenizer)
    losses = {name: [r["loss"] for r in result.loss_history if "loss" in r] for name, result in results.items()}
    assert len(losses["levers"]) == 3 and losses["levers"] == pytest.approx(losses["plain"], rel=1e-4)
    weights = {name: load_file(result.adapter_dir / "adapter_model.safetensors") for name, result in results.items()}
    assert weights["levers"].keys() == weights["plain"].keys()
    for key, tensor in weights["plain"].items():
        assert tensor.abs().sum() > 0
        assert torch.allclose(weights["levers"][key], tensor, atol=1e-5), key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_chunked_loss_trains_under_mixed_precision(tmp_path, tiny_model_dir, tokenizer, support_rows, dtype):
    """bf16 training through the Trainer (Accelerate runs autocast around the forward only and hands back
    float32 outputs): the chunked loss projects in bf16 as the model's head would, and takes the plain
    path's steps up to bf16 rounding."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in support_rows[split][:8]))
    losses = {}
    for chunked in (False, True):
        path = write_config(
            tmp_path / f"{chunked}.yaml", tiny_model_dir, data_dir, model={"dtype": dtype},
            training={"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "precision": "bf16", "logging_steps": 1,
                      "warmup_ratio": 0.0, "chunked_loss": chunked},
            lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        )
        config = load_config(path)
        prepared = prepare_splits(config.data, tokenizer)
        result = train_lora(config, prepared.splits["train"], [], tmp_path / f"out-{chunked}", tokenizer)
        losses[chunked] = [r["loss"] for r in result.loss_history if "loss" in r]
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=2e-2)


def test_8bit_adamw_is_bitsandbytes_with_8bit_moments_for_large_tensors(tmp_path, tiny_model_dir, tokenizer,
                                                                        support_rows):
    """training.optimizer: adamw_8bit reaches the Trainer as bitsandbytes' AdamW, whose moments are
    8-bit for an adapter of 4,096+ values (rank 128 x hidden 32)."""
    import bitsandbytes

    config = RunConfig.model_validate({
        "model": {"name": str(tiny_model_dir)},
        "data": {"train_file": "unused.jsonl"},
        "lora": {"rank": 128, "dropout": 0.0, "target_modules": ["q_proj"]},
        "training": {"max_steps": 1, "batch_size": 4, "precision": "fp32", "use_cpu": True, "warmup_ratio": 0.0,
                     "optimizer": "adamw_8bit"},
    })
    model = attach_lora(load_model(config.model), config)
    model.config.use_cache = False
    rows = tokenize_examples([to_example(row) for row in support_rows["train"][:4]], tokenizer, "Extract JSON.", 256).rows
    trainer = CompletionLossTrainer(
        model=model, args=build_training_arguments(config.training, tmp_path / "trainer"),
        train_dataset=_as_dataset(rows), data_collator=build_collator(tokenizer, packing=False),
    )
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, bitsandbytes.optim.AdamW)
    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    assert lora_a.numel() >= 4096
    assert trainer.optimizer.optimizer.state[lora_a]["state1"].dtype == torch.uint8


def test_offload_activations_needs_checkpointing():
    from pydantic import ValidationError

    from llm_lora.config import TrainingConfig

    with pytest.raises(ValidationError, match="training.offload_activations: needs training.gradient_checkpointing"):
        TrainingConfig(offload_activations=True)
