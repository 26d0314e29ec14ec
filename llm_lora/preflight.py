"""The preflight report: what is wrong with the data and what the run will cost, before training starts."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from llm_lora.config import RunConfig

BENCH_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def measured_throughput(model_name: str, device: str) -> tuple[float, str] | None:
    """A training tokens/s figure measured by `bench/` for this model on this kind of device.

    Returns:
        (tokens per second, the results file it came from), or None when nothing matches.
    """
    for path in sorted(BENCH_RESULTS.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        training = record.get("training", {})
        if record.get("model") == model_name and str(training.get("device", "")).split(":")[0] == device:
            return float(training["train_tokens_per_s"]), path.name
    return None


def estimate_run(summary: dict, config: RunConfig, device: str) -> dict:
    """Optimizer steps, training tokens, and (when a throughput is known) time and cost.

    Args:
        summary: `PreparedData.summary`.
        config: The run configuration.
        device: "cpu" or "cuda": which measured throughput applies.

    Returns:
        A flat dict; time and cost keys are present only when they can be estimated.
    """
    training = config.training
    train = summary["train"]
    rows_per_step = training.batch_size * training.gradient_accumulation_steps * training.num_processes
    steps_per_epoch = math.ceil(train["rows"] / rows_per_step)
    steps = training.max_steps if training.max_steps > 0 else math.ceil(steps_per_epoch * training.epochs)
    epochs = steps / steps_per_epoch
    tokens = round(train["tokens"] * epochs)
    estimate = {
        "optimizer_steps": steps,
        "epochs": round(epochs, 3),
        "training_tokens": tokens,
        "trained_tokens": round(train["trained_tokens"] * epochs),
    }
    if config.preflight.tokens_per_s:
        rate, origin = config.preflight.tokens_per_s, "preflight.tokens_per_s"
    else:
        found = measured_throughput(config.model.name, device)
        rate, origin = found if found else (None, None)
    if rate:
        seconds = tokens / rate
        estimate.update(tokens_per_s=rate, throughput_from=origin, training_minutes=round(seconds / 60, 1))
        if config.preflight.price_per_gpu_hour is not None:
            gpus = training.num_processes
            estimate["training_cost"] = round(seconds / 3600 * gpus * config.preflight.price_per_gpu_hour, 2)
    return estimate


def problems(summary: dict) -> list[str]:
    """One line for each thing about the data a user should look at."""
    lines = []
    for split in ("train", "validation", "test"):
        part = summary[split]
        for key, what in (
            ("duplicates_dropped", "exact duplicates dropped"),
            ("leakage_dropped", "rows dropped because their input is also in train"),
            ("over_length", f"rows over max_seq_length {summary['max_seq_length']} dropped"),
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


def render_text(summary: dict, estimate: dict) -> str:
    """The short printout."""
    rows = ", ".join(f"{split} {summary[split]['rows']}" for split in ("train", "validation", "test"))
    lines = [f"Preflight: {summary['source']}: rows {rows}; {len(summary['dropped'])} rows dropped"]
    lines.append(
        f"  train tokens {summary['train']['tokens']} (mean {summary['train']['mean_tokens']}, "
        f"max {summary['train']['max_tokens']}), completion share {summary['train']['completion_token_share']:.0%}"
    )
    cost = f", cost {estimate['training_cost']}" if "training_cost" in estimate else ""
    timing = (
        f", about {estimate['training_minutes']} min at {estimate['tokens_per_s']:.0f} tokens/s{cost}"
        if "training_minutes" in estimate
        else ", time unknown (set preflight.tokens_per_s)"
    )
    lines.append(f"  {estimate['optimizer_steps']} optimizer steps, {estimate['training_tokens']} training tokens{timing}")
    lines += [f"  ! {line}" for line in problems(summary)]
    return "\n".join(lines)


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(summary: dict, estimate: dict) -> str:
    """A self-contained HTML page for the ZenML dashboard."""
    splits = ("train", "validation", "test")
    keys = [
        ("rows_read", "rows read"), ("rows", "rows kept"), ("duplicates_dropped", "duplicates"),
        ("leakage_dropped", "leakage"), ("over_length", "over max_seq_length"), ("truncated", "truncated"),
        ("mask_problems", "no trained token"), ("mean_tokens", "mean tokens"), ("p95_tokens", "p95 tokens"),
        ("max_tokens", "max tokens"), ("completion_token_share", "completion token share"),
    ]
    split_rows = [[label, *(summary[s].get(key, "") for s in splits)] for key, label in keys]
    bins = sorted({b for s in splits for b in summary[s]["length_histogram"]}, key=lambda b: int(b.split("-")[0].lstrip(">")))
    peak = max(n for s in splits for n in summary[s]["length_histogram"].values())
    bars = "".join(
        f"<tr><td>{html.escape(b)}</td>"
        + "".join(
            f"<td><div class='bar' style='width:{160 * summary[s]['length_histogram'].get(b, 0) / peak:.0f}px'></div>"
            f"{summary[s]['length_histogram'].get(b, 0)}</td>"
            for s in splits
        )
        + "</tr>"
        for b in bins
    )
    issues = problems(summary)
    dropped = [[row["split"], row["source"], row["reason"]] for row in summary["dropped"]]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Preflight report</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}} th{{background:#f3f3f3}}
.bar{{display:inline-block;height:.8em;background:#7a5af8;margin-right:.4em}} .warn{{color:#b54708}}
</style></head><body>
<h2>Preflight report</h2>
<p>Source: <code>{html.escape(summary['source'])}</code>{' &middot; splits made from train: ' + ', '.join(summary['splits_made']) if summary['splits_made'] else ''}
&middot; max_seq_length {summary['max_seq_length']} &middot; loss on {html.escape(summary['loss_on'])}
&middot; packing {'on' if summary['packing'] else 'off'}</p>
<h3>Findings</h3>
{''.join(f"<p class='warn'>&#9888; {html.escape(line)}</p>" for line in issues) or '<p>No problems found.</p>'}
<h3>Splits</h3>{_table(split_rows, ['', *splits])}
<h3>Token lengths (model tokenizer)</h3><table><thead><tr><th>tokens</th>{''.join(f'<th>{s}</th>' for s in splits)}</tr></thead><tbody>{bars}</tbody></table>
<h3>Run estimate</h3>{_table([[key, value] for key, value in estimate.items()], ['', 'value'])}
<h3>Dropped rows ({len(dropped)})</h3>{_table(dropped, ['split', 'where', 'why']) if dropped else '<p>None.</p>'}
</body></html>"""
