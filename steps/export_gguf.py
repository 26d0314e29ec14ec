"""Step: the merged model as GGUF files for llama.cpp and Ollama, each scored in llama.cpp."""

from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.logger import get_logger
from zenml.types import HTMLString

from llm_lora.config import CONVERTER_GGUF_TYPES, ConfigPart, ModelConfig
from llm_lora.evaluation import evaluation_prompts, prepared_cap
from llm_lora.export import ExportReport, export_check, pytorch_outputs, render_export_html, tolerance_for
from llm_lora.gguf_export import (
    ExportError, adds_bos, bits_per_weight, convert, converter_dir, llama_cpp_answers, quantize,
)
from llm_lora.model_loading import load_tokenizer
from llm_lora.ollama import modelfile
from materializers.model_folder_materializer import ModelFolderMaterializer
from steps.export_merged import checked_rows
from steps.support.scratch import scratch_folder

logger = get_logger(__name__)


@step(output_materializers={"gguf_model": ModelFolderMaterializer})
def export_gguf(
    merged_model: Path, prepared_data: Path, finetuned_predictions: pd.DataFrame, merged_export: ExportReport,
    settings: str,
) -> Tuple[
    Annotated[Path, ArtifactConfig(name="gguf_model")],
    Annotated[ExportReport, ArtifactConfig(name="export_report")],
    Annotated[HTMLString, ArtifactConfig(name="export_parity")],
]:
    """Convert the merged model with llama.cpp's converter and quantizer; answer and score in llama.cpp.

    Each file answers the same test rows as the PyTorch evaluation, from the same formatted
    prompts (tokenized by the file's own tokenizer), greedily and up to the same cap.

    Args:
        merged_model: export_merged's folder (safetensors + tokenizer).
        prepared_data: Output of prepare_data (the test rows).
        finetuned_predictions: evaluate_finetuned's answers: what each file must reproduce.
        merged_export: export_merged's report: the PyTorch score and the merged model's row.
        settings: The parts of the run config this step reads (RunConfig.part; the pipeline names them).

    Returns:
        A folder with one `<model>-<type>.gguf` per export.gguf_types entry and its Ollama
        `Modelfile.<type>`; the parity report over every export, and its page.

    Raises:
        ExportError: The converter or quantizer refused the model, or an export scores further
            from the PyTorch evaluation than its tolerance.
    """
    config = ConfigPart.from_json(settings)
    export = config.export
    converter = converter_dir()
    tokenizer = load_tokenizer(ModelConfig(name=str(merged_model)))
    rows = checked_rows(config, prepared_data)
    cap = prepared_cap(config.evaluation.max_new_tokens, load_tokenizer(config.model), prepared_data)
    prompts = evaluation_prompts(tokenizer, rows, config.data.system_prompt, plain_template=config.data.plain_template)
    reference_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    reference = pytorch_outputs(finetuned_predictions.to_dict("records"), rows)
    longest = max(len(ids) for ids in reference_ids) + cap.tokens
    folder = scratch_folder("gguf-model-")
    name = config.registry.model_name
    # Quantized types start from an f16 file; it is shipped only when asked for.
    f16_source = None
    if any(kind not in CONVERTER_GGUF_TYPES for kind in export.gguf_types):
        f16_source = (folder if "f16" in export.gguf_types else scratch_folder("gguf-f16-")) / f"{name}-f16.gguf"
        convert(merged_model, f16_source, "f16", converter)
    checks = list(merged_export.checks)
    for kind in export.gguf_types:
        path = folder / f"{name}-{kind}.gguf"
        if kind in CONVERTER_GGUF_TYPES:
            if not (kind == "f16" and f16_source is not None):
                convert(merged_model, path, kind, converter)
        else:
            quantize(f16_source, path, kind)
        answers, mismatches, speed = llama_cpp_answers(path, prompts, cap.tokens, reference_ids)
        check = export_check(
            format="gguf", kind=kind, engine="llama.cpp", path=path, answers=answers, reference=reference, rows=rows,
            metric_names=config.evaluation.metrics, metric=merged_export.metric,
            pytorch_score=merged_export.pytorch_score, tolerance=tolerance_for(export, kind),
            tokens_per_second=speed, bits_per_weight=bits_per_weight(path),
            tokenizer_mismatches=mismatches,
        )
        checks.append(check)
        logger.info("GGUF %s in llama.cpp: %s %.3f (PyTorch evaluation %.3f), %d/%d answers identical, %.1f tokens/s",
                    kind, merged_export.metric, check.score, merged_export.pytorch_score, check.same_answers,
                    len(rows), check.tokens_per_second)
        if export.ollama:
            try:
                text = modelfile(tokenizer, path.name, config.data.system_prompt, config.data.plain_template,
                                 num_ctx=max(2048, -(-longest // 1024) * 1024), adds_bos=adds_bos(path))
            except ValueError as error:  # the GGUF files are still good; only Ollama's template is not
                logger.warning("export.ollama: no Modelfile for %s: %s", path.name, error)
            else:
                (folder / f"Modelfile.{kind}").write_text(text)
    report = merged_export.model_copy(update={"checks": checks})
    log_metadata(metadata={"export": report.as_metadata()}, infer_model=True)
    failures = report.failures()
    if failures:
        more = f" (and {len(failures) - 1} more: see the step's log)" if len(failures) > 1 else ""
        raise ExportError(failures[0] + more)
    return folder, report, HTMLString(render_export_html(report))
