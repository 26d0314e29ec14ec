"""Run a LoRA finetuning pipeline, batch inference, a deployment or its monitor from a YAML config.

The config's `kind:` (finetune, predict, deploy or monitor) says which; without it, a config with `model`/`data`
sections is a finetune run, one with an `inference` section a prediction, one with a `deploy` section a deployment,
one with a `monitor` section a monitor run.

Examples:
    python run.py --config configs/quickstart.yaml
    python run.py --config configs/quickstart.yaml --no-cache
    python run.py --config configs/llama-3.1-8b.yaml --dry-run
    python run.py --config configs/inference.yaml
    python run.py --config configs/deploy.yaml
    python run.py --config configs/monitor.yaml --schedule '0 * * * *'
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent
# Accelerate starts the training step in a fresh Python process; it must find
# this project's packages wherever the user launched run.py from.
sys.path.insert(0, str(REPO_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

from llm_lora.config import (  # noqa: E402
    ConfigError, DeployConfig, InferenceConfig, MonitorConfig, RunConfig, load_config,
)
from llm_lora.data_sources import DataError  # noqa: E402
from llm_lora.model_loading import ModelSourceError  # noqa: E402
from pipelines import deploy_command, finetune_command, monitor_command, predict_command  # noqa: E402
from pipelines.commands import CommandError, Options, quiet_console_tracebacks  # noqa: E402

COMMANDS = {RunConfig: finetune_command, InferenceConfig: predict_command, DeployConfig: deploy_command,
            MonitorConfig: monitor_command}
# An error line longer than this is cut: a huge value must not flood the terminal.
MAX_ERROR_CHARS = 600


def main(config_path: Path, options: Options) -> None:
    """Check the config and everything it names, then run its job (with options.dry_run: check only).

    Raises:
        CommandError: In one line, what stops the job, naming the file, key or option.
    """
    for option, value in (("--stack", options.stack_name), ("--schedule", options.cron)):
        if value is not None and not value.strip():
            raise CommandError(f"{option}: empty value; give one or leave the option out")
    try:
        config = load_config(config_path)
        command = COMMANDS[type(config)]
        click.echo(command.describe(config))
        checked = command.check(config, config_path, options)
    except ModelSourceError as exc:  # a key of this file, named like the config's own errors
        raise CommandError(f"{config_path}: {exc}") from None
    except ConfigError as exc:
        message = str(exc)
        raise CommandError(message if message.startswith(f"{config_path}") else f"{config_path}: {message}") from None
    except DataError as exc:
        raise CommandError(str(exc)) from None
    if options.dry_run:
        click.echo(checked)
        return
    if not options.debug:
        quiet_console_tracebacks()
    command.run(config, config_path, options)


class OneLineError(click.ClickException):
    """click's error, kept to one bounded line whatever the message it is given."""

    def __init__(self, message: str) -> None:
        line = (str(message).strip().splitlines() or [type(self).__name__])[0]
        if len(line) > MAX_ERROR_CHARS:
            line = f"{line[:MAX_ERROR_CHARS]}... ({len(line)} characters)"
        super().__init__(line)


@click.command(epilog=__doc__.split("Examples:")[1].replace("\n    ", "\n\n    "))
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="YAML config.")
@click.option("--no-cache", is_flag=True, help="Re-run every step even when its inputs are unchanged.")
@click.option("--dry-run", is_flag=True,
              help="Validate the config, the model/data paths and any --stack/--schedule; load nothing.")
@click.option("--force-promote", is_flag=True, help="Put the new version into production whatever its scores.")
@click.option("--schedule", "cron", metavar="CRON",
              help="Run on a schedule instead of now, e.g. '0 3 * * 1' (Mondays 03:00); needs a stack whose "
                   "orchestrator can schedule.")
@click.option("--stack", "stack_name", metavar="NAME", help="Run on this ZenML stack instead of the active one.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def cli(config_path: Path, **options) -> None:
    """Finetune a base model with LoRA on ZenML, evaluate it and promote it if it is better; serve it; monitor it."""
    try:
        main(config_path, Options(**options))
    except CommandError as exc:
        raise OneLineError(str(exc)) from None


if __name__ == "__main__":
    cli()
