"""The GPU path: QLoRA (4-bit NF4) and bf16 LoRA train on CUDA through the project's own loading and training.

Skipped without a CUDA GPU, as on CI; on a GPU machine: `python -m pytest tests/test_gpu.py`.
bench/gpu_training.py measures the same code on 8B-, 7B- and 2.7B-shaped models.
"""

import json

import pytest
import torch

from llm_lora.config import load_config
from llm_lora.data_preparation import prepare_splits
from llm_lora.model_loading import load_model
from llm_lora.training import attach_lora, load_adapter, train_lora
from tests.conftest import write_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def gpu_config(root, tiny_model_dir, support_rows, attention="sdpa", **training):
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    for split in ("train", "validation", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in support_rows[split][:32]))
    path = write_config(
        root / "run.yaml", tiny_model_dir, data_dir,
        model={"dtype": "bfloat16", "attn_implementation": attention},
        data={"packing": True},
        training={"use_cpu": False, "precision": "bf16", "max_steps": 10, "batch_size": 8, "learning_rate": 5e-3,
                  "gradient_checkpointing": True, **training},
        lora={"rank": 4, "alpha": 8, "dropout": 0.0},
    )
    return load_config(path)


@pytest.mark.parametrize(("method", "attention", "compiled"), [
    ("qlora-4bit", "varlen", False), ("lora", "varlen", False), ("lora", "sdpa", False),
    ("qlora-4bit", "varlen", True), ("lora", "varlen", True),
])
def test_gpu_training_learns_and_saves_an_adapter(method, attention, compiled, tmp_path, tiny_model_dir, tokenizer,
                                                  support_rows):
    config = gpu_config(tmp_path, tiny_model_dir, support_rows, attention, method=method, compile=compiled)
    prepared = prepare_splits(config.data, tokenizer)
    result = train_lora(config, prepared.splits["train"], prepared.splits["validation"], tmp_path / "out", tokenizer)

    assert result.metrics["device"].startswith("cuda") and result.metrics["precision"] == "bf16"
    losses = [record["loss"] for record in result.loss_history if "loss" in record]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    base = load_model(config.model, device="cuda")  # as evaluation loads it: bf16, sdpa
    ids = torch.tensor([prepared.splits["test"][0]["input_ids"]], device="cuda")
    with torch.no_grad():
        before = base(ids).logits.float()
        after = load_adapter(base, result.adapter_dir)(ids).logits.float()
    assert torch.isfinite(after).all() and not torch.allclose(before, after, atol=1e-3)


def test_qlora_quantizes_the_linear_layers_and_keeps_the_rest_16_bit(tmp_path, tiny_model_dir, support_rows):
    import bitsandbytes as bnb

    config = gpu_config(tmp_path, tiny_model_dir, support_rows, method="qlora-4bit")
    model = attach_lora(load_model(config.model, training=config.training), config)
    quantized = [name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * model.config.num_hidden_layers  # q,k,v,o,gate,up,down of every layer
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # Frozen weights stay as loaded: no float32 copies of embeddings, lm_head or norms.
    frozen = {parameter.dtype for name, parameter in model.named_parameters()
              if not parameter.requires_grad and parameter.dtype.is_floating_point}
    assert frozen == {torch.bfloat16}


def test_varlen_attention_matches_sdpa_on_packed_rows(tiny_model_dir, tokenizer, support_rows):
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening

    from llm_lora import attention

    attention.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    model.config.use_cache = False
    rows = [{"input_ids": tokenizer(row["prompt"])["input_ids"][:n]} for row, n in zip(support_rows["train"], (40, 7, 65))]
    batch = DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=True)(rows)
    batch = {key: value.cuda() if torch.is_tensor(value) else value for key, value in batch.items()}
    with torch.no_grad():
        separate = torch.cat([model(input_ids=torch.tensor([row["input_ids"]], device="cuda")).logits for row in rows], 1)
        model.set_attn_implementation(attention.NAME)
        packed = model(**batch).logits
    assert (packed.float() - separate.float()).abs().max() < 0.05  # bf16 rounding; cross-row attention is far larger


def test_varlen_attention_takes_float32_projections_under_autocast():
    """QLoRA on Phi: its LayerNorm runs in float32 under autocast and 4-bit layers keep that dtype, so
    queries arrive in float32; varlen attends in the autocast dtype, as it would for bf16 inputs."""
    from llm_lora.attention import varlen_attention

    generator = torch.Generator(device="cuda").manual_seed(0)
    query, key, value = (torch.randn(1, 4, 30, 16, device="cuda", generator=generator) for _ in range(3))
    boundaries = {"cu_seq_lens_q": torch.tensor([0, 12, 30], device="cuda"), "max_length_q": 18}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        from_float32, _ = varlen_attention(None, query, key, value, None, scaling=0.25, **boundaries)
        from_bf16, _ = varlen_attention(None, *(t.bfloat16() for t in (query, key, value)), None, scaling=0.25,
                                        **boundaries)
    assert from_float32.dtype == torch.bfloat16 and torch.equal(from_float32, from_bf16)


@pytest.mark.parametrize("method", ["qlora-4bit", "lora"])
def test_training_levers_take_the_plain_steps_in_less_memory(method, tmp_path, tiny_model_dir, tokenizer, support_rows):
    """training.chunked_loss and offload_activations on CUDA: the same losses as without them (bf16
    rounding), and the chunked loss lowers the peak (the logits of every labelled position, float32)."""
    peaks, losses = {}, {}
    for name, levers in (("plain", {}), ("chunked", {"chunked_loss": True}),
                         ("offload", {"offload_activations": True}), ("8bit", {"optimizer": "adamw_8bit"})):
        root = tmp_path / name
        root.mkdir()
        config = gpu_config(root, tiny_model_dir, support_rows, "varlen", method=method, max_steps=4, **levers)
        prepared = prepare_splits(config.data, tokenizer)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result = train_lora(config, prepared.splits["train"], [], root / "out", tokenizer)
        peaks[name] = torch.cuda.max_memory_allocated()
        losses[name] = [record["loss"] for record in result.loss_history if "loss" in record]
    for name in ("chunked", "offload", "8bit"):
        assert losses[name] == pytest.approx(losses["plain"], rel=2e-2), name
    assert peaks["chunked"] < peaks["plain"]
