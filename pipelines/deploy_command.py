"""`python run.py --config <deploy yaml>`: serve a registered model version over HTTP, wait until it answers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from llm_lora.config import DeployConfig
from pipelines.commands import CommandError, Options, check_store, check_version, dry_run_line, first_line, use_stack

REGISTER_LOCAL_DEPLOYER = "zenml deployer register local --flavor=local && zenml stack update -d local"


def describe(config: DeployConfig) -> str:
    """What a deployment will serve."""
    settings = config.deploy
    return "\n".join([
        f"model     ZenML model {settings.model_name!r}, version {settings.version!r}",
        f"deploy    pipeline online_inference as {settings.deployment_name or settings.model_name!r}"
        + (f", port {settings.port}" if settings.port else ""),
        f"serve     {settings.engine}, {settings.batch_size} inputs at a time, queue of {settings.max_queue};"
        f" routes /invoke and /v1/chat/completions",
        f"log       {settings.request_log or 'no request_log file'}; "
        + (f"served_requests artifact every {settings.record_every_s:g} s" if settings.record_every_s
           else "no served_requests artifacts"),
    ])


def check(config: DeployConfig, config_path: Path, options: Options) -> str:
    """A stack with a deployer, and a version a finished finetune run made."""
    from zenml.client import Client

    if options.cron:
        raise CommandError("--schedule: schedules are for the finetune and monitor pipelines")
    check_store()
    if options.stack_name:
        use_stack(options.stack_name)
    stack = Client().active_stack
    if stack.deployer is None:
        raise CommandError(f"stack {stack.name!r} has no deployer; register the local one: {REGISTER_LOCAL_DEPLOYER}")
    check_version(config.deploy.model_name, config.deploy.version, "deploy.version")
    if config.deploy.engine == "llama-server":
        llama_server_ready()
    return dry_run_line(config_path, ["config", "model version", *(["stack"] if options.stack_name else [])])


def llama_server_ready() -> Path | None:
    """The llama-server binary if one is built (None: the deploy builds it first); a missing build tool is one line."""
    from llm_lora.gguf_export import ExportError
    from llm_lora.llama_server import build_tools_missing, ready_binary

    try:
        binary = ready_binary()
    except ExportError as exc:
        raise CommandError(f"deploy.engine: llama-server: {exc}") from None
    missing = build_tools_missing() if binary is None else None
    if missing:
        raise CommandError(f"deploy.engine: llama-server is built from llama-cpp-python's source and needs {missing}"
                           " (apt-get install cmake build-essential), or set LLM_LORA_LLAMA_SERVER to a built one")
    return binary


def run(config: DeployConfig, config_path: Path, options: Options) -> None:
    """Deploy the online inference pipeline with the stack's deployer, wait until it serves, print how to use it."""
    binary = None
    if config.deploy.engine == "llama-server":
        from llm_lora.gguf_export import ExportError
        from llm_lora.llama_server import server_binary

        if llama_server_ready() is None:
            click.echo("Building llama-server from llama-cpp-python's source (once; about 10 minutes on 2 cores) ...")
        try:
            binary = server_binary()
        except ExportError as exc:
            raise CommandError(f"deploy.engine: llama-server: {exc}") from None
    try:
        url, name = deploy(config, binary)
    except Exception as exc:  # the deployment's logs hold the details
        raise CommandError(f"deploy failed: {first_line(exc)}") from None
    click.echo(f"\nServing:  {url}  (OpenAPI page: {url}/docs)")
    click.echo(f"Call:     curl -s -X POST {url}/invoke -H 'Content-Type: application/json'"
               """ -d '{"parameters": {"inputs": ["<an email>"]}}'""")
    click.echo(f"OpenAI:   OpenAI(base_url='{url}/v1', api_key='<deployment auth key, or any>')"
               ".chat.completions.create(model='any', messages=[...])")
    click.echo(f"Stop:     zenml deployment delete {name} -y")
    click.echo(f"Logs:     zenml deployment logs {name}")


def deploy(config: DeployConfig, llama_server: Path | None = None) -> tuple[str, str]:
    """Start the deployment and wait until its model is loaded; returns its URL and name."""
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
        "on_cleanup": "steps.load_served_model.close_served_model",
        "on_init_kwargs": {
            "model_name": settings.model_name,
            "version": settings.version,
            "batch_size": settings.batch_size,
            "max_new_tokens": settings.max_new_tokens,
            "request_log": str(settings.request_log) if settings.request_log else None,
            "engine": settings.engine,
            "gguf_type": settings.gguf_type,
            "gguf_context": settings.gguf_context,
            "prompt_cache": settings.prompt_cache,
            "max_queue": settings.max_queue,
            "batch_window_ms": settings.batch_window_ms,
            "record_every_s": settings.record_every_s,
            "llama_server": str(llama_server) if llama_server else None,
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
    return deployment.url, name


def wait_until_serving(url: str, timeout_s: float, alive) -> None:
    """Poll the server's health endpoint until it answers (the model loads before it listens)."""
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
