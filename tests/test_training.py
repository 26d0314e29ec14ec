"""LoRA training on a tiny random model: only adapters train, loss falls, plain PEFT reloads it."""

import json
from pathlib import Path

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


@pytest.mark.parametrize("packing, accumulation", [(False, 1), (True, 2)])
def test_tokens_per_second_counts_the_tokens_trained(tmp_path, tiny_model_dir, tokenizer, support_rows, packing,
                                                     accumulation):
    """One epoch of ten rows in batches of four (the last one short): the tokens counted are the rows' own
    tokens, each row once, whatever the padding, packing or accumulation; not a mean length times rows."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, rows in (("train", support_rows["train"][:10]), ("validation", support_rows["validation"][:2]),
                        ("test", support_rows["test"][:2])):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = write_config(
        tmp_path / "run.yaml", tiny_model_dir, data_dir,
        training={"max_steps": -1, "epochs": 1, "batch_size": 4, "gradient_accumulation_steps": accumulation,
                  "precision": "fp32"},
        data={"packing": packing},
        lora={"rank": 4, "dropout": 0.0},
    )
    config = load_config(path)
    rows = prepare_splits(config.data, tokenizer).splits["train"]
    assert len(rows) == 10 and len({len(row["input_ids"]) for row in rows}) > 1  # padded batches have padding
    metrics = train_lora(config, rows, [], tmp_path / "out", tokenizer).metrics
    assert metrics["optimizer_steps"] == (3 if accumulation == 1 else 2)
    assert metrics["train_tokens"] == sum(sum(row["attention_mask"]) for row in rows)
    assert metrics["train_tokens_per_s"] == pytest.approx(metrics["train_tokens"] / metrics["train_runtime_s"], rel=0.05)


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


@pytest.mark.parametrize("packing", [False, True])
def test_completion_only_logits_give_the_trainers_loss_and_gradients(tmp_path, tiny_model_dir, tokenizer,
                                                                     support_rows, packing):
    """Logits only at trained positions: the same loss and LoRA gradients as the full-vocabulary path."""
    from transformers import Trainer, TrainingArguments

    from peft import get_peft_model

    from llm_lora.config import LoraSettings, ModelConfig
    from llm_lora.data_formats import to_example
    from llm_lora.tokenization import tokenize_examples
    from llm_lora.training import CompletionLossTrainer, accepts_logits_to_keep, build_collator

    torch.manual_seed(0)
    base = load_model(ModelConfig(name=str(tiny_model_dir), attn_implementation="sdpa"))
    model = get_peft_model(base, build_lora_config(LoraSettings(dropout=0.0)))
    model.config.use_cache = False
    # Nudge the (zero-initialized) B matrices so that every LoRA parameter gets a gradient.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    assert accepts_logits_to_keep(model)
    examples = [to_example(row) for row in support_rows["train"][:4]]
    rows = tokenize_examples(examples, tokenizer, "Extract JSON.", 256).rows
    batch = build_collator(tokenizer, packing=packing)(
        [{key: row[key] for key in ("input_ids", "attention_mask", "labels")} for row in rows]
    )
    labelled = int((batch["labels"] != -100).sum())
    assert labelled < batch["labels"].numel() / 2  # most positions carry no label: that is what is saved
    trainer = CompletionLossTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none")
    )

    def loss_and_grads(compute, **kwargs):
        model.zero_grad()
        loss = compute(model, dict(batch), **kwargs)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for num_items in (None, torch.tensor(labelled + 7)):  # per-batch mean, and a count over accumulated batches
        ours, our_grads = loss_and_grads(trainer.compute_loss, num_items_in_batch=num_items)
        theirs, their_grads = loss_and_grads(lambda m, b, **k: Trainer.compute_loss(trainer, m, b, **k),
                                             num_items_in_batch=num_items)
        assert torch.allclose(ours, theirs, rtol=1e-5), (ours, theirs)
        assert our_grads.keys() == their_grads.keys() and len(our_grads) > 0
        for name, grad in our_grads.items():
            assert grad.abs().sum() > 0, name
            assert torch.allclose(grad, their_grads[name], rtol=1e-4, atol=1e-7), name


def test_early_stopping_keeps_the_best_evaluation(tmp_path, tiny_model_dir, tokenizer, support_rows):
    """Validation answers unlike the training answers: as training fits the JSON, validation loss climbs,
    training stops early and the adapter from the best evaluation is the one kept."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    train = support_rows["train"][:8]
    validation = [{"prompt": row["prompt"], "completion": "Thank you for your message, we will reply soon."}
                  for row in support_rows["validation"][:4]]
    for split, rows in (("train", train), ("validation", validation), ("test", support_rows["test"][:2])):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = write_config(
        tmp_path / "run.yaml", tiny_model_dir, data_dir,
        training={"max_steps": 24, "batch_size": 4, "learning_rate": 0.05, "precision": "fp32", "logging_steps": 1,
                  "eval_steps": 2, "early_stopping_patience": 2, "warmup_ratio": 0.0, "lr_scheduler": "constant"},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "lm_head"]},
    )
    config = load_config(path)
    prepared = prepare_splits(config.data, tokenizer)
    result = train_lora(config, prepared.splits["train"], prepared.splits["validation"], tmp_path / "out", tokenizer)
    evaluations = [(r["step"], r["eval_loss"]) for r in result.loss_history if "eval_loss" in r]
    assert result.metrics["stopped_early"] and result.metrics["optimizer_steps"] < 24
    best_step, best_loss = min(evaluations, key=lambda item: item[1])
    assert result.metrics["best_step"] == best_step
    # The saved adapter is the best one: its validation loss is the lowest seen, not the last.
    assert result.metrics["validation_loss"] == pytest.approx(best_loss, rel=1e-4)
    assert evaluations[-1][1] > best_loss  # the last interval evaluation was worse: stopping was right


def test_generated_validation_metric_picks_the_kept_adapter(tmp_path, tiny_model_dir, tokenizer, support_rows):
    """With best_by: primary_metric the validation slice is answered at every evaluation; the kept adapter
    is the one with the best score there, and early stopping watches that score."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    label = {"prompt": None, "completion": "billing"}
    splits = {"train": support_rows["train"][:16], "validation": support_rows["validation"][:4], "test": support_rows["test"][:2]}
    for split, rows in splits.items():
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(dict(label, prompt=row["prompt"])) + "\n" for row in rows))
    path = write_config(
        tmp_path / "run.yaml", tiny_model_dir, data_dir,
        training={"max_steps": 40, "batch_size": 4, "learning_rate": 0.05, "precision": "fp32", "logging_steps": 1,
                  "eval_steps": 2, "early_stopping_patience": 4, "warmup_ratio": 0.0, "lr_scheduler": "constant",
                  "eval_generation_rows": 4, "best_by": "primary_metric"},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "lm_head"]},
        evaluation={"batch_size": 4, "max_new_tokens": 4, "metrics": ["classification_accuracy"]},
    )
    config = load_config(path)
    prepared = prepare_splits(config.data, tokenizer)
    result = train_lora(config, prepared.splits["train"], prepared.splits["validation"], tmp_path / "out", tokenizer)
    evaluations = [r for r in result.loss_history if "eval_loss" in r]
    assert evaluations and all(r["metric"] == "classification_accuracy" for r in evaluations)
    assert all(r["eval_primary_metric"] == r["eval_classification_accuracy"] for r in evaluations)
    scores = [r["eval_primary_metric"] for r in evaluations]
    best = max(scores)
    assert best == 1.0 and scores[0] < 1.0  # the model learned the label during training
    first_best = next(r["step"] for r in evaluations if r["eval_primary_metric"] == best)
    assert result.metrics["best_step"] == first_best
    assert result.metrics["validation_primary_metric"] == best
    # The kept adapter is chosen by the metric, not by validation loss (which bottoms out later here).
    lowest_loss_step = min(evaluations, key=lambda r: r["eval_loss"])["step"]
    assert lowest_loss_step != first_best
    # Nothing beats 1.0: four more evaluations (patience 4, every 2 steps) and training stops.
    assert result.metrics["stopped_early"] and evaluations[-1]["step"] == first_best + 8


def test_merged_model_generates_what_the_adapter_does(trained, tmp_path, tokenizer):
    from llm_lora.export import merge_adapter
    from llm_lora.generation import generate

    config, prepared, result = trained
    merged_dir = merge_adapter(config.model, result.adapter_dir, tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = load_adapter(load_model(config.model), result.adapter_dir)
    prompts = [row["prompt_text"] for row in prepared.splits["test"][:6]]
    with_adapter = generate(adapted, tokenizer, prompts, batch_size=6, max_new_tokens=12)
    with_merged = generate(merged, tokenizer, prompts, batch_size=6, max_new_tokens=12)
    assert [g.text for g in with_merged] == [g.text for g in with_adapter]


def test_adapter_materializer_round_trip(trained, tiny_model_dir, tmp_path):
    """The ZenML materializer stores the plain files, reloads them, and plain PEFT loads the stored folder."""
    import yaml

    from llm_lora.adapter import LoraAdapter
    from materializers.lora_adapter_materializer import LoraAdapterMaterializer

    config, _, result = trained
    uri = tmp_path / "artifact"
    uri.mkdir()
    materializer = LoraAdapterMaterializer(str(uri))
    import shutil

    adapter = LoraAdapter(directory=Path(shutil.copytree(result.adapter_dir, tmp_path / "adapter")))
    adapter.write_facts("my-base-model", result.metrics["trainable_parameters"])
    materializer.save(adapter)
    stored = {path.name for path in uri.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= stored
    assert not any(name.endswith((".pkl", ".pickle", ".bin")) for name in stored)
    assert sum(path.stat().st_size for path in uri.iterdir()) < 20 * 2**20

    loaded = LoraAdapterMaterializer(str(uri)).load(LoraAdapter)
    assert isinstance(loaded, LoraAdapter) and loaded.directory != result.adapter_dir
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (loaded.directory / name).read_bytes() == (result.adapter_dir / name).read_bytes()

    ids = torch.tensor([[5, 6, 7, 8]])
    original = load_adapter(load_model(config.model), result.adapter_dir)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(uri))
    assert torch.allclose(original(ids).logits, plain(ids).logits, atol=1e-6)

    facts = loaded.facts()
    assert facts["base_model"] == "my-base-model" and facts["rank"] == 4
    assert facts["trainable_parameters"] == result.metrics["trainable_parameters"]
    assert "q_proj" in facts["target_modules"]
    visualizations = materializer.save_visualizations(adapter)
    (page,) = visualizations
    text = open(page).read()
    assert "| rank | 4 |" in text and "| trainable_parameters |" in text
    metadata = materializer.extract_metadata(adapter)
    assert metadata["rank"] == 4 and isinstance(metadata["target_modules"], str)
    assert yaml.safe_load(json.dumps(metadata))  # plain JSON-able values


def test_auto_precision_follows_the_cpu(monkeypatch, caplog):
    from llm_lora import training as training_module
    from llm_lora.config import TrainingConfig
    from llm_lora.training import precision

    cpu = TrainingConfig(use_cpu=True)
    assert cpu.precision == "auto"
    native = training_module.cpu_has_native_bf16()
    assert training_module.resolve_precision(cpu) == ("bf16" if native else "fp32")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert training_module.resolve_precision(cpu) == "fp32"
    args = training_module.build_training_arguments(cpu, Path("unused"))
    assert not args.bf16 and not args.fp16
    # An explicit bf16 is kept, with a warning that names the option.
    explicit = TrainingConfig(use_cpu=True, precision="bf16")
    with caplog.at_level("WARNING"):
        assert training_module.resolve_precision(explicit) == "bf16"
    assert "training.precision: bf16" in caplog.text
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert training_module.resolve_precision(cpu) == "bf16"


def test_merged_float32_adapter_answers_like_the_adapter(trained, tokenizer, support_rows):
    """Evaluation folds a float32 adapter into the weights: same logits to rounding, same answers;
    16-bit weights keep the adapter separate."""
    from llm_lora.generation import generate
    from llm_lora.prompt_formatting import format_prompt

    config, _, result = trained
    adapted = load_adapter(load_model(config.model), result.adapter_dir)
    merged = load_adapter(load_model(config.model), result.adapter_dir, merge=True)
    assert isinstance(adapted, PeftModel) and not isinstance(merged, PeftModel)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)
    prompts = [format_prompt(tokenizer, row["prompt"], "Extract JSON.") for row in support_rows["test"][:6]]
    assert [g.text for g in generate(adapted, tokenizer, prompts, batch_size=6, max_new_tokens=12)] == [
        g.text for g in generate(merged, tokenizer, prompts, batch_size=6, max_new_tokens=12)
    ]
    half = load_adapter(load_model(config.model).to(torch.bfloat16), result.adapter_dir, merge=True)
    assert isinstance(half, PeftModel)


@pytest.mark.parametrize("every_n_layers, recomputed", [(1, [True, True]), (2, [True, False])])
def test_partial_gradient_checkpointing_recomputes_only_every_nth_layer(tmp_path, tiny_model_dir, tokenizer,
                                                                         support_rows, every_n_layers, recomputed):
    """training.gradient_checkpointing_every_n_layers: the checkpointed layers run their forward twice in a
    step (once more in the backward pass), the others once, and training still reaches every adapter."""
    from llm_lora.config import RunConfig
    from llm_lora.data_formats import to_example
    from llm_lora.tokenization import tokenize_examples
    from llm_lora.training import CompletionLossTrainer, _as_dataset, attach_lora, build_collator, build_training_arguments

    config = RunConfig.model_validate({
        "model": {"name": str(tiny_model_dir)},
        "data": {"train_file": "unused.jsonl"},
        "lora": {"rank": 4, "dropout": 0.0},
        "training": {"max_steps": 1, "batch_size": 4, "precision": "fp32", "use_cpu": True, "warmup_ratio": 0.0,
                     "gradient_checkpointing": True, "gradient_checkpointing_every_n_layers": every_n_layers},
    })
    model = attach_lora(load_model(config.model), config)
    model.config.use_cache = False
    layers = model.get_base_model().model.layers
    calls = [0] * len(layers)
    # The layer's own hooks stay outside the checkpoint, and a recompute stops as soon as it has what the
    # backward pass needs (before the MLP's forward hook would run): count calls into its MLP.
    for index, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    rows = tokenize_examples([to_example(row) for row in support_rows["train"][:4]], tokenizer, "Extract JSON.", 256).rows
    trainer = CompletionLossTrainer(
        model=model, args=build_training_arguments(config.training, tmp_path / "trainer"),
        train_dataset=_as_dataset(rows), data_collator=build_collator(tokenizer, packing=False),
    )
    trainer.train()
    assert [layer.gradient_checkpointing for layer in layers] == recomputed
    assert calls == [2 if checkpointed else 1 for checkpointed in recomputed]
    changed = {name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[name])}
    assert changed == {name for name in before if "lora_B" in name}  # one step from B = 0: only B moves


def test_partial_gradient_checkpointing_needs_checkpointing(tmp_path):
    from pydantic import ValidationError

    from llm_lora.config import TrainingConfig

    with pytest.raises(ValidationError, match="training.gradient_checkpointing_every_n_layers: needs"):
        TrainingConfig(gradient_checkpointing_every_n_layers=2)


@pytest.mark.slow
def test_compiled_layers_train_like_eager_ones(tmp_path, tiny_model_dir, tokenizer, support_rows):
    """training.compile: each decoder layer runs through torch.compile (one graph for all layers, checkpointed
    or not), and training takes the same steps as without it: same losses, same adapter."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in support_rows[split][:8]))
    results, graphs = {}, {}
    for compiled in (False, True):
        path = write_config(
            tmp_path / f"run-{compiled}.yaml", tiny_model_dir, data_dir,
            training={"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "precision": "fp32", "logging_steps": 1,
                      "gradient_checkpointing": True, "compile": compiled},
            lora={"rank": 4, "alpha": 8, "dropout": 0.0},
        )
        config = load_config(path)
        prepared = prepare_splits(config.data, tokenizer)
        counters.clear()
        results[compiled] = train_lora(config, prepared.splits["train"], [], tmp_path / f"out-{compiled}", tokenizer)
        graphs[compiled] = counters["stats"]["unique_graphs"]
    assert graphs[False] == 0 and graphs[True] >= 1
    # Evaluation, here at every step with generated validation answers, compiles nothing more.
    torch._dynamo.reset()
    config = config.model_copy(update={"training": config.training.model_copy(
        update={"eval_steps": 1, "eval_generation_rows": 2, "keep_best": False})})
    counters.clear()
    evaluated = train_lora(config, prepared.splits["train"], prepared.splits["validation"][:4], tmp_path / "out-eval",
                           tokenizer)
    assert [r["step"] for r in evaluated.loss_history if "eval_loss" in r] == [1, 2, 3]
    assert counters["stats"]["unique_graphs"] == graphs[True]
    losses = {compiled: [r["loss"] for r in result.loss_history if "loss" in r] for compiled, result in results.items()}
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    weights = {compiled: load_file(result.adapter_dir / "adapter_model.safetensors") for compiled, result in results.items()}
    assert weights[True].keys() == weights[False].keys()
    for name, tensor in weights[False].items():
        assert torch.allclose(weights[True][name], tensor, atol=1e-5), name


def test_compile_needs_decoder_layers():
    from llm_lora.training import compile_layers

    with pytest.raises(ValueError, match="training.compile: no decoder layers found in Linear"):
        compile_layers(torch.nn.Linear(2, 2))
