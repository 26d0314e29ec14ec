"""`python run.py --config <inference yaml>`: answer a file of inputs with a registered model version."""

from __future__ import annotations

from pathlib import Path

import click

from llm_lora.config import InferenceConfig
from llm_lora.data_sources import DataError
from llm_lora.inference import read_input_file, read_inference_rows
from pipelines.commands import CommandError, Options, check_store, check_version, dry_run_line, unique_suffix, use_stack


def describe(config: InferenceConfig) -> str:
    """What an inference run will do."""
    settings = config.inference
    return "\n".join([
        f"model     ZenML model {settings.model_name!r}, version {settings.version!r}",
        f"input     {settings.input_file}",
        f"output    {settings.output_file}",
    ])


def check(config: InferenceConfig, config_path: Path, options: Options) -> str:
    """The input rows, read as the version's training run formats them (its config is in the registry)."""
    if options.cron:
        raise CommandError("--schedule: schedules are for the finetune and monitor pipelines")
    settings = config.inference
    try:
        read_input_file(settings.input_file)
        check_store()
        if options.stack_name:
            use_stack(options.stack_name)
        read_inference_rows(settings.input_file, check_version(settings.model_name, settings.version,
                                                               "inference.version"))
    except DataError as exc:
        raise CommandError(str(exc)) from None
    checked = ["config", "model version", *(["stack"] if options.stack_name else []), "data rows"]
    return dry_run_line(config_path, checked)


def run(config: InferenceConfig, config_path: Path, options: Options) -> None:
    """Run the batch inference pipeline (never cached: the registry's versions move) and report."""
    from pipelines import batch_inference

    run_name = f"batch_inference-{unique_suffix()}"
    try:
        run = batch_inference.with_options(enable_cache=False, run_name=run_name)(inference_json=config.to_json())
    except Exception as exc:  # the step logs above hold the details
        from pipelines.commands import failed_step_message, first_line

        try:
            message = failed_step_message(run_name) or first_line(exc)
        except Exception:  # the store itself may be what failed
            message = first_line(exc)
        raise CommandError(f"pipeline failed: {message}") from None
    predictions = run.steps["batch_predict"].outputs
    frame = predictions["batch_predictions"][0].load()
    click.echo(f"\n{len(frame)} rows answered, valid JSON {frame['valid_json'].mean():.3f}")
    click.echo(f"predictions: {predictions['predictions_file'][0].load()}")
    click.echo(f"run:         {run.name}")
