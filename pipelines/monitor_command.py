"""`python run.py --config <monitor yaml>`: check, run (or schedule) the monitor pipeline, say what it decided."""

from __future__ import annotations

from pathlib import Path

import click

from llm_lora.config import ConfigError, MonitorConfig, RunConfig, load_config
from llm_lora.monitoring import read_labelled_rows, read_request_window
from pipelines.commands import (
    CommandError, Options, check_schedule, check_schedule_stack, check_store, check_version, dry_run_line,
    failed_step_message, first_line, unique_suffix, use_stack,
)


def describe(config: MonitorConfig) -> str:
    """What the monitor will watch and what it may do."""
    settings, new_rows, thresholds, retrain = config.monitor, config.new_rows, config.thresholds, config.retrain
    rows = "none (production is not re-scored)" if new_rows is None else str(new_rows.path or new_rows.hub_id) + (
        f"@{new_rows.revision}" if new_rows.revision else "")
    return "\n".join([
        f"model     ZenML model {settings.model_name!r}, version {settings.version!r}",
        f"requests  {settings.request_log}, the {settings.window_hours:g} hours before"
        f" {'now' if settings.window_end == 'now' else 'the newest record'}",
        f"new rows  {rows}",
        f"retrain   when the score falls more than {thresholds.max_score_drop:g} or"
        f" {thresholds.min_new_rows or 'unlimited'} new rows arrive: "
        + (f"{retrain.finetune_config} + the new rows" if retrain.finetune_config else "not set (alert instead)"),
        f"alert     parse rate below {thresholds.min_parse_rate:g}, refusals above {thresholds.max_refusal_rate:g},"
        f" input-length drift (KS p < {thresholds.drift_p_value:g}, D >= {thresholds.drift_min_statistic:g})"
        + (f", latency p95 above {thresholds.max_latency_p95_s:g} s" if thresholds.max_latency_p95_s else ""),
    ])


def check(config: MonitorConfig, config_path: Path, options: Options) -> str:
    """The version, the finetune config, and (unless scheduled) the request window and the new rows."""
    if options.cron:
        check_schedule(options.cron)
    finetune = config.retrain.finetune_config
    if finetune is not None:
        try:
            loaded = load_config(finetune)
        except ConfigError as exc:
            raise CommandError(f"{config_path}: retrain.finetune_config: {exc}") from None
        if not isinstance(loaded, RunConfig):
            raise CommandError(f"{config_path}: retrain.finetune_config: {finetune} is not a finetune config")
    check_store()
    if options.stack_name:
        use_stack(options.stack_name)
    if options.cron:
        check_schedule_stack()
    served = check_version(config.monitor.model_name, config.monitor.version, "monitor.version")
    checked = ["config", "model version", *(name for name, given in
                                            (("stack", options.stack_name), ("schedule", options.cron)) if given)]
    if options.cron:  # the log and the rows are read when the schedule fires; they may not exist yet
        return dry_run_line(config_path, checked, "; the request log and new rows are read when it runs")
    settings, new_rows = config.monitor, config.new_rows
    read_request_window(settings.request_log, settings.window_hours, settings.window_end)
    checked.append("request window")
    if new_rows is not None and new_rows.hub_id is not None:  # reading them may mean a download
        return dry_run_line(config_path, checked, "; hub dataset rows are read by the pipeline")
    if new_rows is not None:
        read_labelled_rows(new_rows, served.data)
        checked.append("new rows")
    return dry_run_line(config_path, checked)


def run(config: MonitorConfig, config_path: Path, options: Options) -> None:
    """Run the monitor now (and print what it decided) or register its schedule."""
    from zenml import Model
    from zenml.client import Client
    from zenml.config.schedule import Schedule

    from pipelines import monitor

    settings = config.monitor
    run_name = None if options.cron else f"monitor-{unique_suffix()}"
    # The monitored version is the run's model: ZenML resolves a stage once, when the run starts, so a
    # retrain that promotes a new version mid-run leaves the record on the version that was watched.
    pipeline_options: dict = {"model": Model(name=settings.model_name, version=settings.version)}
    if run_name:
        pipeline_options["run_name"] = run_name
    if options.cron:
        pipeline_options["schedule"] = Schedule(name=f"{settings.model_name}-monitor-{options.cron}",
                                                cron_expression=options.cron)
    try:
        run = monitor.with_options(**pipeline_options)(**config.model_dump(mode="json"))
    except Exception as exc:  # the step logs above hold the details
        message = first_line(exc)
        if run_name:
            try:
                message = failed_step_message(run_name) or message
            except Exception:  # the store itself may be what failed
                pass
        raise CommandError(f"pipeline failed: {message}") from None
    if options.cron:
        click.echo(f"\nScheduled: monitor with {config_path} at '{options.cron}' on stack"
                   f" {Client().active_stack_model.name!r}\nSee it:    zenml pipeline schedule list")
        return
    print_summary(run)


def print_summary(run) -> None:
    """The window's figures, the re-score, the decision and its reasons, and a retrain's outcome."""
    def output(step: str, name: str):
        return run.steps[step].outputs[name][0].load()

    traffic = output("check_traffic", "traffic_check")
    decision = output("decide_action", "monitor_decision")
    drift = traffic.drift
    click.echo(f"\nwindow:   {traffic.start} to {traffic.end}: {traffic.requests} requests, {traffic.inputs} inputs,"
               f" {traffic.refused} refused")
    click.echo(f"latency:  p50 {_number(traffic.latency_p50_s)} s, p95 {_number(traffic.latency_p95_s)} s,"
               f" p99 {_number(traffic.latency_p99_s)} s")
    click.echo(f"answers:  parse rate {_number(traffic.parse_rate)}, cut by the cap {_number(traffic.hit_cap_rate)}")
    if drift.available:
        click.echo(f"lengths:  median {drift.served_median:g} served vs {drift.training_median:g} training prompt"
                   f" tokens; KS D {drift.statistic:.3f}, p {drift.p_value:.3g} ({drift.served_inputs} vs"
                   f" {drift.training_rows})")
    else:
        click.echo(f"lengths:  drift unavailable: {drift.note}")
    if "rescore_production" in run.steps:
        score = output("rescore_production", "score_check")
        click.echo(f"rows:     {score.labelled_rows} labelled, {score.new_rows} new to the version, {score.scored_rows}"
                   f" scored ({score.source})")
        if score.score is not None:
            click.echo(f"score:    {score.metric} {score.score:.4f} on the new rows vs {score.promoted:.4f} at"
                       f" {score.promoted_source} ({-score.drop:+.4f})")
    click.echo(f"decision: {decision.line()}")
    if "retrain_model" in run.steps:
        result = output("retrain_model", "retrain_result")
        if result.started:
            click.echo(f"retrain:  {result.line()}")
    click.echo(f"run:      {run.name} (monitor_report artifact)")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
