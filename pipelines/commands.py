"""What every command of run.py shares: its options, its one-line error, and the ZenML store it runs against."""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path


class CommandError(Exception):
    """A reason to stop before (or instead of) running, said in one line that names the file, key or option."""


@dataclass(frozen=True)
class Options:
    """run.py's options besides the config file (the same names as its flags)."""

    no_cache: bool = False
    dry_run: bool = False
    force_promote: bool = False
    cron: str | None = None
    stack_name: str | None = None
    debug: bool = False


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unique_suffix() -> str:
    """Date, time and a random tag: a run name this command can find its run by, whoever else runs."""
    return f"{datetime.datetime.now():%Y_%m_%d-%H_%M_%S}-{uuid.uuid4().hex[:6]}"


def unreachable(url: str, timeout_s: float = 10) -> str | None:
    """Why the server at `url` takes no connection right now (refused, unknown host, no answer), else None.

    ZenML's client retries a refused connection with back-off for some 30 s before it gives up; a server
    that is down, or a URL mistyped, is said at once instead. Where a proxy carries the requests, the
    proxy decides and nothing is probed here.
    """
    import socket
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:  # ValueError: a port out of range
        return first_line(exc)


def check_store() -> None:
    """Open the ZenML store (a local database file or a server) now, so a damaged or unreachable one is one line.

    Raises:
        CommandError: Naming the database file or the server, and what to do.
    """
    from zenml.client import Client
    from zenml.config.global_config import GlobalConfiguration

    try:
        url = GlobalConfiguration().store_configuration.url
    except Exception as exc:  # the global configuration file itself is unreadable
        raise CommandError(f"ZenML configuration cannot be read ({first_line(exc)}); check ZENML_CONFIG_PATH") from None
    reason = unreachable(url)
    try:
        if reason:
            raise ConnectionError(reason)
        Client().active_stack_model  # opens the store: a query on its tables
    except Exception as exc:
        if url.startswith("sqlite:"):
            path = url.split("///", 1)[-1]
            raise CommandError(
                f"ZenML store {path}: cannot be opened ({first_line(exc)}); if the file is damaged, move it aside"
                " (the next command makes a new, empty store) or point ZENML_CONFIG_PATH at another folder"
            ) from None
        raise CommandError(
            f"ZenML server {url}: cannot be used ({first_line(exc)}); check that it runs and that you are logged in"
            " (zenml login), or zenml logout to use the local store"
        ) from None


def use_stack(name: str) -> None:
    """Run on the named stack for this command only (the active stack stays as it is)."""
    from zenml.client import Client

    try:
        stack = Client().get_stack(name)
    except KeyError:
        raise CommandError(f"--stack: no ZenML stack {name!r} (zenml stack list)") from None
    os.environ["ZENML_ACTIVE_STACK_ID"] = str(stack.id)


SCHEDULING_ORCHESTRATORS = "kubernetes, vertex, sagemaker, azureml, kubeflow, airflow, databricks"


def check_schedule(cron: str) -> None:
    """Refuse, in one line, a --schedule that is not a cron expression."""
    from llm_lora.cron import CronError, check_cron

    try:
        check_cron(cron)
    except CronError as exc:
        raise CommandError(f"--schedule: {exc}") from None


def check_schedule_stack() -> None:
    """Refuse, in one line, a stack whose orchestrator cannot schedule."""
    from zenml.client import Client

    stack = Client().active_stack
    orchestrator = stack.orchestrator
    if not orchestrator.config.is_schedulable:
        raise CommandError(
            f"--schedule: stack {stack.name!r} runs on orchestrator {orchestrator.name!r}"
            f" (flavor {orchestrator.flavor}), which cannot run schedules; use a stack whose orchestrator can"
            f" ({SCHEDULING_ORCHESTRATORS}), e.g. --stack <name>"
        )


def check_version(model_name: str, version: str, option: str):
    """The run config of a registered version that a finished finetune run made; else one line."""
    from steps.support.model_version import find_model_version

    try:
        return find_model_version(model_name, version, option)[1]
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def failed_step_message(run_name: str) -> str | None:
    """The error of the failed step of the named run, as 'step: message'.

    ZenML reports a failed run as "failure in step(s): ..." and keeps the
    step's own exception with the step run; this fetches it.
    """
    from zenml.client import Client

    try:
        run = Client().get_pipeline_run(run_name)
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


def dry_run_line(config_path: Path, checked: list[str], note: str = "") -> str:
    """What --dry-run says when everything it checks is in order."""
    return f"{config_path}: valid (dry run: {', '.join(checked)} checked{note}, no model loaded)"
