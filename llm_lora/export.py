"""Exports: the adapter folded into its base model, and each export's score beside the PyTorch evaluation's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from peft import PeftModel
from pydantic import BaseModel, ConfigDict

from llm_lora.config import CONVERTER_GGUF_TYPES, ConfigPart, ExportConfig, ModelConfig, RunConfig
from llm_lora.evaluation import evaluation_prompts, score_generations
from llm_lora.generation import Generation, generate
from llm_lora.html_pages import escape, number, page, table
from llm_lora.model_loading import default_device, load_model, load_tokenizer


def merge_adapter(model: ModelConfig, adapter_dir: Path, output_dir: Path, dtype: str = "bfloat16") -> Path:
    """Merge adapter weights into the base weights and save model and tokenizer.

    The base is loaded unquantized even when training used QLoRA: merging into
    4-bit weights would round the update away.

    Args:
        model: The base model's section of the run config.
        adapter_dir: A saved adapter (`save_pretrained` output).
        output_dir: Where the merged model goes (safetensors + config + tokenizer).
        dtype: Dtype of the merged weights.

    Returns:
        `output_dir`.
    """
    base = load_model(model.model_copy(update={"dtype": dtype}))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    load_tokenizer(model).save_pretrained(output_dir)
    return output_dir


def compare_merged_with_adapter(
    config: RunConfig | ConfigPart, adapter_dir: Path, merged_dir: Path, rows: list[dict], max_new_tokens: int
) -> dict:
    """Greedy answers of the merged model and of base + adapter, in the merged dtype, on the same rows.

    Args:
        config: The run configuration (model, export dtype, generation settings).
        adapter_dir: The saved adapter.
        merged_dir: Output of merge_adapter.
        rows: Prepared rows (with `prompt_text`).
        max_new_tokens: Cap on each answer, as the evaluation resolved it.

    Returns:
        Counts of checked and matching rows, and the indexes of rows that differ.
    """
    dtype = config.export.dtype
    tokenizer = load_tokenizer(config.model)
    prompts = [row["prompt_text"] for row in rows]
    settings = dict(batch_size=config.evaluation.batch_size, max_new_tokens=max_new_tokens)
    device = default_device()
    adapted = PeftModel.from_pretrained(
        load_model(config.model.model_copy(update={"dtype": dtype}), device=device), str(adapter_dir)
    ).eval()
    with_adapter = [g.text for g in generate(adapted, tokenizer, prompts, **settings)]
    del adapted
    merged_config = ModelConfig(name=str(merged_dir), dtype=dtype)
    with_merged = [g.text for g in generate(load_model(merged_config, device=device), tokenizer, prompts, **settings)]
    differing = [index for index, (a, b) in enumerate(zip(with_adapter, with_merged)) if a != b]
    return {"checked_rows": len(rows), "matching_rows": len(rows) - len(differing), "differing_rows": differing}


class ExportCheck(BaseModel):
    """One exported file, scored in the engine it is made for, against the PyTorch evaluation.

    Attributes:
        format: "merged" or "gguf".
        type: The merged dtype or the GGUF type ("f16", "q8_0", "q4_k_m").
        engine: What answered: "transformers" or "llama.cpp".
        file: The file (or folder) name inside the export artifact.
        size_mb: Its size on disk.
        bits_per_weight: GGUF only: file bits over weights (K-quants that fall back show here).
        score: The promotion metric on the checked rows.
        difference: score minus the PyTorch evaluation's score on the same rows.
        same_answers: Rows answered exactly as the PyTorch evaluation answered them.
        tokenizer_mismatches: GGUF only: prompts the file's tokenizer splits differently from transformers'.
        tokens_per_second: Generated tokens over generation time (llama.cpp: one request at a time,
            all CPU threads; transformers: batched as the evaluation batches).
        tolerance: The largest |difference| allowed; None: reported, not checked.
    """

    model_config = ConfigDict(frozen=True)

    format: Literal["merged", "gguf"]
    type: str
    engine: str
    file: str
    size_mb: float
    bits_per_weight: float | None = None
    score: float
    difference: float
    same_answers: int
    tokenizer_mismatches: int | None = None
    tokens_per_second: float
    tolerance: float | None

    @property
    def passed(self) -> bool:
        # Scores are means over rows: a tiny float error must not flip an exact tolerance.
        return self.tolerance is None or abs(self.difference) <= self.tolerance + 1e-9


class ExportReport(BaseModel):
    """Every export of a run with its in-engine score next to the PyTorch evaluation's.

    Attributes:
        metric: The promotion metric the exports are scored on.
        pytorch_score: The PyTorch evaluation's score on the same rows.
        rows: Test rows each export answered.
        checks: One per exported file.
    """

    model_config = ConfigDict(frozen=True)

    metric: str
    pytorch_score: float
    rows: int
    checks: list[ExportCheck] = []

    def failures(self) -> list[str]:
        """One line per export whose score is further from PyTorch's than its tolerance."""
        return [
            f"export: {check.format} {check.type} scores {check.score:.3f} {self.metric} in {check.engine}, "
            f"{abs(check.difference):.3f} {'below' if check.difference < 0 else 'above'} the PyTorch evaluation's "
            f"{self.pytorch_score:.3f} on the same {self.rows} rows (allowed: "
            f"{check.tolerance:g}, export.{'tolerance' if check.type in NEAR_LOSSLESS else 'lossy_tolerance'})"
            for check in self.checks if not check.passed
        ]

    def as_metadata(self) -> dict:
        """Flat values for the model version's metadata, one entry per export."""
        return {
            "metric": self.metric, "pytorch_score": self.pytorch_score, "rows": self.rows,
            **{f"{check.format}_{check.type}": check.model_dump(exclude={"format", "type"}) for check in self.checks},
        }


# Exports expected to answer as the PyTorch model does (export.tolerance); lower-bit GGUF
# types round weights to 6 bits or fewer (export.lossy_tolerance).
NEAR_LOSSLESS = ("float32", "bfloat16", "float16", *CONVERTER_GGUF_TYPES)


def tolerance_for(export: ExportConfig, kind: str) -> float | None:
    """The tolerance an export type is held to."""
    return export.tolerance if kind in NEAR_LOSSLESS else export.lossy_tolerance


def pytorch_outputs(predictions: list[dict], rows: list[dict]) -> list[Generation]:
    """The PyTorch evaluation's answers to the first len(rows) test rows, from its per-example records."""
    if len(predictions) < len(rows):
        raise ValueError(f"the evaluation answered {len(predictions)} test rows, the export checks {len(rows)}")
    return [
        Generation(text=str(record["output"]), new_tokens=int(record.get("new_tokens", 0)), prompt_tokens=0,
                   latency_s=float(record.get("latency_s", 0.0)), hit_cap=bool(record.get("hit_cap", False)))
        for record in predictions[: len(rows)]
    ]


def score_answers(rows: list[dict], answers: list[Generation], metric_names, metric: str) -> float:
    """The metric over these answers, computed exactly as the evaluation computes it."""
    return float(score_generations(rows, answers, metric_names).metrics[metric])


def export_check(
    *, format: str, kind: str, engine: str, path: Path, answers: list[Generation], reference: list[Generation],
    rows: list[dict], metric_names, metric: str, pytorch_score: float, tolerance: float | None,
    tokens_per_second: float, bits_per_weight: float | None = None, tokenizer_mismatches: int | None = None,
) -> ExportCheck:
    """Score one export's answers and set them beside the PyTorch evaluation's."""
    score = score_answers(rows, answers, metric_names, metric)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return ExportCheck(
        format=format, type=kind, engine=engine, file=path.name, size_mb=round(size / 2**20, 1),
        bits_per_weight=None if bits_per_weight is None else round(bits_per_weight, 2),
        score=score, difference=score - pytorch_score,
        same_answers=sum(a.text == b.text for a, b in zip(answers, reference)),
        tokenizer_mismatches=tokenizer_mismatches, tokens_per_second=round(tokens_per_second, 1),
        tolerance=tolerance,
    )


def score_merged(
    config: RunConfig | ConfigPart, merged_dir: Path, rows: list[dict], max_new_tokens: int
) -> tuple[list[Generation], float]:
    """The merged model's greedy answers in transformers, batched as the evaluation batches.

    Returns:
        The answers and generated tokens per second.
    """
    tokenizer = load_tokenizer(ModelConfig(name=str(merged_dir)))
    model = load_model(ModelConfig(name=str(merged_dir), dtype=config.export.dtype), device=default_device())
    prompts = evaluation_prompts(tokenizer, rows, config.data.system_prompt, plain_template=config.data.plain_template)
    answers = generate(model, tokenizer, prompts, batch_size=config.evaluation.batch_size,
                       max_new_tokens=max_new_tokens)
    busy = sum(answer.latency_s for answer in answers)
    return answers, (sum(answer.new_tokens for answer in answers) / busy if busy else 0.0)


def render_export_html(report: ExportReport) -> str:
    """The parity table: each export's score in its engine beside the PyTorch evaluation's."""
    rows = [["PyTorch evaluation", "transformers", "", "", number(report.pytorch_score), "", "", "", "", ""]]
    for check in report.checks:
        verdict = ("reported" if check.tolerance is None
                   else f"<span class='{'ok' if check.passed else 'bad'}'>"
                        f"{'within' if check.passed else 'beyond'} ±{check.tolerance:g}</span>")
        rows.append(
            "<tr>" + "".join(f"<td>{cell}</td>" for cell in [
                escape(f"{check.format} {check.type}"), escape(check.engine), escape(check.file),
                number(check.size_mb, 1), number(check.score), number(check.difference, signed=True),
                f"{check.same_answers}/{report.rows}",
                "–" if check.tokenizer_mismatches is None else str(check.tokenizer_mismatches),
                number(check.tokens_per_second, 1), verdict,
            ]) + "</tr>"
        )
    header = ["export", "engine", "file", "MB", report.metric, "difference", "same answers",
              "tokenizer mismatches", "tokens/s", "check"]
    body = (f"<h3>Exports scored in their engines</h3><p>{report.rows} test rows, greedy, the run's prompt format; "
            f"scores on {escape(report.metric)}.</p>" + table(rows, header, css="figures", element_id="export-parity"))
    return page("Export parity", body)
