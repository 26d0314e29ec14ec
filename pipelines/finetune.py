"""The LoRA finetuning pipeline."""

from zenml import pipeline
from zenml.config.cache_policy import CachePolicy

from llm_lora.config import RunConfig
from llm_lora.data_sources import files_digest
from steps.compare_models import compare_models
from steps.evaluate_model import evaluate_model
from steps.evaluate_recorded import evaluate_recorded
from steps.export_gguf import export_gguf
from steps.export_merged import export_merged
from steps.preflight_report import preflight_report
from steps.prepare_data import prepare_data
from steps.promote_model import promote_model
from steps.train_lora import train_lora
from steps.worth_it_report import worth_it_report


def mark_version_failed(exception: BaseException) -> None:
    """Tag the run's model version `failed`, with the step and its error in the description.

    Runs in the failing step (any orchestrator, scheduled runs included), so a version whose run
    failed is never mistaken for a result. `run.py` then removes it when it ran the pipeline itself.
    """
    import logging

    from zenml import get_step_context
    from zenml.client import Client

    try:
        context = get_step_context()
        message = (str(exception).strip().splitlines() or [type(exception).__name__])[0][:500]
        Client().update_model_version(
            model_name_or_id=context.model.name,
            version_name_or_id=context.model.id,
            add_tags=["failed"],
            description=f"failed in {context.step_run.name}: {message}",
        )
    except Exception as error:  # the step's own failure is the news; this only labels it
        logging.getLogger(__name__).warning("could not tag the model version as failed: %s", error)


@pipeline(on_failure=mark_version_failed)
def finetune(
    model: dict, data: dict, lora: dict, training: dict, evaluation: dict, baselines: dict, cost: dict,
    promotion: dict, preflight: dict, export: dict, registry: dict, force_promote: bool = False,
) -> None:
    """Finetune a base model with LoRA, weigh it against prompting alone, and promote it if it is better.

    Steps:
        1. prepare_data: read, validate, format and tokenize the splits.
        2. preflight_report: what was dropped and why, token statistics, time and cost estimate.
        3. evaluate_base: score the base model zero-shot on the test rows.
        4. evaluate_few_shot (baselines.few_shot_k > 0): the base model with solved
           train rows before each test input, same rows.
        5. evaluate_reference (with baselines.reference_model): a larger model, zero-shot, same rows.
           evaluate_recorded (with baselines.recorded): other models' recorded answers on the same rows
           (a hosted fine-tune's), scored with the same metrics.
        6. train_lora: train LoRA adapters (launched by Accelerate).
        7. evaluate_finetuned: score base + adapters on the same test rows.
        8. compare_models: per-example base vs finetuned, regressions first (HTML).
        9. worth_it_report: the finetuned model against the best baseline: gain with a
           confidence interval, prompt tokens and latency saved, training cost, payback
           and a verdict (HTML).
        10. export_merged (when export.formats lists any): base + adapter saved as one model,
            scored in transformers when `merged` is listed.
        11. export_gguf (when export.formats lists gguf): GGUF files made by llama.cpp's converter
            and quantizer, each scored in llama.cpp, with Ollama Modelfiles. An export whose score
            is further from the PyTorch evaluation's than its tolerance fails the run.
        12. promote_model: move the new model version to production if it beats
            the base model (or the best baseline, promotion.must_beat) and the current
            production version (else maybe staging).
            Last, so that a run failing anywhere before never changes a stage.

    Args:
        model, data, lora, training, evaluation, baselines, cost, promotion, preflight, export, registry:
            The run config's sections (`RunConfig.sections`), one parameter each, as the dashboard shows them.
        force_promote: Put the new version into production whatever its scores.
    """
    config = RunConfig.from_sections(
        model=model, data=data, lora=lora, training=training, evaluation=evaluation, baselines=baselines, cost=cost,
        promotion=promotion, preflight=preflight, export=export, registry=registry,
    )
    # Each step is given only the parts of the config it reads (RunConfig.part): its cache key changes
    # when they do, and a change elsewhere (a price, a promotion threshold) leaves it cached.
    generation = {"model": True, "data": ("system_prompt", "plain_template"), "evaluation": True}
    prepared_data, data_summary, training_rows = prepare_data(settings=config.part(model=True, data=True))
    preflight_report(data_summary=data_summary, settings=config.part(
        model=True, data=True, training=True, lora=True, evaluation=True, baselines=("few_shot_k",), preflight=True))
    base_metrics, base_predictions = evaluate_model(
        id="evaluate_base", prepared_data=prepared_data, settings=config.part(**generation), label="base"
    )
    baselines = {}
    if config.baselines.few_shot_k:
        few_shot_metrics, few_shot_predictions = evaluate_model(
            id="evaluate_few_shot", prepared_data=prepared_data, label="few_shot", few_shot=True,
            settings=config.part(**generation, baselines=("few_shot_k", "few_shot_seed")),
        )
        baselines.update(few_shot_metrics=few_shot_metrics, few_shot_predictions=few_shot_predictions)
    if config.baselines.reference_model is not None:
        reference_metrics, reference_predictions = evaluate_model(
            id="evaluate_reference", prepared_data=prepared_data, label="reference", reference=True,
            settings=config.part(**generation, baselines=("reference_model",)),
        )
        baselines.update(reference_metrics=reference_metrics, reference_predictions=reference_predictions)
    if config.baselines.recorded:
        recorded_metrics, recorded_predictions = evaluate_recorded(
            prepared_data=prepared_data,
            settings=config.part(data=True, baselines=("recorded",), evaluation=("metrics",)),
            answers_digest=files_digest([entry.answers_file for entry in config.baselines.recorded]),
        )
        baselines.update(recorded_metrics=recorded_metrics, recorded_predictions=recorded_predictions)
    # Validation answers during training are generated and scored like the evaluation's.
    scoring = ({"evaluation": ("batch_size", "metrics", "max_new_tokens"), "promotion": ("metric",)}
               if config.training.eval_generation_rows else {})
    # Of the data section, training reads these two; the rest shapes the prepared rows, which
    # `training_rows` (their content hash) stands for in the cache key. Unless validation answers are
    # generated (their cap follows every split's answers, test included), the prepared folder is left out
    # of the key: new test rows are scored by the adapter already trained on the same train rows.
    training_settings = config.part(model=True, lora=True, training=True, data=("packing", "max_seq_length"),
                                    registry=("model_name",), **scoring)
    training_step = train_lora if config.training.eval_generation_rows else train_lora.with_options(
        cache_policy=CachePolicy(ignored_inputs=["prepared_data"]))
    # Training waits for the base model to answer: a base model that cannot load or generate fails there,
    # before any GPU time is spent.
    adapter, training_metrics, loss_history = training_step(
        prepared_data=prepared_data, training_rows=training_rows, settings=training_settings, after="evaluate_base")
    finetuned_metrics, finetuned_predictions = evaluate_model(
        id="evaluate_finetuned",
        prepared_data=prepared_data,
        settings=config.part(**generation),
        label="finetuned",
        adapter=adapter,
    )
    compare_models(base_predictions=base_predictions, finetuned_predictions=finetuned_predictions,
                   metric=config.promotion.metric)
    worth_it, _ = worth_it_report(
        settings=config.part(baselines=True, promotion=("metric",), preflight=("price_per_gpu_hour",), cost=True,
                             evaluation=("max_cut_short",)),
        base_metrics=base_metrics,
        base_predictions=base_predictions,
        finetuned_metrics=finetuned_metrics,
        finetuned_predictions=finetuned_predictions,
        training_metrics=training_metrics,
        **baselines,
    )
    # Promotion is the last step: a run that fails anywhere else never changes a stage.
    before_promotion = ["compare_models"]
    if config.export.formats:
        export_settings = dict(model=True, data=True, export=True, evaluation=("batch_size", "max_new_tokens", "metrics"))
        merged_model, merged_export, _ = export_merged(
            adapter=adapter, prepared_data=prepared_data, finetuned_metrics=finetuned_metrics,
            finetuned_predictions=finetuned_predictions, settings=config.part(**export_settings, promotion=("metric",)),
        )
        before_promotion.append("export_merged")
        if config.export.gguf:
            export_gguf(merged_model=merged_model, prepared_data=prepared_data,
                        finetuned_predictions=finetuned_predictions, merged_export=merged_export,
                        settings=config.part(**export_settings, registry=("model_name",)))
            before_promotion.append("export_gguf")
    promote_model(
        prepared_data=prepared_data,
        settings=config.part(model=True, data=True, evaluation=True, promotion=True, registry=("model_name",),
                             lora=True, training=True),
        base_metrics=base_metrics,
        finetuned_metrics=finetuned_metrics,
        training_metrics=training_metrics,
        loss_history=loss_history,
        worth_it=worth_it,
        force_promote=force_promote,
        after=before_promotion,
    )
