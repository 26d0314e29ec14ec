"""Watching a served model version: its traffic, its score on newly labelled rows, and what to do about them.

The deployment writes one record per request (`llm_lora.serving.request_record`). The monitor reads a
window of them and reports volume, refusals, latency percentiles, the parse rate and whether the served
prompts' lengths have drifted from the training rows' (a two-sample Kolmogorov-Smirnov test). It
re-scores the version on labelled rows it has not learnt from, with the metrics of its training
evaluation, against the score it was promoted on. `decide` turns the checks into one action, with its
reasons: nothing to do, an alert, or a retrain (whose new version then meets the usual promotion gate).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from llm_lora.config import DataConfig, MonitorThresholds, NewRowsSettings
from llm_lora.data_formats import Example, RowError, to_example
from llm_lora.data_preparation import read_source
from llm_lora.data_sources import SUFFIXES, DataError, RawRows, read_file, read_hub


class MonitorError(DataError):
    """Monitor input that cannot be used (no request log, an empty window, bad labelled rows); one line."""


class _Record(BaseModel):
    # Frozen, and stored by ZenML as JSON (readable on the dashboard).
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------- the request log


@dataclass
class RequestWindow:
    """The request records of one time window.

    Attributes:
        log: The request log file.
        start: The window's start (exclusive), UTC.
        end: Its end (inclusive), UTC.
        records: The records whose time falls in the window, in the log's order.
        unreadable: Lines of the whole log that are not a record (not JSON, or no time).
    """

    log: Path
    start: datetime
    end: datetime
    records: list[dict]
    unreadable: int = 0


def _record_time(record: dict) -> datetime | None:
    try:
        time = datetime.fromisoformat(str(record["time"]))
    except (KeyError, ValueError):
        return None
    return time if time.tzinfo else time.replace(tzinfo=timezone.utc)


def read_request_window(path: Path, hours: float, end: str = "now", now: datetime | None = None) -> RequestWindow:
    """The records of the `hours` before `end` in a deployment's request log.

    Args:
        path: The log (`deploy.request_log`): one JSON record per line.
        hours: The window's length.
        end: "now" (the window ends at `now`) or "newest" (at the log's newest record).
        now: The present, UTC (tests pass one); None: the clock's.

    Raises:
        MonitorError: No log file, no records in it, or none in the window; the message says which.
    """
    if not path.is_file():
        raise MonitorError(f"monitor.request_log: {path} not found; set the deployment's deploy.request_log to"
                           " this file (configs/deploy.yaml) and let it serve")
    timed: list[tuple[datetime, dict]] = []
    unreadable = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write: counted, not fatal
                unreadable += 1
                continue
            time = _record_time(record) if isinstance(record, dict) else None
            if time is None:
                unreadable += 1
                continue
            timed.append((time, record))
    if not timed:
        raise MonitorError(f"{path}: no request records" + (f" ({unreadable} unreadable lines)" if unreadable else
                                                            " (the deployment has not served a request yet)"))
    newest = max(time for time, _ in timed)
    stop = newest if end == "newest" else (now or datetime.now(timezone.utc))
    start = stop - timedelta(hours=hours)
    records = [record for time, record in timed if start < time <= stop]
    if not records:
        raise MonitorError(
            f"{path}: no requests between {start:%Y-%m-%d %H:%M} and {stop:%Y-%m-%d %H:%M} UTC"
            f" (monitor.window_hours: {hours:g}); the newest record is from {newest:%Y-%m-%d %H:%M} UTC"
        )
    return RequestWindow(path, start, stop, records, unreadable)


# ---------------------------------------------------------------------------------------------- traffic and drift


class LengthDrift(_Record):
    """Served prompt lengths against the training rows', in the version's tokens.

    Attributes:
        available: Whether both sides have lengths (records written before deployments recorded
            `input_tokens` have none).
        note: Why the test was not run, or "".
        served_inputs: Served inputs with a recorded length.
        training_rows: Training rows compared with.
        statistic: Kolmogorov-Smirnov D: the largest gap between the two length distributions (0..1).
        p_value: Its p-value (two-sided).
        served_median, training_median: Median prompt tokens of each side.
        drifted: p below the threshold, D at least its minimum, enough served inputs.
    """

    available: bool
    note: str = ""
    served_inputs: int = 0
    training_rows: int = 0
    statistic: float | None = None
    p_value: float | None = None
    served_median: float | None = None
    training_median: float | None = None
    drifted: bool = False


def length_drift(served: list[int], training: list[int], thresholds: MonitorThresholds) -> LengthDrift:
    """Whether served prompts are longer or shorter than the training rows: a two-sample KS test.

    Kolmogorov-Smirnov compares the whole distributions (a longer tail counts, not only the median);
    on token counts, which repeat, its p-value errs on the high side: fewer false alarms.
    """
    if not training:
        return LengthDrift(available=False, note="no training rows' lengths (the version's prepared data is missing)",
                           served_inputs=len(served))
    if not served:
        return LengthDrift(available=False, training_rows=len(training),
                           note="no served lengths: records written before deployments recorded input_tokens")
    from scipy.stats import ks_2samp

    result = ks_2samp(served, training)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    enough = len(served) >= thresholds.drift_min_inputs
    return LengthDrift(
        available=True, served_inputs=len(served), training_rows=len(training), statistic=round(statistic, 4),
        p_value=p_value, served_median=float(statistics.median(served)),
        training_median=float(statistics.median(training)),
        drifted=enough and p_value < thresholds.drift_p_value and statistic >= thresholds.drift_min_statistic,
        note="" if enough else f"only {len(served)} served inputs; the test decides from"
                               f" {thresholds.drift_min_inputs} (thresholds.drift_min_inputs)",
    )


def prompt_token_counts(tokenizer, prompt_texts: list[str]) -> list[int]:
    """Tokens of each formatted prompt, counted as generation counts a served prompt's."""
    return [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in prompt_texts]


class TrafficCheck(_Record):
    """A window of a deployment's requests, summarized.

    Attributes:
        log: The request log.
        start, end: The window (ISO times, UTC).
        requests, answered, refused: Requests in the window, and how many were answered or refused.
        inputs: Inputs answered (a request may carry several).
        latency_p50_s, latency_p95_s, latency_p99_s: Request latency percentiles (answered requests).
        parse_rate: Share of answers that parsed as JSON objects.
        json_answers: Whether the version was trained to answer JSON objects (its training answers all
            are); a free-text version's parse rate means nothing. None: unknown (no training rows).
        hit_cap_rate: Share of answers stopped by the answer cap.
        versions: Requests per answering version label.
        unreadable_lines: Lines of the log that are not a record.
        drift: Input-length drift against the training rows.
    """

    log: str
    start: str
    end: str
    requests: int
    answered: int
    refused: int
    inputs: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    parse_rate: float | None
    json_answers: bool | None = None
    hit_cap_rate: float | None
    versions: dict[str, int]
    unreadable_lines: int
    drift: LengthDrift

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.requests if self.requests else 0.0


def check_traffic(window: RequestWindow, training_lengths: list[int], thresholds: MonitorThresholds,
                  json_answers: bool | None = None) -> TrafficCheck:
    """Volume, refusals, latency, parse rate, answers cut by the cap and input-length drift of a window.

    `json_answers`: whether the version answers JSON objects (`TrafficCheck.json_answers`).
    """
    from llm_lora.serving import summarize_requests

    summary = summarize_requests(window.records)
    answered = [r for r in window.records if r.get("status") == 200]
    served = [int(n) for r in answered for n in (r.get("input_tokens") or [])]
    versions: dict[str, int] = {}
    for record in window.records:
        label = str(record.get("model_version", "unknown"))
        versions[label] = versions.get(label, 0) + 1
    return TrafficCheck(
        log=str(window.log), start=window.start.isoformat(timespec="seconds"),
        end=window.end.isoformat(timespec="seconds"), requests=summary["requests"], answered=summary["answered"],
        refused=summary["refused"], inputs=summary["inputs"], latency_p50_s=summary["latency_s_p50"],
        latency_p95_s=summary["latency_s_p95"], latency_p99_s=summary["latency_s_p99"],
        parse_rate=summary["parsed_rate"], json_answers=json_answers,
        hit_cap_rate=round(summary["hit_cap"] / summary["inputs"], 4) if summary["inputs"] else None,
        versions=versions, unreadable_lines=window.unreadable,
        drift=length_drift(served, training_lengths, thresholds),
    )


# ---------------------------------------------------------------------------------------------- labelled rows


@dataclass
class LabelledRows:
    """Labelled rows as canonical examples, and where they came from."""

    examples: list[Example]
    source: str


def read_labelled_rows(settings: NewRowsSettings, data: DataConfig) -> LabelledRows:
    """Read newly labelled rows with the loaders and format checks of training data.

    Args:
        settings: The YAML's `new_rows` section (paths absolute).
        data: The monitored version's data section: its format and column names.

    Raises:
        MonitorError: A missing file or folder, an unreadable line, or a row that does not fit the format;
            the message names file and line. An empty folder is no error: nothing is labelled yet.
    """
    if settings.hub_id is not None:
        source = f"hub dataset {settings.hub_id}" + (f"@{settings.revision}" if settings.revision else "")
        try:
            raws = [read_hub(settings.hub_id, settings.subset, settings.revision, {"train": settings.split})["train"]]
        except DataError as exc:
            reason = str(exc).removeprefix("data.hub_splits.train: ").removeprefix("data.hub_id: ")
            raise MonitorError(f"new_rows: {reason}") from None
    else:
        path = Path(settings.path)
        if not path.exists():
            raise MonitorError(f"new_rows.path: {path} not found; name the file or folder the labelled rows go to")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES) \
            if path.is_dir() else [path]
        source = f"{path} ({len(files)} file{'s' if len(files) != 1 else ''})" if path.is_dir() else str(path)
        try:
            raws = [read_file(file) for file in files]
        except DataError as exc:
            raise MonitorError(str(exc)) from None
    examples = []
    for raw in raws:
        if raw.bad:
            where, reason = raw.bad[0]
            raise MonitorError(f"{where}: {reason}")
        for row, where in raw.rows:
            try:
                examples.append(to_example(row, data.format, data.columns, where))
            except RowError as exc:
                raise MonitorError(
                    f"{where}: {exc} (new rows are read like the version's training rows: data.format"
                    f" {data.format}" + (f", data.columns {data.columns}" if data.columns else "") + ")"
                ) from None
    return LabelledRows(examples, source)


def input_key(example: Example, system_prompt: str | None) -> tuple:
    """What makes two rows the same input: the system prompt the model sees, the turns and the tools."""
    return example.input_key(system_prompt)


def source_inputs(data: DataConfig) -> set[tuple]:
    """The inputs of every split of a data source (what a version trained, validated and was tested on).

    Raises:
        MonitorError: The source cannot be read any more.
    """
    try:
        raws: dict[str, RawRows] = read_source(data)[0]
    except DataError as exc:
        raise MonitorError(f"the monitored version's own data cannot be read ({exc}); without it new rows cannot"
                           " be told from those it learnt from") from None
    keys = set()
    for raw in raws.values():
        for row, where in raw.rows:
            try:
                keys.add(input_key(to_example(row, data.format, data.columns, where), data.system_prompt))
            except RowError:  # a bad row was never trained on
                continue
    return keys


def new_examples(examples: list[Example], seen: set[tuple], system_prompt: str | None) -> list[Example]:
    """The examples whose input is not among `seen`, each input once (the first labelling counts)."""
    kept, keys = [], set(seen)
    for example in examples:
        key = input_key(example, system_prompt)
        if key not in keys:
            keys.add(key)
            kept.append(example)
    return kept


def rows_fingerprint(examples: list[Example]) -> str:
    """A short hash of a set of labelled rows (order ignored): tells whether a retrain already had them."""
    digest = hashlib.sha256()
    for key in sorted(json.dumps([e.system, e.context, e.completion]) for e in examples):
        digest.update(key.encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- the score


def promoted_score(metadata: dict) -> tuple[str | None, float | None, str]:
    """The metric and score a version was promoted on, from its registry metadata, and where they came from.

    The promotion gate records its metric and the version's score (`promotion`); a version put into
    production otherwise has only its evaluation (`finetuned`), read with the gate's automatic metric.
    """
    from llm_lora.metric_registry import auto_promotion_metric

    promotion, evaluated = metadata.get("promotion"), metadata.get("finetuned")
    if isinstance(promotion, dict) and "metric" in promotion and "candidate" in promotion:
        return promotion["metric"], float(promotion["candidate"]), "its promotion (its test rows)"
    if isinstance(evaluated, dict):
        metric = auto_promotion_metric(evaluated)
        if metric is not None:
            return metric, float(evaluated[metric]), "its evaluation (its test rows)"
    return None, None, "no recorded evaluation"


class ScoreCheck(_Record):
    """The monitored version re-scored on labelled rows it has not learnt from.

    Attributes:
        source: Where the labelled rows came from.
        labelled_rows: Rows read.
        new_rows: Of those, rows whose input the version's own data does not hold.
        scored_rows: New rows scored (new_rows.max_score_rows caps them).
        fingerprint: `rows_fingerprint` of the new rows.
        metric: The metric the version was promoted on.
        promoted: Its score then, and `promoted_source` says from where.
        score: Its score on the new rows (None: nothing scored).
        metrics: Every metric of that evaluation.
        unmeasured: Why the score measures nothing (answers cut short by the cap), or None.
    """

    source: str
    labelled_rows: int
    new_rows: int
    scored_rows: int
    fingerprint: str
    metric: str | None
    promoted: float | None
    promoted_source: str
    score: float | None = None
    metrics: dict[str, float] = {}
    unmeasured: str | None = None

    @property
    def drop(self) -> float | None:
        """How far the score fell below the promoted one (negative: it rose)."""
        return None if self.score is None or self.promoted is None else round(self.promoted - self.score, 4)


# ---------------------------------------------------------------------------------------------- the decision


class Check(_Record):
    """One check of the monitor: its verdict and the line that says why, with the numbers.

    `status` is "ok", "alert" or "retrain" (what the check asks for), or "info" (reported, decides nothing).
    """

    name: str
    status: Literal["ok", "info", "alert", "retrain"]
    line: str


class MonitorDecision(_Record):
    """What the monitor decided for a version, and why.

    Attributes:
        action: "nothing", "alert" or "retrain".
        reasons: The lines behind the action (for nothing: every check, each within its threshold).
        checks: Every check, in the report's order.
        version: The monitored version's label.
        fingerprint: The new rows' fingerprint (a retrain on them is recorded under it).
    """

    action: Literal["nothing", "alert", "retrain"]
    reasons: list[str]
    checks: list[Check]
    version: str
    fingerprint: str = ""

    def line(self) -> str:
        """The decision in one line, e.g. "alert: parse rate 0.62 is below 0.95"."""
        return f"{'nothing to do' if self.action == 'nothing' else self.action}: {'; '.join(self.reasons)}"

    def as_metadata(self) -> dict:
        """A flat, JSON-ready summary for the model version's metadata."""
        return {"action": self.action, "reasons": self.reasons, "line": self.line(),
                "checks": {check.name: f"{check.status}: {check.line}" for check in self.checks}}


def _traffic_checks(traffic: TrafficCheck, thresholds: MonitorThresholds) -> list[Check]:
    checks = []
    refusals = traffic.refusal_rate
    checks.append(Check(
        name="volume", status="alert" if refusals > thresholds.max_refusal_rate else "ok",
        line=f"{traffic.requests} requests ({traffic.inputs} inputs), {traffic.refused} refused"
             f" ({refusals:.1%}; at most {thresholds.max_refusal_rate:.1%})"))
    if traffic.parse_rate is None:
        checks.append(Check(name="parse_rate", status="info", line="no answered inputs: parse rate unknown"))
    elif traffic.json_answers is False:
        checks.append(Check(name="parse_rate", status="info",
                            line=f"parse rate {traffic.parse_rate:.3f} not judged: the version answers free text"
                                 " (its training answers are not JSON objects)"))
    else:
        low = traffic.parse_rate < thresholds.min_parse_rate
        checks.append(Check(name="parse_rate", status="alert" if low else "ok",
                            line=f"parse rate {traffic.parse_rate:.3f} {'is below' if low else 'at least'}"
                                 f" {thresholds.min_parse_rate:.3f}"))
    p95 = traffic.latency_p95_s
    if thresholds.max_latency_p95_s is None or p95 is None:
        checks.append(Check(name="latency", status="info",
                            line=f"latency p50 {_seconds(traffic.latency_p50_s)}, p95 {_seconds(p95)}"
                                 f" (not checked: thresholds.max_latency_p95_s)"))
    else:
        slow = p95 > thresholds.max_latency_p95_s
        checks.append(Check(name="latency", status="alert" if slow else "ok",
                            line=f"latency p95 {p95:.2f} s {'is above' if slow else 'within'}"
                                 f" {thresholds.max_latency_p95_s:g} s (p50 {_seconds(traffic.latency_p50_s)})"))
    drift = traffic.drift
    if not drift.available:
        checks.append(Check(name="input_length", status="info", line=f"input-length drift unavailable: {drift.note}"))
    else:
        numbers = (f"median {drift.served_median:g} served vs {drift.training_median:g} training prompt tokens,"
                   f" KS D {drift.statistic:.3f}, p {drift.p_value:.2g}")
        if drift.drifted:
            checks.append(Check(name="input_length", status="alert", line=f"input lengths drifted: {numbers}"))
        else:
            checks.append(Check(name="input_length", status="ok" if not drift.note else "info",
                                line=f"no input-length drift: {numbers}" + (f" ({drift.note})" if drift.note else "")))
    return checks


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _score_checks(score: ScoreCheck | None, thresholds: MonitorThresholds) -> list[Check]:
    if score is None:
        return [Check(name="score", status="info", line="no new_rows section: production not re-scored")]
    checks = []
    count_line = f"{score.new_rows} new labelled rows ({score.labelled_rows} read from {score.source})"
    if thresholds.min_new_rows is not None and score.new_rows >= thresholds.min_new_rows:
        checks.append(Check(name="new_rows", status="retrain",
                            line=f"{count_line}: at least {thresholds.min_new_rows} (thresholds.min_new_rows)"))
    else:
        needed = (f", fewer than the {thresholds.min_new_rows} that retrain (thresholds.min_new_rows)"
                  if thresholds.min_new_rows is not None else "")
        checks.append(Check(name="new_rows", status="ok", line=count_line + needed))
    if score.score is None:
        why = ("no new rows to score" if not score.new_rows else
               f"the version has no recorded score ({score.promoted_source})" if score.metric is None else
               f"the new rows' evaluation has no {score.metric}")
        checks.append(Check(name="score", status="info", line=f"not re-scored: {why}"))
        return checks
    numbers = (f"{score.metric} {score.score:.4f} on {score.scored_rows} new rows vs {score.promoted:.4f} at"
               f" {score.promoted_source}: {-score.drop:+.4f}")
    if score.unmeasured:
        checks.append(Check(name="score", status="alert", line=f"{numbers}, inconclusive: {score.unmeasured}"))
    elif score.scored_rows < thresholds.min_score_rows:
        checks.append(Check(name="score", status="info",
                            line=f"{numbers} (fewer than {thresholds.min_score_rows} rows: not decided on)"))
    elif score.drop > thresholds.max_score_drop:
        checks.append(Check(name="score", status="retrain",
                            line=f"{numbers}: fell more than {thresholds.max_score_drop:g}"
                                 " (thresholds.max_score_drop)"))
    else:
        checks.append(Check(name="score", status="ok",
                            line=f"{numbers}: within {thresholds.max_score_drop:g} (thresholds.max_score_drop)"))
    return checks


def decide(
    traffic: TrafficCheck,
    score: ScoreCheck | None,
    thresholds: MonitorThresholds,
    version: str,
    can_retrain: bool = True,
    previous_retrain: dict | None = None,
) -> MonitorDecision:
    """Nothing to do, an alert or a retrain, with the reasons.

    Retrain when production's score on new labelled rows fell by more than `max_score_drop`, or when
    `min_new_rows` new rows have arrived. Traffic problems alone (refusals, parse rate, latency,
    input-length drift) and an inconclusive score alert: retraining on the same rows would not fix them.
    A retrain that cannot run (no finetune config, or these very rows were retrained on already
    without a new production version) becomes an alert that says so.

    Args:
        traffic: The request window's check.
        score: The re-score on new labelled rows (None: not configured).
        thresholds: The YAML's thresholds.
        version: The monitored version's label, for the record.
        can_retrain: Whether a finetune config is set (retrain.finetune_config).
        previous_retrain: The version's record of the last retrain the monitor started (its `fingerprint`,
            `run` and `promotion`), or None.
    """
    checks = _traffic_checks(traffic, thresholds) + _score_checks(score, thresholds)
    fingerprint = score.fingerprint if score is not None else ""
    retrain = [check.line for check in checks if check.status == "retrain"]
    alerts = [check.line for check in checks if check.status == "alert"]
    if retrain and not can_retrain:
        alerts = [*retrain, "retrain needed, but retrain.finetune_config is not set", *alerts]
        retrain = []
    if retrain and previous_retrain and fingerprint and previous_retrain.get("fingerprint") == fingerprint:
        alerts = [*retrain, f"these new rows were retrained on already (run {previous_retrain.get('run')}:"
                            f" {previous_retrain.get('promotion', 'no decision')}); look at the rows or the finetune"
                            " config", *alerts]
        retrain = []
    if retrain:
        return MonitorDecision(action="retrain", reasons=retrain + alerts, checks=checks, version=version,
                               fingerprint=fingerprint)
    if alerts:
        return MonitorDecision(action="alert", reasons=alerts, checks=checks, version=version, fingerprint=fingerprint)
    return MonitorDecision(action="nothing", reasons=[check.line for check in checks], checks=checks, version=version,
                           fingerprint=fingerprint)


class RetrainResult(_Record):
    """What a retrain started by the monitor did.

    Attributes:
        started: Whether a finetune run was started (only for a "retrain" decision).
        run: The finetune run's name.
        config: The finetune YAML it ran (the retrain folder's copy, naming the combined rows).
        train_rows: Rows in its train file (new labelled rows first).
        new_rows: Labelled rows added to the finetune config's own.
        version: The model version it made.
        stage: The stage the promotion gate gave it ("none" for none).
        promotion: The gate's reason.
        error: Why the run failed, in one line (then nothing was promoted).
    """

    started: bool
    run: str | None = None
    config: str | None = None
    train_rows: int = 0
    new_rows: int = 0
    version: str | None = None
    stage: str | None = None
    promotion: str | None = None
    error: str | None = None

    def outcome(self) -> str:
        """What came of the run: the version and its stage with the gate's reason, or why it failed."""
        if not self.started:
            return "no finetune run started"
        if self.error:
            return f"failed: {self.error}"
        return f"version {self.version}, stage {self.stage} ({self.promotion})"

    def line(self) -> str:
        """The retrain in one line."""
        return f"finetune run {self.run}: {self.outcome()}" if self.started and self.run else self.outcome()


# ---------------------------------------------------------------------------------------------- the report


def render_monitor_report(decision: MonitorDecision, traffic: TrafficCheck, score: ScoreCheck | None) -> str:
    """The monitor's page: the decision and its reasons, every check, the traffic figures, the re-score."""
    from llm_lora.html_pages import escape, number, page, table

    css = {"nothing": "yes", "alert": "unsure", "retrain": "no"}[decision.action]
    title = {"nothing": "Nothing to do", "alert": "Alert", "retrain": "Retrain"}[decision.action]
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in decision.reasons)
    head = (f"<h2>Monitor: {escape(decision.version)}</h2>"
            f"<div class='decision {css}' id='decision'><b>{title}</b><ul>{reasons}</ul></div>")
    status_css = {"ok": "ok", "info": "", "alert": "warn", "retrain": "bad"}
    rows = [f"<tr><td>{escape(check.name)}</td><td class='{status_css[check.status]}'>{escape(check.status)}</td>"
            f"<td>{escape(check.line)}</td></tr>" for check in decision.checks]
    checks = table(rows, ["check", "status", "numbers"], element_id="checks")
    drift = traffic.drift
    figures = table([
        ["window", f"{traffic.start} to {traffic.end}"], ["requests", traffic.requests], ["answered", traffic.answered],
        ["refused", traffic.refused], ["inputs", traffic.inputs], ["latency p50 (s)", number(traffic.latency_p50_s)],
        ["latency p95 (s)", number(traffic.latency_p95_s)], ["latency p99 (s)", number(traffic.latency_p99_s)],
        ["parse rate", number(traffic.parse_rate)], ["answers cut by the cap", number(traffic.hit_cap_rate)],
        ["served prompt tokens, median", number(drift.served_median, 1)],
        ["training prompt tokens, median", number(drift.training_median, 1)],
        ["KS statistic D", number(drift.statistic)],
        ["KS p-value", "–" if drift.p_value is None else f"{drift.p_value:.3g}"],
        ["served inputs with a length", drift.served_inputs], ["unreadable log lines", traffic.unreadable_lines],
    ], ["", ""], css="figures", element_id="traffic")
    versions = ", ".join(f"{label}: {count}" for label, count in traffic.versions.items())
    body = (head + "<h3>Checks</h3>" + checks
            + f"<h3>Requests</h3><p>{escape(traffic.log)}; {escape(versions)}</p>" + figures)
    if score is not None:
        body += "<h3>Re-score on new labelled rows</h3>" + table([
            ["source", score.source], ["labelled rows", score.labelled_rows], ["new rows", score.new_rows],
            ["scored rows", score.scored_rows], ["metric", score.metric or "–"],
            [f"score at {score.promoted_source}", number(score.promoted, 4)],
            ["score on new rows", number(score.score, 4)],
            ["change", "–" if score.drop is None else number(-score.drop, 4, signed=True)],
        ], ["", ""], css="figures", element_id="score")
    return page(f"Monitor: {decision.version}", body)
