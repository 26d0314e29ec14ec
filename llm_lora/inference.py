"""Batch inference: format unanswered rows exactly as training did, generate, parse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from llm_lora.config import RunConfig
from llm_lora.data_formats import RowError, read_inference_input
from llm_lora.data_sources import DataError, RawRows, read_file
from llm_lora.metrics import parse_json_object, parse_tool_calls, text_before_calls
from llm_lora.prompt_formatting import format_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from llm_lora.generation import Generation

# A row to answer: (source, its own system prompt or None, the turns so far[, the tools' JSON text]).
InferenceRow = tuple


def _tools(row: InferenceRow) -> str:
    return row[3] if len(row) > 3 else ""


def read_inference_rows(path: Path, config: RunConfig) -> list[InferenceRow]:
    """Read rows to answer: (source, system prompt, context turns, tools) each.

    Raises:
        DataError: An unreadable file or row, named by file and line.
    """
    raw = read_input_file(path)
    rows = []
    for row, source in raw.rows:
        try:
            given = read_inference_input(row, config.data.format, config.data.columns)
        except RowError as exc:
            raise DataError(f"{source}: {exc}") from None
        rows.append((source, given.system, given.context, given.tools))
    return rows


def read_input_file(path: Path) -> RawRows:
    """The rows of an inference input file, before any model or training config is at hand.

    Raises:
        DataError: An unreadable line (file and line named), or no rows at all.
    """
    raw = read_file(path)
    if raw.bad:
        source, reason = raw.bad[0]
        raise DataError(f"{source}: {reason}")
    if not raw.rows:
        raise DataError(f"{path}: no rows")
    return raw


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[InferenceRow],
    config: RunConfig,
    batch_size: int,
    max_new_tokens: int,
) -> list[dict]:
    """Answer each row with greedy generation, formatted by the training run's settings.

    Args:
        model: Base model with the adapter.
        tokenizer: Its tokenizer.
        rows: Output of `read_inference_rows`.
        config: The training run's configuration (system prompt, template).
        batch_size: Rows per generation batch.
        max_new_tokens: Cap on each answer.

    Returns:
        One dict per row: source, prompt, output, for JSON answers the parsed object, and
        whether the answer was stopped by the cap.
    """
    from llm_lora.generation import generate

    prompts = inference_prompts(tokenizer, rows, config)
    return prediction_records(rows, generate(model, tokenizer, prompts, batch_size=batch_size,
                                             max_new_tokens=max_new_tokens))


def predict_with_gguf(
    path: Path, tokenizer: PreTrainedTokenizerBase, rows: list[InferenceRow], config: RunConfig,
    max_new_tokens: int,
) -> list[dict]:
    """`predict` with llama.cpp answering from an exported GGUF file (the run's prompt format, greedy)."""
    from llm_lora.gguf_export import llama_cpp_answers

    answers, _, _ = llama_cpp_answers(path, inference_prompts(tokenizer, rows, config), max_new_tokens)
    return prediction_records(rows, answers)


def inference_prompts(
    tokenizer: PreTrainedTokenizerBase, rows: list[InferenceRow], config: RunConfig
) -> list[str]:
    """Each row's prompt, formatted as the training run formatted its rows (a row's own system prompt wins)."""
    return [
        format_prompt(tokenizer, row[2], row[1] if row[1] is not None else config.data.system_prompt,
                      config.data.plain_template, _tools(row))
        for row in rows
    ]


def prediction_records(rows: list[InferenceRow], generations: list[Generation]) -> list[dict]:
    """One output record per row and its answer (for a row with tools, the calls it makes, or None)."""
    results = []
    for row, generation in zip(rows, generations):
        parsed = parse_json_object(generation.text)
        record = {
            "source": row[0],
            "prompt": row[2][-1][1],
            "output": generation.text,
            "json": parsed,
            "valid_json": parsed is not None,
            # Stopped by max_new_tokens instead of ending: a cut answer (raise the cap) or a runaway one.
            "hit_cap": generation.hit_cap,
            "latency_s": round(generation.latency_s, 4),
            "prompt_tokens": generation.prompt_tokens,
            "new_tokens": generation.new_tokens,
        }
        if _tools(row):
            calls = parse_tool_calls(generation.text)
            record["tool_calls"] = calls
            record["content"] = text_before_calls(generation.text) if calls else generation.text
        results.append(record)
    return results


def write_predictions(results: list[dict], path: Path) -> Path:
    """Write predictions as JSONL (folders created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for result in results:
            handle.write(json.dumps(result, ensure_ascii=False) + "\n")
    return path
