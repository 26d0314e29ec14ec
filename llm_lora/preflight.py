"""The preflight report: what is wrong with the data and what the run will cost, before training starts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from llm_lora.answer_length import answer_cap
from llm_lora.config import ConfigPart, RunConfig
from llm_lora.data_preparation import expand_counts
from llm_lora.html_pages import bar, escape, page, table
from llm_lora.memory_estimate import MemoryEstimate, estimate_for_config, fit_problem


@dataclass(frozen=True)
class MeasuredThroughput:
    """A training speed measured for one model on one kind of device.

    The caller gathers these (the preflight step reads `bench/results/`), so the estimate does not
    depend on where measurements are kept.

    Attributes:
        model: The model name as a config gives it (model.name).
        device: "cpu" or "cuda".
        tokens_per_s: Training tokens per second.
        source: Where it was measured (a results file's name); the estimate names it.
    """

    model: str
    device: str
    tokens_per_s: float
    source: str


def measured_throughput(
    model_name: str, device: str, measured: Iterable[MeasuredThroughput]
) -> MeasuredThroughput | None:
    """The first of the measured speeds for this model on this kind of device, or None."""
    return next((m for m in measured if m.model == model_name and m.device == device), None)


class RunEstimate(BaseModel):
    """What the training run will take, and the preflight's checks of the settings against the data.

    A pydantic model so that ZenML stores it as JSON, readable in the dashboard.

    Attributes:
        optimizer_steps: Optimizer steps the run will take.
        epochs: Passes over the training rows those steps make.
        training_tokens: Tokens the model sees in training.
        trained_tokens: Of those, the tokens the loss is computed on.
        tokens_per_s: The training speed the estimate assumes; None when unknown.
        throughput_from: Where that speed comes from (preflight.tokens_per_s or a bench results file).
        training_minutes: Estimated training time; None without a speed.
        training_cost: Estimated training cost; None without a speed or a price per GPU hour.
        memory: Estimated peak GPU memory per training process, by part (llm_lora.memory_estimate);
            None when the model's architecture cannot be read.
        settings: Each checked setting as "key: value: note" (see `check_settings`).
        findings: Every warning of the report, one line each (see `findings`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer_steps: int
    epochs: float
    training_tokens: int
    trained_tokens: int
    tokens_per_s: float | None = None
    throughput_from: str | None = None
    training_minutes: float | None = None
    training_cost: float | None = None
    memory: MemoryEstimate | None = None
    settings: list[str] = []
    findings: list[str] = []

    def figures(self) -> dict:
        """The estimate's numbers that are known, by name, for the report's table."""
        return self.model_dump(exclude={"settings", "findings", "memory"}, exclude_none=True)

    def as_metadata(self) -> dict:
        """A flat dict for ZenML metadata (None left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def estimate_run(
    summary: dict, config: RunConfig | ConfigPart, device: str, measured: Iterable[MeasuredThroughput] = ()
) -> RunEstimate:
    """Optimizer steps, training tokens, and (when a throughput is known) time and cost.

    Args:
        summary: `PreparedData.summary`.
        config: The run configuration.
        device: "cpu" or "cuda": which measured throughput applies.
        measured: Training speeds measured before; used when preflight.tokens_per_s is not set.

    Returns:
        The estimate; time and cost are None when they cannot be estimated. Settings and findings
        are left empty (the preflight step adds them).
    """
    training = config.training
    train = summary["train"]
    rows_per_step = training.batch_size * training.gradient_accumulation_steps * training.num_processes
    steps_per_epoch = math.ceil(train["rows"] / rows_per_step)
    steps = training.max_steps if training.max_steps > 0 else math.ceil(steps_per_epoch * training.epochs)
    epochs = steps / steps_per_epoch
    tokens = round(train["tokens"] * epochs)
    counts = dict(optimizer_steps=steps, epochs=round(epochs, 3), training_tokens=tokens,
                  trained_tokens=round(train["trained_tokens"] * epochs))
    memory = estimate_for_config(config, train["p95_tokens"], train["max_tokens"],
                                 train["trained_tokens"] / max(train["tokens"], 1))
    counts["memory"] = memory
    if config.preflight.tokens_per_s:
        rate, origin = config.preflight.tokens_per_s, "preflight.tokens_per_s"
    else:
        found = measured_throughput(config.model.name, device, measured)
        rate, origin = (found.tokens_per_s, found.source) if found else (None, None)
    if not rate:
        return RunEstimate(**counts)
    seconds = tokens / rate
    cost = None
    if config.preflight.price_per_gpu_hour is not None:
        cost = round(seconds / 3600 * training.num_processes * config.preflight.price_per_gpu_hour, 2)
    return RunEstimate(**counts, tokens_per_s=rate, throughput_from=origin, training_minutes=round(seconds / 60, 1),
                       training_cost=cost)


def estimate_beside_actual(estimate: RunEstimate, training_metrics: dict) -> str:
    """The preflight's training time beside the time training took, in one line for the run summary.

    The estimate's speed may come from a results file measured on another machine: side by side, a user
    sees how far it is from this one (and can set preflight.tokens_per_s to what this machine does).
    """
    if not estimate.tokens_per_s:
        return "no training time estimated (set preflight.tokens_per_s)"
    estimated = estimate.training_tokens / estimate.tokens_per_s
    line = f"estimated {estimated:.0f} s at {estimate.tokens_per_s:.0f} tokens/s (from {estimate.throughput_from})"
    if training_metrics.get("resumed_from_step"):  # the run trained only the steps after its checkpoint
        return f"{line}; resumed, so not comparable"
    actual = float(training_metrics["train_runtime_s"])
    return f"{line}; took {actual:.0f} s ({actual / estimated:.2f}x the estimate)" if estimated > 0 else line


# Fewer optimizer steps than this rarely teach an adapter a new output format: the learning rate
# schedule barely leaves its warm-up before it decays.
MIN_OPTIMIZER_STEPS = 30


@dataclass(frozen=True)
class SettingCheck:
    """One run setting held against the data it will meet.

    Attributes:
        key: The YAML key ("evaluation.max_new_tokens").
        value: Its value as the run uses it ("auto = 68", "256").
        note: One line: where the value comes from, or what is wrong with it.
        warning: Whether the user should change something.
    """

    key: str
    value: str
    note: str
    warning: bool = False


def check_settings(summary: dict, config: RunConfig | ConfigPart, estimate: RunEstimate,
                   gpu_gib: float | None = None) -> list[SettingCheck]:
    """Every setting whose right value depends on the data, checked against this run's data.

    The values a config carries from another task (an answer cap, a row length, a
    row budget, a schedule sized for another data set) show here with the numbers
    that decide whether they fit, before any training time is spent.

    Args:
        summary: `PreparedData.summary`.
        config: The run configuration.
        estimate: `estimate_run`'s output.
        gpu_gib: Memory of the GPU training will run on; None (training on a CPU): no memory check.

    Returns:
        One check per setting, warnings marked.
    """
    checks = []
    lengths = expand_counts(summary.get("answer_length_counts", {}))
    cap_tokens = 0
    if lengths:
        cap = answer_cap(config.evaluation.max_new_tokens, lengths)
        cap_tokens = cap.tokens
        problem = cap.problem()
        checks.append(SettingCheck("evaluation.max_new_tokens", cap.value, problem or cap.why(), bool(problem)))

    window = summary.get("context_window")
    longest = max(summary[split]["max_tokens"] for split in ("train", "validation", "test"))
    setting, limit = summary.get("max_seq_length_setting", summary["max_seq_length"]), summary["max_seq_length"]
    lost = {split: summary[split]["over_length"] for split in ("train", "validation", "test")
            if summary[split].get("over_length")}
    if lost:
        over = max(summary[split].get("longest_over_length", 0) for split in lost)
        counts = ", ".join(f"{split} {count} of {summary[split]['rows_read']}" for split, count in lost.items())
        fix = ("the model cannot take them: shorten those rows or set data.over_length: truncate" if setting == "auto"
               else f"set it to at least {over}, or auto, to keep them")
        checks.append(SettingCheck(
            "data.max_seq_length", f"auto = {limit}" if setting == "auto" else str(limit),
            f"rows longer than {limit} tokens were dropped ({counts}; longest {over} tokens): {fix}"
            + ("; the test rows scored are no longer the whole test set" if "test" in lost else ""),
            warning=True,
        ))
    elif setting == "auto":
        kept = f"the model's context window, {window} tokens" if window else "any length (the tokenizer names no context window)"
        checks.append(SettingCheck("data.max_seq_length", "auto",
                                   f"keeps rows up to {kept}; longest row {longest} tokens"))
    else:
        checks.append(SettingCheck("data.max_seq_length", str(limit), f"longest row {longest} tokens fits"))
    if setting != "auto" and window and limit > window:
        checks.append(SettingCheck("data.max_seq_length", str(limit),
                                   f"is over the model's context window ({window} tokens)", warning=True))

    k = config.baselines.few_shot_k
    if k and window:
        # Worst case: the k longest training rows as examples, the longest test prompt, the answer cap.
        longest_prompt = k * summary["train"]["max_tokens"] + summary["test"]["max_tokens"] + cap_tokens
        checks.append(SettingCheck(
            "baselines.few_shot_k", str(k),
            f"few-shot prompts with their answer reach up to about {longest_prompt} tokens"
            + (f", over the model's context window ({window}): lower baselines.few_shot_k" if longest_prompt > window
               else f" (context window {window})"),
            warning=longest_prompt > window,
        ))

    data = config.data
    rows = summary["train"]["rows"]
    rows_note = f"{rows} training rows" + (f" of {summary['train']['rows_read']} read" if data.max_train_rows else "")
    if estimate.training_minutes is not None:
        budget = config.preflight.max_training_minutes
        minutes = estimate.training_minutes
        note = f"{rows_note}: about {minutes} min of training at {estimate.tokens_per_s:.0f} tokens/s"
        if budget is not None and minutes > budget:
            fitting = max(1, math.floor(rows * budget / minutes))
            checks.append(SettingCheck(
                "data.max_train_rows", str(data.max_train_rows or "all"),
                f"{note}, over preflight.max_training_minutes {budget:g}: about {fitting} rows fit", warning=True,
            ))
        else:
            checks.append(SettingCheck("data.max_train_rows", str(data.max_train_rows or "all"), note))
    else:
        checks.append(SettingCheck("data.max_train_rows", str(data.max_train_rows or "all"),
                                   f"{rows_note}; training time unknown (set preflight.tokens_per_s)"))

    training = config.training
    if estimate.memory is not None and gpu_gib:
        problem = fit_problem(estimate.memory, config, gpu_gib)
        checks.append(SettingCheck("training.batch_size", str(training.batch_size),
                                   problem or f"peak memory {estimate.memory.summary()}; the GPU has {gpu_gib:.1f} GiB",
                                   bool(problem)))
    steps = estimate.optimizer_steps
    rows_per_step = training.batch_size * training.gradient_accumulation_steps * training.num_processes
    epochs = estimate.epochs
    schedule = (f"{steps} optimizer steps ({rows} rows, {rows_per_step} per step,"
                f" {epochs:g} epoch{'' if epochs == 1 else 's'})"
                f" at learning rate {training.learning_rate:g}")
    key, value = (("training.max_steps", str(training.max_steps)) if training.max_steps > 0
                  else ("training.epochs", f"{training.epochs:g}"))
    if steps < MIN_OPTIMIZER_STEPS:
        if training.max_steps > 0:
            fix = f"raise training.max_steps to at least {MIN_OPTIMIZER_STEPS}"
        else:
            per_epoch = max(steps / max(estimate.epochs, 1e-9), 1)
            fix = (f"raise training.epochs to about {math.ceil(MIN_OPTIMIZER_STEPS / per_epoch)}"
                   " or lower training.batch_size")
        checks.append(SettingCheck(key, value, f"{schedule}: too few updates to learn a task; {fix}", warning=True))
    else:
        checks.append(SettingCheck(key, value, schedule))
    return checks


def problems(summary: dict) -> list[str]:
    """One line for each thing about the data a user should look at."""
    lines = []
    for split in ("train", "validation", "test"):
        part = summary[split]
        for key, what in (
            ("duplicates_dropped", "exact duplicates dropped"),
            ("leakage_dropped", "rows dropped because their input is also in train"),
            ("truncated", "rows shortened to fit max_seq_length"),
            ("mask_problems", "rows dropped with no trained answer token"),
        ):
            if part.get(key):
                lines.append(f"{split}: {part[key]} {what}")
    bad = [row for row in summary["dropped"] if row["reason"] not in {"exact duplicate"}
           and "leakage" not in row["reason"] and "max_seq_length" not in row["reason"]
           and "loss" not in row["reason"]]
    if bad:
        lines.append(f"{len(bad)} bad rows dropped (data.on_bad_rows: drop); first: {bad[0]['source']}: {bad[0]['reason']}")
    return lines


def render_text(summary: dict, estimate: RunEstimate, checks: list[SettingCheck] = ()) -> str:
    """The short printout."""
    rows = ", ".join(f"{split} {summary[split]['rows']}" for split in ("train", "validation", "test"))
    lines = [f"Preflight: {summary['source']}: rows {rows}; {len(summary['dropped'])} rows dropped"]
    lines.append(
        f"  train tokens {summary['train']['tokens']} (mean {summary['train']['mean_tokens']}, "
        f"max {summary['train']['max_tokens']}), completion share {summary['train']['completion_token_share']:.0%}"
    )
    lines.append(f"  {loss_line(summary)}")
    cost = f", cost {estimate.training_cost}" if estimate.training_cost is not None else ""
    timing = (
        f", about {estimate.training_minutes} min at {estimate.tokens_per_s:.0f} tokens/s{cost}"
        if estimate.training_minutes is not None
        else ", time unknown (set preflight.tokens_per_s)"
    )
    lines.append(f"  {estimate.optimizer_steps} optimizer steps, {estimate.training_tokens} training tokens{timing}")
    lines += [f"  {'!' if check.warning else '-'} {check.key}: {check.value}: {check.note}" for check in checks]
    lines += [f"  ! {line}" for line in problems(summary)]
    return "\n".join(lines)


def loss_line(summary: dict) -> str:
    """What carries loss in the train split: turns and tokens, and whether OpenAI weights decided it."""
    train = summary["train"]
    turns = (f"{train['trained_turns']} of {train['assistant_turns']} assistant turns"
             if "trained_turns" in train else "the answers")
    weights = (f"; {train['weighted_rows']} rows carry OpenAI weights, which decide their turns"
               if train.get("weighted_rows") else "")
    calls = (f"; {train['call_answers']} answers are function calls, {train['tool_rows']} rows offer tools"
             if train.get("tool_rows") else "")
    return (f"loss on {turns} ({train['trained_tokens']} tokens, loss_on {summary['loss_on']}){weights}{calls}")


def findings(summary: dict, checks: list[SettingCheck]) -> list[str]:
    """Every warning of the report, one line each (what the run summary repeats at the end)."""
    return [f"{check.key}: {check.value}: {check.note}" for check in checks if check.warning] + problems(summary)


def render_html(summary: dict, estimate: RunEstimate, checks: list[SettingCheck] = ()) -> str:
    """A self-contained HTML page for the ZenML dashboard."""
    splits = ("train", "validation", "test")
    keys = [
        ("rows_read", "rows read"), ("rows", "rows kept"), ("duplicates_dropped", "duplicates"),
        ("leakage_dropped", "leakage"), ("over_length", "over max_seq_length"), ("truncated", "truncated"),
        ("mask_problems", "no trained token"), ("mean_tokens", "mean tokens"), ("p95_tokens", "p95 tokens"),
        ("max_tokens", "max tokens"), ("completion_token_share", "completion token share"),
        ("trained_turns", "assistant turns with loss"), ("assistant_turns", "assistant turns"),
        ("weighted_rows", "rows with OpenAI weights"), ("tool_rows", "rows with tools"),
        ("call_answers", "answers that call functions"),
    ]
    split_rows = [[label, *(summary[s].get(key, "") for s in splits)] for key, label in keys]
    bins = sorted({b for s in splits for b in summary[s]["length_histogram"]}, key=lambda b: int(b.split("-")[0].lstrip(">")))
    peak = max(n for s in splits for n in summary[s]["length_histogram"].values())
    bars = [
        f"<tr><td>{escape(b)}</td>"
        + "".join(
            f"<td>{bar(160 * summary[s]['length_histogram'].get(b, 0) / peak)}"
            f"{summary[s]['length_histogram'].get(b, 0)}</td>"
            for s in splits
        )
        + "</tr>"
        for b in bins
    ]
    issues = findings(summary, list(checks))
    dropped = [[row["split"], row["source"], row["reason"]] for row in summary["dropped"]]
    settings = table([[("! " if c.warning else "") + c.key, c.value, c.note] for c in checks],
                     ["setting", "value", "against the data"])
    made = summary["splits_made"]
    return page("Preflight report", f"""<h2>Preflight report</h2>
<p>Source: <code>{escape(summary['source'])}</code>{' &middot; splits made from train: ' + escape(', '.join(made)) if made else ''}
&middot; max_seq_length {escape(summary.get('max_seq_length_setting', summary['max_seq_length']))} &middot; loss on {escape(summary['loss_on'])}
&middot; packing {'on' if summary['packing'] else 'off'}</p>
<p id="loss">{escape(loss_line(summary))}</p>
<h3>Findings</h3>
{''.join(f"<p class='warn'>&#9888; {escape(line)}</p>" for line in issues) or '<p>No problems found.</p>'}
<h3>Settings against the data</h3>{settings if checks else '<p>Not checked.</p>'}
<h3>Splits</h3>{table(split_rows, ['', *splits], css="figures")}
<h3>Token lengths (model tokenizer)</h3>{table(bars, ['tokens', *splits])}
<h3>Run estimate</h3>{table([[key, value] for key, value in estimate.figures().items()], ['', 'value'], css="figures")}
<h3>Dropped rows ({len(dropped)})</h3>{table(dropped, ['split', 'where', 'why']) if dropped else '<p>None.</p>'}""")
