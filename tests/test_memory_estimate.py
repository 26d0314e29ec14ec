"""The memory estimate against every peak bench/gpu_training.py measured, and its use before training."""

import json
from pathlib import Path

import pytest

from bench.memory_holdout import (
    OUT, RESULTS, errors_with, estimate_gib, estimated_peaks, in_sample, measured_peaks, refit,
)
from llm_lora.memory_estimate import (
    KNOWN_ARCHITECTURES, TrainingShape, architecture_from_config, estimate_memory, memory_advice,
)

TOLERANCE = 0.15


def test_the_estimate_is_within_15_percent_of_every_measured_peak(capsys):
    rows, misses = [], []
    for peak in measured_peaks():
        file, name, tokens, measured, reason = peak.file, peak.name, peak.tokens, peak.measured_gib, peak.reason
        if peak.shape is None:
            rows.append(f"{file:34} {name[:80]:80} {tokens:>6} {measured:>7.2f} {'-':>7} {'-':>7}  ({reason})")
            continue
        estimate = estimate_gib(peak)
        error = estimate / measured - 1
        rows.append(f"{file:34} {name[:80]:80} {tokens:>6} {measured:>7.2f} {estimate:>7.2f} {error:+7.1%}"
                    f"{'  (' + reason + ')' if reason else ''}")
        if reason is None and abs(error) > TOLERANCE:
            misses.append(rows[-1])
    with capsys.disabled():
        print("\n" + "\n".join(rows))
    assert len(rows) >= 40  # every measured run is in the table, the ones not estimated marked
    assert sum("(" not in row[-20:] for row in rows) >= 30
    assert not misses, "\n".join(misses)


def test_the_holdout_results_file_is_what_the_runs_and_constants_give_now():
    """bench/results/memory-estimate-holdout.json against bench/memory_holdout.py's functions: its runs are
    the estimated runs in bench/results, its in-sample figures are the shipped constants' on them, and one
    fold's refit and held-out errors come out again. A new results file or new constants make it stale."""
    record = json.loads(OUT.read_text())
    peaks = estimated_peaks(RESULTS)
    assert record["runs"] == [peak.key for peak in peaks]
    assert record["in_sample_shipped"] == in_sample(peaks)
    assert record["in_sample_shipped"]["max_abs_error"] < TOLERANCE
    # One fold refit again, the quickest (the whole search takes several seconds).
    scheme = record["schemes"]["leave_one_model_shape_out"]
    fold = next(fold for fold in scheme["folds"] if fold["left_out"] == "mistral-7b")
    fitting, left_out = [p for p in peaks if p.model != "mistral-7b"], [p for p in peaks if p.model == "mistral-7b"]
    assert fold["fitting_runs"] == len(fitting) and fold["constants"] == refit(fitting)
    held_out = {row["run"]: row["error"] for row in scheme["held_out"] if row["fold"] == "mistral-7b"}
    assert held_out == {peak.key: round(error, 4) for peak, error in zip(left_out, errors_with(fold["constants"], left_out))}


def test_shipped_gpu_configs_fit_their_cards():
    """configs/llama-3.1-70b.yaml: QLoRA 70B fits one 80 GB card at its rows per step; bf16 would not."""
    from llm_lora.config import load_config
    from llm_lora.memory_estimate import training_shape

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "llama-3.1-70b.yaml", check_files=False)
    architecture = architecture_from_config(KNOWN_ARCHITECTURES[config.model.name])
    assert 69e9 < architecture.parameters < 72e9
    tokens = config.training.batch_size * config.data.max_seq_length  # every row at the longest
    shape = training_shape(config.training, config.lora)
    estimate = estimate_memory(architecture, shape, tokens)
    assert 35 < estimate.weights < 40 and estimate.total < 74.5  # 80 GB = 74.5 GiB
    bf16 = estimate_memory(architecture, TrainingShape(method="lora", checkpointing=True), tokens)
    assert bf16.weights > 130 and "training.method: qlora-4bit" in memory_advice(bf16, TrainingShape(method="lora"), 74.5)


def test_levers_lower_the_estimate_by_what_they_hold():
    architecture = architecture_from_config(KNOWN_ARCHITECTURES["meta-llama/Llama-3.1-8B"])
    plain = estimate_memory(architecture, TrainingShape(method="qlora-4bit", checkpointing=True), 4096)
    levers = estimate_memory(architecture, TrainingShape(method="qlora-4bit", checkpointing=True, chunked_loss=True,
                                                         offload_activations=True, optimizer="adamw_8bit"), 4096)
    assert plain.weights == levers.weights
    assert levers.host_offloaded == pytest.approx(1.0, abs=0.01)  # 32 layers x 4,096 tokens x 8 KB
    assert plain.activations - levers.activations == pytest.approx(1.0, abs=0.01)
    assert plain.logits == pytest.approx(0.3 * 4096 * 128256 * 4 / 2**30, abs=0.01) and levers.logits < 0.3
    assert plain.optimizer == pytest.approx(4 * levers.optimizer, abs=0.02)  # GiB rounded to 0.01
    assert "1.0 GiB of activations in CPU memory" in levers.summary()


def test_a_run_that_cannot_fit_is_refused_in_one_line_naming_the_keys():
    """fit_problem, which training calls before loading anything on a GPU: the 70B config at its limit
    (8 rows of 1,024 tokens) fits an 80 GB card, not a 24 GB one; the line says what to change."""
    from llm_lora.config import load_config
    from llm_lora.memory_estimate import estimate_for_config, fit_problem

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "llama-3.1-70b.yaml", check_files=False)
    estimate = estimate_for_config(config, 1024, 1024, 1.0)
    assert fit_problem(estimate, config, 79.6) is None  # an H100 80GB: 79.6 GiB
    problem = fit_problem(estimate, config, 22.0)
    assert problem.startswith("training does not fit the GPU: about 61.3 GiB per process estimated")
    assert "the GPU has 22.0 GiB" in problem and "\n" not in problem
    for key in ("training.batch_size", "training.offload_activations: true", "training.chunked_loss: true",
                "data.max_seq_length", "training.optimizer: adamw_8bit"):
        assert key in problem
    # Within the estimate's error of the card: not refused (the estimate may be high by that much).
    assert fit_problem(estimate, config, estimate.total * 0.9 + 1.0) is None


def test_dry_run_prints_the_memory_estimate_of_a_gpu_config():
    from llm_lora.config import load_config
    from pipelines.finetune_command import describe_memory

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "llama-3.1-70b.yaml", check_files=False)
    line = describe_memory(config)
    assert line.startswith("at most 61.3 GiB per GPU at 8,192 tokens a step (weights 36.8")
    cpu = config.model_copy(update={"training": config.training.model_copy(update={"use_cpu": True})})
    assert describe_memory(cpu) is None


def test_the_preflight_report_holds_the_estimate_against_the_gpu(tiny_model_dir, tokenizer, support_rows, tmp_path):
    """The preflight report (prepared rows, the run's settings) shows the estimate as a check of
    training.batch_size against the GPU's memory, a warning naming the keys when it cannot fit."""
    from llm_lora.config import load_config
    from llm_lora.data_preparation import prepare_splits
    from llm_lora.preflight import check_settings, estimate_run
    from tests.conftest import write_config

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "validation", "test"):
        (data_dir / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in support_rows[split][:16]))
    config = load_config(write_config(tmp_path / "run.yaml", tiny_model_dir, data_dir, training={"batch_size": 4}))
    summary = prepare_splits(config.data, tokenizer).summary
    estimate = estimate_run(summary, config, "cuda")
    assert estimate.memory is not None and estimate.memory.tokens_per_step == 4 * summary["train"]["max_tokens"]
    assert "memory" not in estimate.figures()
    assert not [c for c in check_settings(summary, config, estimate) if c.key == "training.batch_size"]  # no GPU
    roomy = next(c for c in check_settings(summary, config, estimate, gpu_gib=80.0) if c.key == "training.batch_size")
    assert not roomy.warning and roomy.note.startswith("peak memory ~") and "the GPU has 80.0 GiB" in roomy.note
    tiny = next(c for c in check_settings(summary, config, estimate, gpu_gib=1.0) if c.key == "training.batch_size")
    assert tiny.warning and tiny.note.startswith("training does not fit the GPU")
