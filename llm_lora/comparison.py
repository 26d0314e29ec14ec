"""Base vs finetuned, example by example: where the finetuned model got better and where worse."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from llm_lora.html_pages import escape, number, page, table
from llm_lora.metric_registry import SCORES_BY_METRIC

FIELD_PREFIX = "correct_"
ROUGE_SCORES = SCORES_BY_METRIC["rouge"]  # scored per row too (evaluation's records carry them)


def example_score(record: dict, metric: str | None = None) -> float:
    """One number per answer, between 0 and 1.

    With `metric` a ROUGE score (rouge1, rouge2, rougeL) the record carries, the
    answer scores that F-measure. Otherwise JSON answers score the share of their
    scored fields right (0 for an answer that is not valid JSON); labels scored by
    classification_accuracy score 1 when the normalized label matches; other
    answers score 1 for an exact match, else 0. A field the row does not have
    (None, or NaN after a trip through a DataFrame) does not count.

    Args:
        record: A per-example record from evaluation (see EvaluationResult.examples).
        metric: The promotion metric, when the caller compares on it.

    Returns:
        The answer's score.
    """
    if metric == "answer_accuracy" and not _is_missing(record.get("answer_right")):
        return 1.0 if record["answer_right"] else 0.0
    scored_by = _scored_by(record, metric)
    if scored_by in ROUGE_SCORES:
        return float(record[scored_by])
    if scored_by == "calls":  # an answer that should call functions: its calls (or their names, or arguments)
        if metric in ("tool_name_accuracy", "tool_call_parse_rate"):
            return 1.0 if record.get("tool_name_match" if metric == "tool_name_accuracy" else "calls_parse") else 0.0
        if metric == "tool_argument_accuracy":
            total = float(record.get("arguments_total") or 0)
            return float(record.get("arguments_right") or 0) / total if total else float(bool(record["tool_call_match"]))
        return 1.0 if record["tool_call_match"] else 0.0
    if scored_by == "fields":
        if not record.get("valid_json", True):
            return 0.0
        fields = [key for key in record if key.startswith(FIELD_PREFIX) and not _is_missing(record[key])]
        return sum(bool(record[key]) for key in fields) / len(fields)
    return 1.0 if record.get(scored_by) else 0.0


def _scored_by(record: dict, metric: str | None) -> str:
    """Which of a record's scores example_score uses: "calls", a ROUGE score, "fields", "label_match" or "exact_match"."""
    if not _is_missing(record.get("tool_call_match")):
        return "calls"
    if metric in ROUGE_SCORES and not _is_missing(record.get(metric)):
        return metric
    if any(key.startswith(FIELD_PREFIX) and not _is_missing(record[key]) for key in record):
        return "fields"
    return "label_match" if not _is_missing(record.get("label_match")) else "exact_match"


# Scores that only rows expecting function calls have: the other rows do not count for them.
CALL_SCORES = ("tool_call_accuracy", "tool_name_accuracy", "tool_argument_accuracy", "tool_call_parse_rate")


def counts_for(record: dict, metric: str | None) -> bool:
    """Whether a row counts for this metric: the call scores count only rows that expect calls."""
    return metric not in CALL_SCORES or not _is_missing(record.get("tool_call_match"))


_MEANINGS = {
    "calls": "1 when the answer makes exactly the expected calls, else 0 (text answers: exact match)",
    "fields": "share of fields right (0 for an answer that is not valid JSON)",
    "label_match": "1 when the normalized label matches, else 0",
    "exact_match": "1 for an exact match, else 0",
}


def score_meaning(record: dict, metric: str | None = None) -> str:
    """What example_score measures on records like this one, in words."""
    scored_by = _scored_by(record, metric)
    return f"per-example score: {_MEANINGS.get(scored_by, f'{scored_by} F-measure')}"


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compare_examples(base_records: list[dict], finetuned_records: list[dict], metric: str | None = None) -> list[dict]:
    """Pair the base and finetuned records of the same test rows.

    Args:
        base_records: Per-example records of the base model's evaluation.
        finetuned_records: The finetuned model's records, same rows in the same order.
        metric: The promotion metric; a ROUGE score is compared per row (see example_score).

    Returns:
        One dict per row: input, expected, both outputs, both scores, per-field
        correctness of each, both latencies and `change` ("better", "worse", "same").

    Raises:
        ValueError: When the two evaluations are not of the same rows.
    """
    if len(base_records) != len(finetuned_records):
        raise ValueError(
            f"cannot compare evaluations of different rows: {len(base_records)} base vs"
            f" {len(finetuned_records)} finetuned examples"
        )
    rows = []
    for index, (base, tuned) in enumerate(zip(base_records, finetuned_records, strict=True)):
        if base["prompt"] != tuned["prompt"] or base["expected"] != tuned["expected"]:
            raise ValueError(f"cannot compare evaluations of different rows: row {index} differs")
        base_score, tuned_score = example_score(base, metric), example_score(tuned, metric)
        change = "better" if tuned_score > base_score else "worse" if tuned_score < base_score else "same"
        row = {
            "index": index,
            "prompt": base["prompt"],
            "expected": base["expected"],
            "base_output": base["output"],
            "finetuned_output": tuned["output"],
            "base_score": round(base_score, 4),
            "finetuned_score": round(tuned_score, 4),
            "change": change,
            "base_latency_s": base.get("latency_s"),
            "finetuned_latency_s": tuned.get("latency_s"),
            # Answers stopped by the generation cap (cut short: before the expected answer could fit).
            "base_hit_cap": bool(base.get("hit_cap", False)),
            "finetuned_hit_cap": bool(tuned.get("hit_cap", False)),
            "base_cut_short": bool(base.get("cut_short", False)),
            "finetuned_cut_short": bool(tuned.get("cut_short", False)),
        }
        for key in tuned:
            if key.startswith(FIELD_PREFIX):
                field = key[len(FIELD_PREFIX):]
                base_value = base.get(key)
                row[f"base_{field}"] = None if _is_missing(base_value) else bool(base_value)
                row[f"finetuned_{field}"] = None if _is_missing(tuned[key]) else bool(tuned[key])
        rows.append(row)
    return rows


def field_names(rows: list[dict]) -> list[str]:
    """The answer fields the comparison has per-field correctness for, in answer order."""
    keys = dict.fromkeys(key for row in rows for key in row)  # every row's fields: rows may differ
    return [key[len("finetuned_"):] for key in keys if key.startswith("finetuned_") and key not in (
        "finetuned_output", "finetuned_score", "finetuned_latency_s", "finetuned_hit_cap", "finetuned_cut_short")]


class ComparisonSummary(BaseModel):
    """Counts of better/worse/same rows, per-field fixes and breaks, and mean scores.

    A pydantic model so that ZenML stores it as JSON, readable in the dashboard.

    Attributes:
        examples: Test rows compared.
        better: Rows the finetuned model scores higher on.
        worse: Rows it scores lower on.
        same: Rows it scores the same on.
        mean_base_score: The base model's mean per-example score.
        mean_finetuned_score: The finetuned model's.
        base_hit_cap: Base answers stopped by the generation cap.
        finetuned_hit_cap: Finetuned answers stopped by it.
        base_cut_short: Base answers stopped before the expected answer could fit.
        finetuned_cut_short: Finetuned answers stopped before it could fit.
        fixed: Per answer field, rows the base model got wrong and the finetuned model right.
        broken: Per answer field, rows the base model got right and the finetuned model wrong.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: int
    better: int
    worse: int
    same: int
    mean_base_score: float
    mean_finetuned_score: float
    base_hit_cap: int
    finetuned_hit_cap: int
    base_cut_short: int
    finetuned_cut_short: int
    fixed: dict[str, int]
    broken: dict[str, int]

    def as_metadata(self) -> dict:
        """One flat dict of numbers for model-version metadata: "fixed/<field>" and "broken/<field>" per field."""
        flat = self.model_dump(mode="json", exclude={"fixed", "broken"})
        for field in self.fixed:
            flat[f"fixed/{field}"] = self.fixed[field]
            flat[f"broken/{field}"] = self.broken[field]
        return flat


def comparison_summary(rows: list[dict]) -> ComparisonSummary:
    """Count better/worse/same rows, per-field fixes and breaks, and mean scores.

    Args:
        rows: Output of compare_examples.
    """
    count = len(rows)
    fields = field_names(rows)
    return ComparisonSummary(
        examples=count,
        better=sum(row["change"] == "better" for row in rows),
        worse=sum(row["change"] == "worse" for row in rows),
        same=sum(row["change"] == "same" for row in rows),
        mean_base_score=round(sum(row["base_score"] for row in rows) / count, 4) if count else 0.0,
        mean_finetuned_score=round(sum(row["finetuned_score"] for row in rows) / count, 4) if count else 0.0,
        base_hit_cap=sum(row.get("base_hit_cap", False) for row in rows),
        finetuned_hit_cap=sum(row.get("finetuned_hit_cap", False) for row in rows),
        base_cut_short=sum(row.get("base_cut_short", False) for row in rows),
        finetuned_cut_short=sum(row.get("finetuned_cut_short", False) for row in rows),
        # Only rows that have the field on both sides: a missing one is neither fixed nor broken.
        fixed={field: sum(row.get(f"base_{field}") is False and row.get(f"finetuned_{field}") is True
                          for row in rows) for field in fields},
        broken={field: sum(row.get(f"base_{field}") is True and row.get(f"finetuned_{field}") is False
                           for row in rows) for field in fields},
    )


def _cell(text) -> str:
    return f"<td><pre>{escape(text)}</pre></td>"


def _output_cell(row: dict, side: str) -> str:
    """An answer, marked when the generation cap stopped it."""
    note = ("<br><small class='warn'>cut short by the cap</small>" if row.get(f"{side}_cut_short") else
            "<br><small class='warn'>stopped at the cap</small>" if row.get(f"{side}_hit_cap") else "")
    return f"<td><pre>{escape(row[f'{side}_output'])}</pre>{note}</td>"


def _mark(value) -> str:
    if value is None:
        return "<td>–</td>"
    return "<td class='ok'>&#10003;</td>" if value else "<td class='bad'>&#10007;</td>"


def render_comparison_html(rows: list[dict], score: str | None = None) -> str:
    """A self-contained HTML page: counts, per-field fixes/breaks, then every row, regressions first.

    Args:
        rows: Output of compare_examples.
        score: What the rows' scores measure (score_meaning of the records compared).

    Returns:
        The page, for the ZenML dashboard.
    """
    summary = comparison_summary(rows)
    fields = field_names(rows)
    order = {"worse": 0, "better": 1, "same": 2}
    ordered = sorted(rows, key=lambda row: (order[row["change"]], row["finetuned_score"], row["index"]))
    field_table = table([[field, summary.fixed[field], summary.broken[field]] for field in fields],
                        ["field", "fixed", "broken"])
    body = []
    for row in ordered:
        marks = "".join(_mark(row.get(f"base_{field}")) + _mark(row.get(f"finetuned_{field}")) for field in fields)
        body.append(
            f"<tr class='{row['change']}'><td>{row['index']}</td><td>{row['change']}</td>"
            f"<td>{row['base_score']:.2f} &rarr; {row['finetuned_score']:.2f}</td>"
            f"{_cell(row['prompt'])}{_cell(row['expected'])}{_output_cell(row, 'base')}{_output_cell(row, 'finetuned')}"
            f"{marks}<td>{number(row['base_latency_s'], 2)} / {number(row['finetuned_latency_s'], 2)}</td></tr>"
        )
    field_colspan = "".join(f"<th colspan='2'>{escape(field)}</th>" for field in fields)
    header = ("<tr><th>#</th><th>change</th><th>score</th><th>input</th><th>expected</th><th>base output</th>"
              f"<th>finetuned output</th>{field_colspan}<th>latency s<br>base / tuned</th></tr>")
    return page("Base vs finetuned", f"""<h2>Base vs finetuned, per example</h2>
<p>{summary.examples} test rows: <b>{summary.better} better</b>, <b>{summary.worse} worse</b>,
{summary.same} unchanged. Mean score {summary.mean_base_score:.3f} &rarr; {summary.mean_finetuned_score:.3f}
({escape(score or "per-example score: share of fields right for JSON answers, exact match otherwise")}).</p>
<p id="at-cap">Answers stopped by the generation cap: base {summary.base_hit_cap}, finetuned
{summary.finetuned_hit_cap}; cut short before the expected answer could fit: base {summary.base_cut_short},
finetuned {summary.finetuned_cut_short}{' &mdash; <b>those scores measure the cap, not the model: raise evaluation.max_new_tokens</b>' if summary.base_cut_short or summary.finetuned_cut_short else ''}.</p>
{f"<h3>Fields fixed and broken</h3>{field_table}" if fields else ""}
<h3>Rows (regressions first)</h3>
{table(body, header)}""")
