"""The run report: loss curves, base vs finetuned metrics and the promotion decision, as one HTML page.

Plain HTML with inline SVG, so the open-source ZenML dashboard renders it without
plotting libraries or scripts.
"""

from __future__ import annotations

import math

from llm_lora.html_pages import escape, number, page, table
from llm_lora.metric_registry import lower_is_better, ordered_scores
from llm_lora.promotion import PromotionRecord
from llm_lora.worth_it import WorthItReport

TRAIN_COLOR = "#7a5af8"
VALIDATION_COLOR = "#f79009"


def _polyline(points: list[tuple[float, float]], color: str, to_x, to_y, dots: bool) -> str:
    coords = " ".join(f"{to_x(x):.1f},{to_y(y):.1f}" for x, y in points)
    line = f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{coords}'/>"
    if dots:
        line += "".join(f"<circle cx='{to_x(x):.1f}' cy='{to_y(y):.1f}' r='3' fill='{color}'/>" for x, y in points)
    return line


def loss_curve_svg(loss_history: list[dict], width: int = 640, height: int = 280) -> str:
    """Training loss and validation loss by optimizer step, as an SVG chart.

    Args:
        loss_history: Records with "step" and "loss" and/or "eval_loss".

    Returns:
        The SVG element, or a short note when nothing was logged.
    """
    train = [(r["step"], r["loss"]) for r in loss_history if "loss" in r]
    validation = [(r["step"], r["eval_loss"]) for r in loss_history if "eval_loss" in r]
    points = train + validation
    if not points:
        return "<p>No losses were logged (training.logging_steps larger than the run?).</p>"
    left, right, top, bottom = 56, 16, 12, 36
    max_step = max(step for step, _ in points) or 1
    min_step = min(step for step, _ in points)
    low, high = min(loss for _, loss in points), max(loss for _, loss in points)
    high = high if high > low else low + 1.0
    span_x = max(max_step - min_step, 1)

    def to_x(step: float) -> float:
        return left + (step - min_step) / span_x * (width - left - right)

    def to_y(loss: float) -> float:
        return top + (high - loss) / (high - low) * (height - top - bottom)

    ticks = []
    for i in range(5):
        value = low + (high - low) * i / 4
        y = to_y(value)
        ticks.append(
            f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{left - 6}' y='{y + 4:.1f}' font-size='11' text-anchor='end'>{value:.3g}</text>"
        )
    for step in sorted({min_step, (min_step + max_step) // 2, max_step}):
        ticks.append(
            f"<text x='{to_x(step):.1f}' y='{height - bottom + 16}' font-size='11' text-anchor='middle'>{step}</text>"
        )
    ticks.append(
        f"<text x='{(left + width - right) / 2:.0f}' y='{height - 4}' font-size='11' text-anchor='middle'>"
        "optimizer step</text>"
    )
    lines = _polyline(train, TRAIN_COLOR, to_x, to_y, dots=len(train) == 1) if train else ""
    lines += _polyline(validation, VALIDATION_COLOR, to_x, to_y, dots=True) if validation else ""
    return (
        f"<svg id='loss-curve' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"role='img' aria-label='training and validation loss'>"
        f"<rect width='{width}' height='{height}' fill='white'/>{''.join(ticks)}"
        f"<line x1='{left}' x2='{left}' y1='{top}' y2='{height - bottom}' stroke='#999'/>"
        f"<line x1='{left}' x2='{width - right}' y1='{height - bottom}' y2='{height - bottom}' stroke='#999'/>"
        f"{lines}</svg>"
    )


# The facts that end the metric table: how answers ended, and their cost.
TAIL_FACTS = ("hit_cap_rate", "cut_short_rate", "mean_latency_s")


def metric_rows(base: dict, finetuned: dict) -> list[tuple[str, float, float]]:
    """The scores worth a table row, in a stable order: headline metrics, then per-field, then TAIL_FACTS."""
    ordered = ordered_scores(finetuned) + [name for name in TAIL_FACTS if name in finetuned]
    return [(name, float(base.get(name, float("nan"))), float(finetuned[name])) for name in ordered]


def render_run_report(
    base: dict,
    finetuned: dict,
    decision: PromotionRecord,
    training: dict,
    loss_history: list[dict],
    model_label: str,
    worth_it: WorthItReport | None = None,
) -> str:
    """One page telling the run's story: did it learn, is it better, what happened to it.

    Args:
        base: The base model's metrics.
        finetuned: The finetuned model's metrics (same rows).
        decision: The promotion record (reason, stage, numbers).
        training: Training metrics (steps, runtime, tokens/s, losses).
        loss_history: Logged losses by step.
        model_label: "<model name> version <n>".
        worth_it: The "worth it" report (verdict and reason), shown under the decision.
    """
    rows = []
    for name, before, after in metric_rows(base, finetuned):
        delta = after - before
        better = delta < 0 if lower_is_better(name) else delta > 0
        # No mark without a change, nor without a base figure to change from.
        css = "" if math.isnan(delta) or abs(delta) < 1e-12 else ("better" if better else "worse")
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{number(before)}</td><td>{number(after)}</td>"
            f"<td class='{css}'>{number(delta, signed=True)}</td></tr>"
        )
    stage, promoted = decision.new_stage, decision.promote
    facts = [
        ("optimizer steps", training.get("optimizer_steps")),
        ("runtime", f"{training.get('train_runtime_s', 0):.0f} s"),
        ("throughput", f"{training.get('train_tokens_per_s', 0):.0f} tokens/s"),
        ("mean training loss", f"{training.get('train_loss', float('nan')):.4f}"),
        ("final validation loss", f"{training['validation_loss']:.4f}" if "validation_loss" in training else "–"),
        ("kept step", training.get("best_step", "last")),
        ("resumed from step", training.get("resumed_from_step") or "–"),
    ]
    metrics = table(rows, ["metric", "base", "finetuned", "change"], element_id="metrics", css="figures")
    return page("Run report", f"""<h2>Run report: {escape(model_label)}</h2>
<div class="decision {'promoted' if promoted else 'held'}" id="decision"><b>Stage: {escape(stage)}</b>
({'promoted to production' if promoted else 'not promoted to production'}) &mdash; {escape(decision.reason)}
{f"<br>Production compared: {escape(decision.production_source)}" if decision.production_source else ''}</div>
{f"<p id='worth-it'><b>Worth it? {escape(worth_it.verdict)}</b> &mdash; {escape(worth_it.reason)} (worth_it_report artifact)</p>" if worth_it else ''}
<div class="side-by-side"><section><h3>Loss</h3>
<p class="legend"><span style="background:{TRAIN_COLOR}"></span>training<span style="background:{VALIDATION_COLOR}"></span>validation</p>
{loss_curve_svg(loss_history, width=520)}</section>
<section><h3>Base vs finetuned (test rows)</h3>
{metrics}</section></div>
<h3>Training</h3>{table(facts, css="figures")}""")
