"""`python run.py --config <finetune yaml>`: check, run (or schedule) the finetune pipeline, report what it found."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from llm_lora.config import RunConfig
from llm_lora.errors import MachineError, check_machine
from llm_lora.memory_estimate import estimate_for_config
from llm_lora.metric_registry import METRICS, ordered_scores
from llm_lora.model_loading import resolve_model_source
from llm_lora.run_checks import check_data, check_export, check_models
from llm_lora.worth_it import summary_lines
from pipelines.commands import (
    CommandError, Options, check_schedule, check_schedule_stack, check_store, dry_run_line, failed_step_message,
    first_line, unique_suffix, use_stack,
)


def describe(config: RunConfig) -> str:
    """A few lines saying what the run will do; checks the model files on the way (`check_models`)."""
    check_models(config)
    data, training, lora, baselines = config.data, config.training, config.lora, config.baselines
    if data.hub_id:
        source = f"hub dataset {data.hub_id}" + (f" ({data.subset})" if data.subset else "")
    else:
        source = str(data.path) if data.path else " / ".join(
            path.name for path in (data.train_file, data.validation_file, data.test_file) if path is not None)
    compared = ["zero-shot"] + ([f"{baselines.few_shot_k}-shot (seed {baselines.few_shot_seed})"]
                                if baselines.few_shot_k else [])
    if baselines.reference_model is not None:
        compared.append(f"reference {baselines.reference_model.name}")
    compared += [f"recorded {entry.name} ({entry.answers_file.name})" for entry in baselines.recorded]
    return "\n".join([
        f"model     {config.model.name} ({resolve_model_source(config.model.name).kind}, {config.model.dtype})",
        f"data      {source}, format {data.format} (max rows {data.max_train_rows or 'all'}"
        f" / {data.max_validation_rows or 'all'} / {data.max_test_rows or 'all'})",
        f"lora      rank {lora.rank}, alpha {lora.alpha}, targets {lora.target_modules}",
        f"training  {training.method}, lr {training.learning_rate}, epochs {training.epochs},"
        f" batch {training.batch_size}x{training.gradient_accumulation_steps}, {training.precision},"
        f" {training.num_processes} process(es)",
        *([f"memory    {memory}"] if (memory := describe_memory(config)) else []),
        f"baselines {', '.join(compared)}",
        f"registry  ZenML model {config.registry.model_name!r}, promotion on {config.promotion.metric}"
        f" (+{config.promotion.min_gain_over_base} over"
        f" {'base' if config.promotion.must_beat == 'base' else 'the best baseline'})",
        *([f"export    {describe_export(config)}"] if config.export.formats else []),
    ])


def describe_memory(config: RunConfig) -> str | None:
    """The per-GPU peak memory estimate for rows of data.max_seq_length tokens, all of them labelled (an
    upper bound: the preflight report estimates it again on the prepared rows); None on a CPU run, with
    max_seq_length auto, or for a model whose architecture cannot be read."""
    length = config.data.max_seq_length
    if config.training.use_cpu or length == "auto":
        return None
    estimate = estimate_for_config(config, length, length, labelled_share=1.0)
    if estimate is None:
        return None
    return (f"at most {estimate.summary().removeprefix('~')} (rows of data.max_seq_length {length}, loss on"
            f" every token; the preflight report estimates it on the prepared rows)")


def describe_export(config: RunConfig) -> str:
    """The exports and where each is scored, in one line."""
    export = config.export
    parts = [f"merged {export.dtype} (scored in transformers)"] if "merged" in export.formats else []
    if export.gguf:
        parts.append(f"GGUF {', '.join(export.gguf_types)} (scored in llama.cpp"
                     f"{', with Ollama Modelfiles' if export.ollama else ''})")
    return "; ".join(parts) + f", within {export.tolerance:g} of the PyTorch score"


def check(config: RunConfig, config_path: Path, options: Options) -> str:
    """Everything that can fail before the pipeline starts; returns the --dry-run line."""
    if options.cron:
        check_schedule(options.cron)
    check_data(config)
    check_export(config)
    if options.stack_name or options.cron or not options.dry_run:
        check_store()
    if options.stack_name:
        use_stack(options.stack_name)
    if options.cron:
        check_schedule_stack()
    checked = ["config", "model files", *(name for name, given in
                                          (("stack", options.stack_name), ("schedule", options.cron)) if given)]
    if config.data.hub_id:
        return dry_run_line(config_path, checked, "; hub dataset rows are read by the pipeline")
    return dry_run_line(config_path, [*checked, "data rows"])


def run(config: RunConfig, config_path: Path, options: Options) -> None:
    """Run the pipeline now (and print what it found) or register its schedule."""
    from zenml.client import Client

    from steps.train_lora import hand_off_training_errors

    if Client().active_stack.orchestrator.config.is_local:  # the steps run here: this machine's GPUs count
        try:
            check_machine(config)
        except MachineError as exc:
            raise CommandError(str(exc)) from None
    run_name = None if options.cron else f"finetune-{unique_suffix()}"
    with tempfile.TemporaryDirectory(prefix="llm-lora-") as folder:
        error_file = hand_off_training_errors(Path(folder), options.debug)
        try:
            run = start_pipeline(config, options, run_name)
        except Exception as exc:  # the step logs above hold the details
            if options.debug:
                import traceback

                traceback.print_exc()
            raise CommandError(f"pipeline failed: {failure_message(exc, run_name, error_file)}") from None
    if options.cron:
        click.echo(f"\nScheduled: finetune with {config_path} at '{options.cron}' on stack"
                   f" {Client().active_stack_model.name!r}\nSee it:    zenml pipeline schedule list")
        return
    print_summary(run, config)


def start_pipeline(config: RunConfig, options: Options, run_name: str | None):
    """Build and run the finetune pipeline; returns the pipeline run (None when only scheduled)."""
    from zenml import Model
    from zenml.client import Client
    from zenml.config.schedule import Schedule
    from zenml.enums import ExecutionMode

    from pipelines import finetune
    from pipelines.remote import remote_options
    from steps.train_lora import launch_with_accelerate

    launch_with_accelerate(config.training)
    model = Model(name=config.registry.model_name, description=config.registry.description,
                  tags=config.registry.tags or None)
    settings: dict = {"model": model, "enable_cache": not options.no_cache}
    if run_name:
        settings["run_name"] = run_name
    # After a failed step nothing more runs (no training after a failed base evaluation), where the
    # orchestrator offers it; elsewhere train_lora's own dependency on evaluate_base still holds.
    if ExecutionMode.STOP_ON_FAILURE in Client().active_stack.orchestrator.supported_execution_modes:
        settings["execution_mode"] = ExecutionMode.STOP_ON_FAILURE
    if config.remote is not None:
        settings.update(remote_options(config.remote, gguf_export=config.export.gguf))
    if options.cron:
        settings["schedule"] = Schedule(name=f"{config.registry.model_name}-{options.cron}",
                                        cron_expression=options.cron)
    return finetune.with_options(**settings)(**config.sections(), force_promote=options.force_promote)


def failure_message(exc: Exception, run_name: str | None, error_file: Path) -> str:
    """Why the run failed, in one line: training's own reason, else the failed step's error, else ZenML's."""
    message = first_line(exc)
    if run_name:
        try:
            message = failed_step_message(run_name) or message
        except Exception:  # the store itself may be what failed; keep ZenML's message
            pass
    if error_file.is_file():  # training, in its own process, said why
        message = f"train_lora: {error_file.read_text().strip()}"
    if run_name:
        try:
            message += discard_failed_version(run_name)
        except Exception:  # the run failed; a store that cannot tidy up must not hide why
            pass
    return message


def discard_failed_version(run_name: str) -> str:
    """Delete the model version a failed finetune run registered, and say so (empty when there is none).

    The run, its step logs and its artifacts stay; only the version, which would otherwise sit in the
    registry with no stage and half its artifacts, goes. A version with a stage is never touched.
    """
    from zenml.client import Client

    client = Client()
    version = client.get_pipeline_run(run_name).model_version
    if version is None or version.stage is not None:
        return ""
    client.delete_model_version(version.id)
    return f" (model version {version.name} of this run removed; the run and its logs stay: zenml pipeline runs list)"


def print_summary(run, config: RunConfig) -> None:
    """Baselines vs finetuned metrics, the verdict, the model version and its stage, where to look next."""
    from zenml.client import Client

    from llm_lora.preflight import estimate_beside_actual

    def output(step: str, name: str):
        return run.steps[step].outputs[name][0].load()

    tuned = output("evaluate_finetuned", "metrics")
    training = output("train_lora", "training_metrics")
    decision = output("promote_model", "promotion_decision")
    # Zero-shot base model, then the baselines this config evaluates, finetuned last.
    columns = [("zero-shot", output("evaluate_base", "metrics"))]
    if "evaluate_few_shot" in run.steps:
        columns.append((f"{config.baselines.few_shot_k}-shot", output("evaluate_few_shot", "metrics")))
    if "evaluate_reference" in run.steps:
        columns.append(("reference", output("evaluate_reference", "metrics")))
    if "evaluate_recorded" in run.steps:  # other models' recorded answers, by their names
        columns += list(output("evaluate_recorded", "recorded_metrics").items())
    columns.append(("finetuned", tuned))
    # Every score the evaluation computed, headline scores in the registry's order, per-field after; then the cost.
    order = {name: index for index, name in enumerate(METRICS)}
    names = [*sorted(ordered_scores(tuned), key=lambda name: order.get(name, len(order))), "mean_latency_s"]
    names += ["tool_call_rows"] if "tool_call_rows" in tuned else []

    widths = [max(10, len(title)) for title, _ in columns]

    def row(title: str, cells) -> None:
        click.echo(f"{title:32}" + "".join(f" {cell:>{width}}" for cell, width in zip(cells, widths)))

    click.echo("")
    row("metric", (title for title, _ in columns))
    for name in names:
        row(name, (("-" if name not in metrics else f"{metrics[name]:.0f}" if name == "tool_call_rows"
                    else f"{metrics[name]:.3f}") for _, metrics in columns))
    for name in ("mean_prompt_tokens", "mean_new_tokens"):
        row(name, (f"{metrics[name]:.1f}" if name in metrics else "-" for _, metrics in columns))
    # How the answers ended: stopped by the cap (evaluation.max_new_tokens), and of those cut short
    # before the expected answer could fit (scores that measure the cap, not the model).
    for name, rate in (("answers at max_new_tokens", "hit_cap_rate"), ("answers cut short", "cut_short_rate")):
        row(name, (f"{round(metrics.get(rate, 0.0) * metrics['num_examples'])}/{metrics['num_examples']:.0f}"
                   for _, metrics in columns))
    row("max_new_tokens", (f"{metrics['max_new_tokens']:.0f}" if "max_new_tokens" in metrics else "-"
                           for _, metrics in columns))
    preflight = output("preflight_report", "run_estimate")
    for line in preflight.settings:
        if line.startswith("evaluation.max_new_tokens:"):  # the cap behind the answers counted above, and why
            click.echo(f"cap:      {line}")
    for line in preflight.findings:
        click.echo(f"preflight: {line}")
    comparison = output("compare_models", "comparison_summary")
    click.echo(f"\nexamples: {comparison.better} better, {comparison.worse} worse,"
               f" {comparison.same} unchanged (model_comparison artifact: regressions first)")
    click.echo(
        f"training: {training['optimizer_steps']} steps, {training['train_runtime_s']:.0f} s,"
        f" {training['train_tokens_per_s']:.0f} tokens/s, mean loss {training['train_loss']:.3f}"
        + (f", resumed from step {training['resumed_from_step']}" if training.get("resumed_from_step") else "")
        + (f", kept step {training['best_step']}" if "best_step" in training else "")
        + (", stopped early" if training.get("stopped_early") else "")
    )
    click.echo(f"estimate: {estimate_beside_actual(preflight, training)}")
    for line in summary_lines(output("worth_it_report", "worth_it")):
        click.echo(line)
    exported = next((step for step in ("export_gguf", "export_merged") if step in run.steps), None)
    if exported:
        report = output(exported, "export_report")
        scores = ", ".join(f"{check.format} {check.type} {check.score:.3f} ({check.difference:+.3f},"
                           f" {check.tokens_per_second:.0f} tokens/s)" for check in report.checks)
        click.echo(f"export:   {report.metric} in each engine vs PyTorch {report.pytorch_score:.3f}: "
                   f"{scores or 'merged only, not scored'} (export_parity artifact)")
    model_name = config.registry.model_name
    stage = Client().get_model_version(model_name, run.model_version.id).stage
    verdict = "promoted" if decision.promote else "not promoted to production"
    click.echo(f"model:    {model_name} version {run.model_version.name}, stage {stage or 'none'} ({verdict})")
    click.echo(f"why:      {decision.reason}")
    if decision.production is not None:
        click.echo(f"compared: production {decision.production_source}")
    click.echo(f"run:      {run.name}")
    click.echo(where_to_look(run, model_name))


def where_to_look(run, model_name: str) -> str:
    """Where the run is visible: its dashboard page when a server records it, else how to get one."""
    from zenml.client import Client
    from zenml.utils.dashboard_utils import get_run_url

    lines = [f"\nstack:     {Client().active_stack_model.name}",
             f"See it:    zenml pipeline runs list; zenml model version list --model {model_name}"]
    url = get_run_url(run) if Client().zen_store.type.value == "rest" else None
    lines.append(f"Dashboard: {url}" if url else
                 "Dashboard: zenml login --local  (then open http://127.0.0.1:8237; runs started after that show there)")
    return "\n".join(lines)
