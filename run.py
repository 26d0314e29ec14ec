"""Run a LoRA finetuning pipeline from a YAML config.

Examples:
    python run.py --config configs/quickstart.yaml
    python run.py --config configs/quickstart.yaml --no-cache
    python run.py --config configs/llama-3.1-8b.yaml --dry-run
    python run.py --config configs/inference.yaml
    python run.py --config configs/deploy.yaml
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent
# Accelerate starts the training step in a fresh Python process; it must find
# this project's packages wherever the user launched run.py from.
sys.path.insert(0, str(REPO_ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))

from llm_lora.config import ConfigError, DeployConfig, InferenceConfig, RunConfig, load_config  # noqa: E402
from llm_lora.cron import CronError, check_cron  # noqa: E402
from llm_lora.data_preparation import check_rows  # noqa: E402
from llm_lora.data_sources import DataError  # noqa: E402
from llm_lora.errors import MachineError, check_machine  # noqa: E402
from llm_lora.model_loading import ModelSourceError, check_model_files, resolve_model_source  # noqa: E402
from llm_lora.worth_it import summary_lines  # noqa: E402

REPORTED_METRICS = ("mean_field_accuracy", "exact_match", "valid_json_rate", "mean_latency_s")
# An error line longer than this is cut: a huge value must not flood the terminal.
MAX_ERROR_CHARS = 600


class OneLineError(click.ClickException):
    """click's error, kept to one bounded line whatever the message it is given."""

    def __init__(self, message: str) -> None:
        lines = str(message).strip().splitlines() or [type(self).__name__]
        line = lines[0]
        if len(line) > MAX_ERROR_CHARS:
            line = f"{line[:MAX_ERROR_CHARS]}... ({len(line)} characters)"
        super().__init__(line)


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe(config: RunConfig) -> str:
    """A few lines saying what the run will do; checks the local model files on the way.

    Raises:
        ModelSourceError: A model path that is missing or a model file that is damaged.
        ConfigError: lora.rank above the model's hidden size.
    """
    model_source = resolve_model_source(config.model.name)
    facts = check_model_files(config.model.name, trust_remote_code=config.model.trust_remote_code)
    hidden = facts.get("hidden_size")
    if hidden and config.lora.rank > hidden:
        raise ConfigError(
            f"lora.rank: {config.lora.rank} is above the model's hidden size ({hidden}), the most a LoRA update"
            f" of its layers can use; choose at most {hidden} (8 to 64 is usual)"
        )
    data = config.data
    training = config.training
    if data.hub_id:
        source = f"hub dataset {data.hub_id}" + (f" ({data.subset})" if data.subset else "")
    elif data.path:
        source = str(data.path)
    else:
        names = [p.name for p in (data.train_file, data.validation_file, data.test_file) if p is not None]
        source = " / ".join(names)
    lora = config.lora
    baselines = config.baselines
    compared = ["zero-shot"] + ([f"{baselines.few_shot_k}-shot (seed {baselines.few_shot_seed})"]
                                if baselines.few_shot_k else [])
    if baselines.reference_model is not None:
        check_model_files(baselines.reference_model.name, "baselines.reference_model.name",
                          baselines.reference_model.trust_remote_code)
        compared.append(f"reference {baselines.reference_model.name}")
    return "\n".join(
        [
            f"model     {config.model.name} ({model_source.kind}, {config.model.dtype})",
            f"data      {source}, format {data.format}"
            f" (max rows {data.max_train_rows or 'all'} / {data.max_validation_rows or 'all'}"
            f" / {data.max_test_rows or 'all'})",
            f"lora      rank {lora.rank}, alpha {lora.alpha}, targets {lora.target_modules}",
            f"training  {training.method}, lr {training.learning_rate}, epochs {training.epochs},"
            f" batch {training.batch_size}x{training.gradient_accumulation_steps}, {training.precision},"
            f" {training.num_processes} process(es)",
            f"baselines {', '.join(compared)}",
            f"registry  ZenML model {config.registry.model_name!r}, promotion on {config.promotion.metric}"
            f" (+{config.promotion.min_gain_over_base} over"
            f" {'base' if config.promotion.must_beat == 'base' else 'the best baseline'})",
        ]
    )


def print_summary(run, config: RunConfig) -> None:
    """Baselines vs finetuned metrics, the verdict, the model version and its stage, where to look next."""
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
    columns.append(("finetuned", tuned))
    fields = [key for key in tuned if key.startswith("field_accuracy/")]  # in the answer's key order
    names = [name for name in (*REPORTED_METRICS[:3], *fields, "mean_latency_s") if name in tuned]
    click.echo("")
    click.echo(f"{'metric':32}" + "".join(f" {title:>10}" for title, _ in columns))
    for name in names:
        click.echo(f"{name:32}" + "".join(f" {metrics.get(name, float('nan')):10.3f}" for _, metrics in columns))
    for name in ("mean_prompt_tokens", "mean_new_tokens"):
        click.echo(f"{name:32}" + "".join(f" {metrics.get(name, float('nan')):10.1f}" for _, metrics in columns))
    # How the answers ended: stopped by the cap (evaluation.max_new_tokens), and of those cut short
    # before the expected answer could fit (scores that measure the cap, not the model).
    for name, rate in (("answers at max_new_tokens", "hit_cap_rate"), ("answers cut short", "cut_short_rate")):
        counts = [f"{round(metrics.get(rate, 0.0) * metrics['num_examples'])}/{metrics['num_examples']:.0f}"
                  for _, metrics in columns]
        click.echo(f"{name:32}" + "".join(f" {count:>10}" for count in counts))
    click.echo(f"{'max_new_tokens':32}" + "".join(f" {metrics.get('max_new_tokens', 0):10.0f}" for _, metrics in columns))
    preflight = output("preflight_report", "run_estimate")
    for line in preflight.get("settings", []):
        if line.startswith("evaluation.max_new_tokens:"):  # the cap behind the answers counted above, and why
            click.echo(f"cap:      {line}")
    for line in preflight.get("findings", []):
        click.echo(f"preflight: {line}")
    comparison = output("compare_models", "comparison_summary")
    click.echo(
        f"\nexamples: {comparison['better']} better, {comparison['worse']} worse, {comparison['same']} unchanged"
        " (model_comparison artifact: regressions first)"
    )
    click.echo(
        f"training: {training['optimizer_steps']} steps, {training['train_runtime_s']:.0f} s,"
        f" {training['train_tokens_per_s']:.0f} tokens/s, mean loss {training['train_loss']:.3f}"
        + (f", resumed from step {training['resumed_from_step']}" if training.get("resumed_from_step") else "")
        + (f", kept step {training['best_step']}" if "best_step" in training else "")
        + (", stopped early" if training.get("stopped_early") else "")
    )
    for line in summary_lines(output("worth_it_report", "worth_it")):
        click.echo(line)
    version = run.model_version
    from zenml.client import Client

    stage = Client().get_model_version(config.registry.model_name, version.id).stage
    verdict = "promoted" if decision["promote"] else "not promoted to production"
    click.echo(f"model:    {config.registry.model_name} version {version.name}, stage {stage or 'none'} ({verdict})")
    click.echo(f"why:      {decision['reason']}")
    if "production" in decision:
        click.echo(f"compared: production {decision['production_source']}")
    click.echo(f"run:      {run.name}")
    click.echo(where_to_look(run, config.registry.model_name))


class _WithoutTraceback(logging.Formatter):
    """Formats a record as its wrapped formatter would, minus the traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_console_tracebacks() -> None:
    """Keep Python tracebacks off the console (--debug shows them).

    Only the console handlers change: the step logs ZenML stores (and the
    dashboard shows) keep the full traceback.
    """
    import zenml  # noqa: F401  (sets up ZenML's console handler)
    from zenml.logger import ZenMLConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, ZenMLConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


def failed_step_message(run_name: str) -> str | None:
    """The error of the failed step of the named run, as 'step: message'.

    ZenML reports a failed run as "failure in step(s): ..." and keeps the
    step's own exception with the step run; this fetches it.
    """
    from zenml.client import Client

    client = Client()
    try:
        run = client.get_pipeline_run(run_name)
    except KeyError:  # failed before the run was registered
        return None
    for step_name, step_run in run.steps.items():
        info = step_run.exception_info
        if str(step_run.status) != "failed" or info is None:
            continue
        message = (info.message or "").strip()
        if not message:
            lines = [line for line in info.traceback.strip().splitlines() if line.strip()]
            message = lines[-1].strip() if lines else ""
        if message:
            return f"{step_name}: {message.splitlines()[0]}"
    return None


def where_to_look(run, model_name: str) -> str:
    """Where the run is visible: its dashboard page when a server records it, else how to get one."""
    from zenml.client import Client
    from zenml.utils.dashboard_utils import get_run_url

    stack = Client().active_stack_model
    lines = [
        f"\nstack:     {stack.name}",
        f"See it:    zenml pipeline runs list; zenml model version list --model {model_name}",
    ]
    url = get_run_url(run) if Client().zen_store.type.value == "rest" else None
    if url:
        lines.append(f"Dashboard: {url}")
    else:
        lines.append("Dashboard: zenml login --local  (then open http://127.0.0.1:8237; runs started after that show there)")
    return "\n".join(lines)


def describe_inference(config: InferenceConfig) -> str:
    """What an inference run will do."""
    settings = config.inference
    return "\n".join(
        [
            f"model     ZenML model {settings.model_name!r}, version {settings.version!r}",
            f"input     {settings.input_file}",
            f"output    {settings.output_file}",
        ]
    )


def run_inference(config: InferenceConfig, run_name: str):
    """Run the batch inference pipeline (never cached: the registry's versions move) and report."""
    from pipelines import batch_inference

    run = batch_inference.with_options(enable_cache=False, run_name=run_name)(inference_json=config.to_json())
    frame = run.steps["batch_predict"].outputs["batch_predictions"][0].load()
    path = run.steps["batch_predict"].outputs["predictions_file"][0].load()
    click.echo(f"\n{len(frame)} rows answered, valid JSON {frame['valid_json'].mean():.3f}")
    click.echo(f"predictions: {path}")
    click.echo(f"run:         {run.name}")
    return run


def describe_deploy(config: DeployConfig) -> str:
    """What a deployment will serve."""
    settings = config.deploy
    return "\n".join(
        [
            f"model     ZenML model {settings.model_name!r}, version {settings.version!r}",
            f"deploy    pipeline online_inference as {settings.deployment_name or settings.model_name!r}"
            + (f", port {settings.port}" if settings.port else ""),
            f"log       {settings.request_log or 'run metadata only (no request_log file)'}",
        ]
    )


REGISTER_LOCAL_DEPLOYER = "zenml deployer register local --flavor=local && zenml stack update -d local"


def check_deployer() -> None:
    """Refuse, in one line, a stack without a deployer."""
    from zenml.client import Client

    stack = Client().active_stack
    if stack.deployer is None:
        raise OneLineError(
            f"stack {stack.name!r} has no deployer; register the local one: {REGISTER_LOCAL_DEPLOYER}"
        )


def wait_until_serving(url: str, timeout_s: float, alive) -> None:
    """Poll the server's health endpoint until it answers (the model loads before it listens)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not alive():
            raise RuntimeError("the server stopped while starting")
        time.sleep(1)
    raise RuntimeError(f"the server did not answer within {timeout_s} s")


def run_deploy(config: DeployConfig):
    """Deploy the online inference pipeline with the stack's deployer, wait until it serves, print how to use it."""
    from zenml.client import Client
    from zenml.enums import DeploymentStatus

    from llm_lora.serving import EXAMPLE_INPUTS
    from pipelines import online_inference

    settings = config.deploy
    name = settings.deployment_name or settings.model_name
    client = Client()
    deployer = client.active_stack.deployer
    options: dict = {
        "on_init": "steps.load_served_model.load_served_model",
        "on_init_kwargs": {
            "model_name": settings.model_name,
            "version": settings.version,
            "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens,
            "request_log": str(settings.request_log) if settings.request_log else None,
        },
    }
    if settings.port and deployer.flavor == "local":
        options["settings"] = {f"deployer.{deployer.flavor}": {"port": settings.port, "allocate_port_if_busy": False}}
    # Deploy-time inputs only fill the example on the server's /docs page; every request sends its own.
    deployment = online_inference.with_options(**options).deploy(
        deployment_name=name, timeout=settings.timeout_s, inputs=EXAMPLE_INPUTS
    )
    if not deployment.url:
        raise RuntimeError(f"deployment {name!r} has no URL (zenml deployment describe {name})")

    def alive() -> bool:  # the deployer's own view: for the local one, whether the server process still runs
        try:
            return client.refresh_deployment(name).status not in (DeploymentStatus.ERROR, DeploymentStatus.ABSENT)
        except Exception:  # a deployer that cannot say: keep waiting until the timeout
            return True

    try:
        wait_until_serving(deployment.url, settings.timeout_s, alive)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; see zenml deployment logs {name}") from None
    url = deployment.url
    click.echo(f"\nServing:  {url}  (OpenAPI page: {url}/docs)")
    click.echo(
        f"Call:     curl -s -X POST {url}/invoke -H 'Content-Type: application/json'"
        """ -d '{"parameters": {"inputs": ["<an email>"]}}'"""
    )
    click.echo(f"Stop:     zenml deployment delete {name} -y")
    click.echo(f"Logs:     zenml deployment logs {name}")
    return deployment


SCHEDULING_ORCHESTRATORS = "kubernetes, vertex, sagemaker, azureml, kubeflow, airflow, databricks"


def runs_on_this_machine() -> bool:
    """Whether the active stack's orchestrator runs the steps here (then this machine's GPUs count)."""
    from zenml.client import Client

    return Client().active_stack.orchestrator.config.is_local


def use_stack(name: str) -> None:
    """Run on the named stack for this command only (the active stack stays as it is)."""
    from zenml.client import Client

    try:
        stack = Client().get_stack(name)
    except KeyError:
        raise OneLineError(f"--stack: no ZenML stack {name!r} (zenml stack list)") from None
    os.environ["ZENML_ACTIVE_STACK_ID"] = str(stack.id)


def check_schedule_stack() -> None:
    """Refuse, in one line, a stack whose orchestrator cannot schedule."""
    from zenml.client import Client

    stack = Client().active_stack
    orchestrator = stack.orchestrator
    if not orchestrator.config.is_schedulable:
        raise OneLineError(
            f"--schedule: stack {stack.name!r} runs on orchestrator {orchestrator.name!r}"
            f" (flavor {orchestrator.flavor}), which cannot run schedules; use a stack whose orchestrator can"
            f" ({SCHEDULING_ORCHESTRATORS}), e.g. --stack <name>"
        )


def check_store() -> None:
    """Open the ZenML store (a local database file or a server) now, so a damaged or unreachable one is one line.

    Raises:
        OneLineError: Naming the database file or the server, and what to do.
    """
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    try:
        url = GlobalConfiguration().store_configuration.url
    except Exception as exc:  # the global configuration file itself is unreadable
        raise OneLineError(f"ZenML configuration cannot be read ({first_line(exc)}); check ZENML_CONFIG_PATH") from None
    try:
        Client().active_stack_model  # opens the store: a query on its tables
    except Exception as exc:
        if url.startswith("sqlite:"):
            path = url.split("///", 1)[-1]
            raise OneLineError(
                f"ZenML store {path}: cannot be opened ({first_line(exc)}); if the file is damaged, move it aside"
                " (the next command makes a new, empty store) or point ZENML_CONFIG_PATH at another folder"
            ) from None
        raise OneLineError(
            f"ZenML server {url}: cannot be used ({first_line(exc)}); check that it runs and that you are logged in"
            " (zenml login), or zenml logout to use the local store"
        ) from None


def check_version(model_name: str, version: str, option: str) -> RunConfig:
    """The run config of a registered version that a finished finetune run made; else one line."""
    from steps.model_version import find_model_version

    try:
        return find_model_version(model_name, version, option)[1]
    except ValueError as exc:
        raise OneLineError(str(exc)) from None


def check_inference_rows(config: InferenceConfig) -> None:
    """Read every input row as the version's training run formats it, before the pipeline starts."""
    from llm_lora.inference import read_inference_rows

    settings = config.inference
    run_config = check_version(settings.model_name, settings.version, "inference.version")
    try:
        read_inference_rows(settings.input_file, run_config)
    except DataError as exc:
        raise OneLineError(str(exc)) from None


def unique_suffix() -> str:
    """Date, time and a random tag: a run name this command can find its run by, whoever else runs."""
    import datetime
    import uuid

    return f"{datetime.datetime.now():%Y_%m_%d-%H_%M_%S}-{uuid.uuid4().hex[:6]}"


def discard_failed_version(run_name: str) -> str:
    """Delete the model version a failed finetune run registered, and say so (empty when there is none).

    The run, its step logs and its artifacts stay; only the version, which would otherwise sit in the
    registry with no stage and half its artifacts, goes. A version with a stage is never touched.
    """
    from zenml.client import Client

    client = Client()
    run = client.get_pipeline_run(run_name)
    version = run.model_version
    if version is None or version.stage is not None:
        return ""
    client.delete_model_version(version.id)
    return f" (model version {version.name} of this run removed; the run and its logs stay: zenml pipeline runs list)"


def run_pipeline(config: RunConfig, no_cache: bool, force_promote: bool = False, cron: str | None = None,
                 run_name: str | None = None):
    """Build and run the finetune pipeline; returns the pipeline run (None when only scheduled)."""
    from zenml import Model
    from zenml.client import Client
    from zenml.config.schedule import Schedule
    from zenml.enums import ExecutionMode

    from pipelines import finetune
    from steps import launch_with_accelerate

    launch_with_accelerate(config.training)
    model = Model(
        name=config.registry.model_name,
        description=config.registry.description,
        tags=config.registry.tags or None,
    )
    options = {"model": model, "enable_cache": not no_cache}
    if run_name:
        options["run_name"] = run_name
    # After a failed step nothing more runs (no training after a failed base evaluation), where the
    # orchestrator offers it; elsewhere train_lora's own dependency on evaluate_base still holds.
    if ExecutionMode.STOP_ON_FAILURE in Client().active_stack.orchestrator.supported_execution_modes:
        options["execution_mode"] = ExecutionMode.STOP_ON_FAILURE
    if config.remote is not None:
        from pipelines.remote import remote_options

        options.update(remote_options(config.remote))
    if cron:
        options["schedule"] = Schedule(name=f"{config.registry.model_name}-{cron}", cron_expression=cron)
    configured = finetune.with_options(**options)
    return configured(config_json=config.to_json(), force_promote=force_promote)


@click.command(epilog=__doc__.split("Examples:")[1].replace("\n    ", "\n\n    "))
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="YAML run config.")
@click.option("--no-cache", is_flag=True, help="Re-run every step even when its inputs are unchanged.")
@click.option("--dry-run", is_flag=True,
              help="Validate the config, the model/data paths and any --stack/--schedule; load nothing.")
@click.option("--force-promote", is_flag=True, help="Put the new version into production whatever its scores.")
@click.option("--schedule", "cron", metavar="CRON",
              help="Run on a schedule instead of now, e.g. '0 3 * * 1' (Mondays 03:00); needs a stack whose "
                   "orchestrator can schedule.")
@click.option("--stack", "stack_name", metavar="NAME", help="Run on this ZenML stack instead of the active one.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
def main(config_path: Path, no_cache: bool, dry_run: bool, force_promote: bool, cron: str | None,
         stack_name: str | None, debug: bool) -> None:
    """Finetune a base model with LoRA on ZenML, evaluate it and promote it if it is better."""
    for option, value in (("--stack", stack_name), ("--schedule", cron)):
        if value is not None and not value.strip():
            raise OneLineError(f"{option}: empty value; give one or leave the option out")
    try:
        config = load_config(config_path)
        if isinstance(config, DeployConfig):
            summary = describe_deploy(config)
        else:
            summary = describe_inference(config) if isinstance(config, InferenceConfig) else describe(config)
    except ModelSourceError as exc:  # a key of this file, named like the config's own errors
        raise OneLineError(f"{config_path}: {exc}") from None
    except ConfigError as exc:
        message = str(exc)
        raise OneLineError(message if message.startswith(f"{config_path}") else f"{config_path}: {message}") from None
    except DataError as exc:
        raise OneLineError(str(exc)) from None
    click.echo(summary)
    if cron:
        if not isinstance(config, RunConfig):
            raise OneLineError("--schedule: schedules are for the finetune pipeline")
        try:
            check_cron(cron)
        except CronError as exc:
            raise OneLineError(f"--schedule: {exc}") from None
    try:
        if isinstance(config, RunConfig):
            rows = check_rows(config.data)
            if rows is not None and config.baselines.few_shot_k > rows["train"]:
                raise OneLineError(
                    f"{config_path}: baselines.few_shot_k: {config.baselines.few_shot_k} examples asked for, but the"
                    f" train split has {rows['train']} rows; lower it (0 turns the few-shot baseline off)"
                )
        if isinstance(config, InferenceConfig):
            from llm_lora.inference import read_input_file

            read_input_file(config.inference.input_file)
    except DataError as exc:
        raise OneLineError(str(exc)) from None
    if stack_name or cron or not dry_run or not isinstance(config, RunConfig):
        check_store()  # inference and deploy read the registry
    if stack_name:
        use_stack(stack_name)
    if cron:
        check_schedule_stack()
    if isinstance(config, InferenceConfig):
        check_inference_rows(config)  # with the training run's formatting settings, from the registry
    if isinstance(config, DeployConfig):
        check_deployer()
        check_version(config.deploy.model_name, config.deploy.version, "deploy.version")
    if dry_run:
        checked = ["config", "model files",
                   *(name for name, given in (("stack", stack_name), ("schedule", cron)) if given)]
        hub = isinstance(config, RunConfig) and config.data.hub_id
        if not isinstance(config, RunConfig):
            checked[1] = "model version"
        if not hub and not isinstance(config, DeployConfig):
            checked.append("data rows")
        note = "; hub dataset rows are read by the pipeline" if hub else ""
        click.echo(f"{config_path}: valid (dry run: {', '.join(checked)} checked{note}, no model loaded)")
        return
    if not debug:
        quiet_console_tracebacks()
    else:
        os.environ["LLM_LORA_DEBUG"] = "1"
    error_folder = tempfile.mkdtemp(prefix="llm-lora-")
    atexit.register(shutil.rmtree, error_folder, True)
    error_file = Path(error_folder) / "training_error.txt"
    os.environ["LLM_LORA_ERROR_FILE"] = str(error_file)  # read by the Accelerate-launched training
    try:
        if isinstance(config, RunConfig) and runs_on_this_machine():
            check_machine(config)
    except MachineError as exc:
        raise OneLineError(str(exc)) from None
    run_name = f"{'batch_inference' if isinstance(config, InferenceConfig) else 'finetune'}-{unique_suffix()}"
    try:
        if isinstance(config, InferenceConfig):
            run_inference(config, run_name)
            return
        if isinstance(config, DeployConfig):
            run_deploy(config)
            return
        run = run_pipeline(config, no_cache, force_promote, cron, None if cron else run_name)
    except Exception as exc:  # the step logs above hold the details
        if debug:
            traceback.print_exc()
        message = first_line(exc)
        if isinstance(config, DeployConfig):
            raise OneLineError(f"deploy failed: {message}") from None
        try:
            message = failed_step_message(run_name) or message
        except Exception:  # the store itself may be what failed; keep ZenML's message
            pass
        if error_file.is_file():  # training, in its own process, said why
            message = f"train_lora: {error_file.read_text().strip()}"
        if isinstance(config, RunConfig) and not cron:
            try:
                message += discard_failed_version(run_name)
            except Exception:  # the run failed; a store that cannot tidy up must not hide why
                pass
        raise OneLineError(f"pipeline failed: {message}") from None
    if cron:
        from zenml.client import Client

        click.echo(
            f"\nScheduled: finetune with {config_path} at '{cron}' on stack {Client().active_stack_model.name!r}"
            "\nSee it:    zenml pipeline schedule list"
        )
        return
    print_summary(run, config)


if __name__ == "__main__":
    main()
