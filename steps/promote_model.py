"""Step: compare the new model version with the base model and production, promote if better."""

import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Callable, Tuple

from zenml import ArtifactConfig, get_step_context, log_metadata, step
from zenml.client import Client
from zenml.exceptions import EntityExistsError
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.answer_length import cut_short_problem
from llm_lora.config import ConfigPart, PromotionConfig, RunConfig
from llm_lora.data_preparation import load_prepared_split
from llm_lora.evaluation import evaluate_model, evaluation_fingerprint, prepared_cap
from llm_lora.model_loading import default_device, load_model, load_tokenizer
from llm_lora.promotion import decide_promotion, resolve_metric
from llm_lora.reports import render_run_report
from llm_lora.training import PRIMARY_METRIC_KEY, load_adapter
from steps.hub_token import apply_hub_token

logger = get_logger(__name__)


LOCK_SUFFIX = "--promotion-lock"


@contextmanager
def promotion_lock(model_name: str, holder: str, timeout_s: float = 1800, stale_after_s: float = 3600):
    """Only one run at a time compares with production and changes stages.

    The lock is a ZenML Model named `<model>--promotion-lock`: the store refuses
    a second model of the same name, in SQLite and on a server alike, so this
    works across processes and machines. A lock older than `stale_after_s` (its
    holder died) is broken.

    Args:
        model_name: The registered model.
        holder: Who takes the lock (shown while it is held).
        timeout_s: Give up waiting after this long.
        stale_after_s: Age after which a held lock is considered abandoned.
    """
    client = Client()
    name = model_name + LOCK_SUFFIX
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            lock = client.create_model(name=name, description=f"promotion in progress: {holder}")
            break
        except EntityExistsError:
            try:
                held = client.get_model(name)
            except KeyError:
                continue  # released meanwhile
            age = (datetime.now(timezone.utc) - held.created.replace(tzinfo=timezone.utc)).total_seconds()
            if age > stale_after_s:
                logger.warning("Breaking a promotion lock held for %.0f s: %s", age, held.description)
                try:
                    client.delete_model(held.id)
                except KeyError:
                    pass
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"promotion: {model_name!r} is locked by another run ({held.description})") from None
            time.sleep(0.5 + random.random())
    try:
        yield
    finally:
        client.delete_model(lock.id)


def production_score(
    model_name: str, metric: str, fingerprint: str, current_version_id, reevaluate: Callable
) -> tuple[float | None, str, dict | None]:
    """The production version's score on this run's test rows, where it came from, and its metrics.

    Args:
        model_name: The registered model.
        metric: The compared metric.
        fingerprint: This run's evaluation fingerprint (rows, model, prompt, generation settings).
        current_version_id: This run's version (never compared with itself).
        reevaluate: Called with the production version when its stored score is not comparable;
            returns its metrics on this run's rows.
    """
    try:
        production = Client().get_model_version(model_name, "production")
    except KeyError:
        return None, "no production version", None
    if production.id == current_version_id:
        return None, "no production version", None
    stored = production.run_metadata.get("finetuned")
    if isinstance(stored, dict) and stored.get("evaluation_fingerprint") == fingerprint and metric in stored:
        # Same rows, base model, prompt and greedy settings: re-running would give these numbers.
        return float(stored[metric]), f"version {production.number}, stored score on identical test rows", stored
    logger.info("Re-evaluating production version %s on this run's test rows", production.number)
    metrics = reevaluate(production)
    return float(metrics[metric]), f"version {production.number}, re-evaluated on this run's test rows", metrics


def gate(
    model_name: str,
    version,
    metric: str,
    candidate: float,
    base: float,
    fingerprint: str,
    reevaluate: Callable,
    promotion: PromotionConfig,
    force: bool = False,
    baseline: str | None = None,
    unmeasured: str | None = None,
    max_cut_short: float = 0.02,
) -> dict:
    """Under the promotion lock: compare with the current production version, decide, set the stage.

    `base` is the base model's score, or with `baseline` (its name) the best baseline's.
    `unmeasured` says why this run's scores measure nothing (the worth-it report's finding that
    answers were cut short); production re-scored on these rows is held to `max_cut_short` too.
    Either way, nothing is promoted.

    Returns:
        The decision, its numbers and reason, where production's score came from, and the new stage.
    """
    with promotion_lock(model_name, holder=f"version {version.number}"):
        production, source, production_metrics = production_score(
            model_name, metric, fingerprint, version.id, reevaluate
        )
        production_cut = cut_short_problem([("production", production_metrics)], max_cut_short) \
            if production_metrics else None
        decision = decide_promotion(
            metric,
            candidate=candidate,
            base=base,
            production=production,
            min_gain_over_base=promotion.min_gain_over_base,
            min_gain_over_production=promotion.min_gain_over_production,
            staging=promotion.staging,
            force=force,
            baseline=baseline,
            unmeasured=unmeasured or production_cut,
        )
        if decision.stage is not None:
            # force=True moves the current holder of the stage out of it (ZenML keeps one version per stage).
            version.set_stage(decision.stage, force=True)
    return {**decision.as_metadata(), "production_source": source, "new_stage": decision.stage or "none"}


@step
def promote_model(
    prepared_data: Path,
    settings: str,
    run_config_json: str,
    base_metrics: dict,
    finetuned_metrics: dict,
    training_metrics: dict,
    loss_history: list,
    worth_it: dict,
    force_promote: bool = False,
) -> Tuple[
    Annotated[dict, ArtifactConfig(name="promotion_decision")],
    Annotated[HTMLString, ArtifactConfig(name="run_report")],
]:
    """Move this run's model version to production when it beats the base model and production.

    Args:
        prepared_data: Output of prepare_data (test rows, for re-evaluating production).
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).
        run_config_json: The whole run config, only recorded on the model version, so that batch inference
            and deployment format inputs exactly as training did.
        base_metrics: evaluate_base's metrics.
        finetuned_metrics: evaluate_finetuned's metrics.
        training_metrics: train_lora's metrics, recorded on the model version.
        loss_history: train_lora's logged losses; the validation curve goes into metadata.
        worth_it: worth_it_report's report: the best baseline, for `promotion.must_beat: best_baseline`.
        force_promote: Put this version into production whatever the numbers.

    Returns:
        The decision with its numbers and reason, and the run report (loss curves,
        base vs finetuned table, the decision) for the dashboard.
    """
    config = ConfigPart.from_json(settings)
    apply_hub_token(config.model)
    metric = resolve_metric(config.promotion.metric, finetuned_metrics)
    for name, metrics in (("base", base_metrics), ("finetuned", finetuned_metrics)):
        if metric not in metrics:
            raise ValueError(f"promotion.metric: {metric!r} not among the {name} metrics {sorted(metrics)}")
    model = get_step_context().model
    rows = load_prepared_split(prepared_data, "test")
    cap = prepared_cap(config.evaluation.max_new_tokens, load_tokenizer(config.model), prepared_data)

    def reevaluate(production) -> dict:
        # Production as it serves: its own base model, system prompt and template (recorded with it),
        # on this run's test rows and generation settings (the cap in its own tokens).
        stored = production.run_metadata.get("run_config_json")
        own = RunConfig.from_json(stored) if isinstance(stored, str) else config
        apply_hub_token(own.model)
        adapter = production.get_artifact("lora_adapter").load()
        base = load_model(own.model, device=default_device())
        tokenizer = load_tokenizer(own.model)
        own_cap = prepared_cap(config.evaluation.max_new_tokens, tokenizer, prepared_data)
        result = evaluate_model(
            load_adapter(base, adapter.directory, merge=True), tokenizer, rows,
            own.data.system_prompt, config.evaluation, own_cap.tokens, plain_template=own.data.plain_template,
            # The rows' prompt_text is this run's formatting: another base model or prompt formats anew.
            reformat=(own.model, own.data.system_prompt, own.data.plain_template)
            != (config.model, config.data.system_prompt, config.data.plain_template),
        )
        return result.metrics

    base_score, baseline = float(base_metrics[metric]), None
    if config.promotion.must_beat == "best_baseline":
        best = next(row for row in worth_it["models"] if row["name"] == worth_it["best_baseline"])
        base_score, baseline = float(best["primary_metric"]), best["label"]
    record = gate(
        config.registry.model_name,
        model,
        metric,
        candidate=float(finetuned_metrics[metric]),
        base=base_score,
        fingerprint=evaluation_fingerprint(config, rows, cap.tokens),
        reevaluate=reevaluate,
        promotion=config.promotion,
        force=force_promote,
        baseline=baseline,
        unmeasured=worth_it.get("unmeasured"),
        max_cut_short=config.evaluation.max_cut_short,
    )
    logger.info("Promotion: stage %s. %s", record["new_stage"], record["reason"])
    log_metadata(
        metadata={
            "promotion": record,
            "training": training_metrics,
            "validation_loss_by_step": {
                str(entry["step"]): entry["eval_loss"] for entry in loss_history if "eval_loss" in entry
            },
            # With training.eval_generation_rows: the promotion metric on the validation slice.
            "validation_metric_by_step": {
                str(entry["step"]): entry[PRIMARY_METRIC_KEY] for entry in loss_history if PRIMARY_METRIC_KEY in entry
            },
            # The whole config, so inference can format inputs exactly as training did.
            "run_config_json": run_config_json,
            "hyperparameters": {
                "model": config.model.model_dump(mode="json"),
                "lora": config.lora.model_dump(mode="json"),
                "training": config.training.model_dump(mode="json"),
            },
        },
        infer_model=True,
    )
    report = render_run_report(
        base_metrics, finetuned_metrics, record, training_metrics, loss_history,
        f"{config.registry.model_name} version {model.number}", worth_it=worth_it,
    )
    return record, HTMLString(report)
