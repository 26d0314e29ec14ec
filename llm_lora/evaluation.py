"""Evaluation: generate on test rows, score with the repo's `evaluate` metric modules."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_lora.answer_length import AnswerCap, answer_cap, answer_tokens, cut_short
from llm_lora.config import AUTO_METRICS_JSON, AUTO_METRICS_TEXT, ConfigPart, EvaluationConfig, RunConfig
from llm_lora.data_formats import Example, expected_calls
from llm_lora.data_preparation import fingerprint, load_prepared_completions
from llm_lora.generation import Generation, generate
from llm_lora.metrics import (
    compute_extraction_metrics, load_metric, parse_json_object, parse_tool_calls, reference_fields, rouge_example,
    same_label, score_calls, score_example,
)
from llm_lora.prompt_formatting import PLAIN_TEMPLATE, Turns, format_prompt, with_examples

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class EvaluationResult:
    """Aggregate metrics and the per-example record behind them.

    Attributes:
        metrics: Flat floats: field accuracies, exact match, valid-JSON rate, latency, token counts.
        examples: One dict per row: prompt, expected, output, correctness, latency.
    """

    metrics: dict[str, float]
    examples: list[dict]


def references_are_json(references: list[str]) -> bool:
    """Whether every expected answer is a JSON object (then field metrics apply)."""
    return all(parse_json_object(reference) is not None for reference in references)


def score_generations(
    rows: list[dict],
    generations: list[Generation],
    metric_names: str | list[str] = "auto",
    expected_tokens: list[int] | None = None,
    max_new_tokens: int | None = None,
) -> EvaluationResult:
    """Score model answers against the rows' completions.

    JSON answers get field accuracies, exact match on the parsed objects and
    the valid-JSON rate; other answers get string exact match. Rows whose
    expected answer is a function call are scored by the `tool_calls` metric
    (call, name and argument accuracy, parse rate), the text answers of the same
    set by the text metrics, and every row by `answer_accuracy`. Every answer
    also records whether it hit the generation cap and, given the expected
    answers' lengths, whether it was cut short (see `answer_length.cut_short`).

    Args:
        rows: Dicts with "prompt" and "completion" (the expected answer), and "answer_meta" for an
            answer that calls functions.
        generations: One answer per row, same order.
        metric_names: "auto" or the metric modules to compute (see EvaluationConfig.metrics).
        expected_tokens: `answer_tokens` of each row's expected answer, in the answering model's tokens.
        max_new_tokens: The cap the answers were generated with.

    Returns:
        The metrics and per-example records.
    """
    calls = [expected_calls(row.get("answer_meta") or {}) for row in rows]
    text_rows = [i for i, expected in enumerate(calls) if not expected]
    call_rows = [i for i, expected in enumerate(calls) if expected]
    names = [] if metric_names == "auto" else [name for name in metric_names if name != "tool_calls"]
    metrics: dict[str, float] = {}
    records: dict[int, dict] = {}
    if call_rows:
        metrics.update(load_metric("tool_calls").compute(
            predictions=[generations[i].text for i in call_rows],
            references=[json.dumps(calls[i]) for i in call_rows]))
        for i in call_rows:
            score = score_calls(generations[i].text, calls[i])
            records[i] = {"expected_calls": json.dumps(calls[i], ensure_ascii=False), "calls_parse": score["parses"],
                          "tool_call_match": score["calls_match"], "tool_name_match": score["names_match"],
                          "arguments_right": score["arguments_right"], "arguments_total": score["arguments_total"],
                          "answer_right": score["calls_match"]}
    if text_rows and (metric_names == "auto" or names or not call_rows):
        subset = [rows[i] for i in text_rows]
        text_metrics, text_records = _score_text([generations[i] for i in text_rows], subset,
                                                 "auto" if metric_names == "auto" else names)
        metrics.update(text_metrics)
        for i, record in zip(text_rows, text_records):
            records[i] = record
    elif text_rows:  # metrics named only tool_calls: the text answers still count in answer_accuracy
        for i in text_rows:
            right = generations[i].text.strip() == rows[i]["completion"].strip()
            records[i] = {"exact_match": right, "answer_right": right}
    if call_rows:
        for i in text_rows:  # a text answer that calls a function instead is the wrong kind of answer
            records[i]["made_call"] = parse_tool_calls(generations[i].text) is not None
        metrics["answer_accuracy"] = sum(bool(records[i]["answer_right"]) for i in records) / len(rows)
        metrics["tool_call_rows"] = float(len(call_rows))
    count = len(generations)
    cut = [False] * count
    if expected_tokens is not None and max_new_tokens is not None:
        cut = [cut_short(g.hit_cap, tokens, max_new_tokens) for g, tokens in zip(generations, expected_tokens)]
        metrics["max_new_tokens"] = float(max_new_tokens)
    metrics.update(
        num_examples=float(count),
        mean_latency_s=sum(g.latency_s for g in generations) / count,
        mean_new_tokens=sum(g.new_tokens for g in generations) / count,
        mean_prompt_tokens=sum(g.prompt_tokens for g in generations) / count,
        hit_cap_rate=sum(g.hit_cap for g in generations) / count,
        cut_short_rate=sum(cut) / count,
    )
    examples = []
    for index, (row, generation, was_cut) in enumerate(zip(rows, generations, cut)):
        record = {"prompt": row["prompt"], "expected": row["completion"], "output": generation.text}
        record.update(records[index])
        if not call_rows:
            record.pop("answer_right", None)
        record["latency_s"] = round(generation.latency_s, 4)
        record["new_tokens"] = generation.new_tokens
        record["hit_cap"] = generation.hit_cap
        record["cut_short"] = was_cut
        examples.append(record)
    return EvaluationResult(metrics=metrics, examples=examples)


def _score_text(generations: list[Generation], rows: list[dict], metric_names: str | list[str]
                ) -> tuple[dict[str, float], list[dict]]:
    """The text metrics of text answers, and each answer's own scores (answer_right: its exact match)."""
    predictions = [g.text for g in generations]
    references = [row["completion"] for row in rows]
    structured = references_are_json(references)
    if metric_names == "auto":
        metric_names = list(AUTO_METRICS_JSON if structured else AUTO_METRICS_TEXT)
    metrics: dict[str, float] = {}
    for name in metric_names:
        if name == "json_fields":
            if not structured:
                raise ValueError("evaluation.metrics: json_fields needs every expected answer to be a JSON object")
            metrics.update(compute_extraction_metrics(predictions, references))
        elif name == "exact_match" and structured:
            # On JSON answers, exact match compares the parsed objects, as the per-example records do
            # (json_fields, when listed, reports the same number).
            if "json_fields" not in metric_names:
                metrics["exact_match"] = compute_extraction_metrics(predictions, references)["exact_match"]
        else:
            extra = {"strip": True} if name == "exact_match" else {}
            module = load_metric(name).compute(predictions=predictions, references=references, **extra)
            # classification_accuracy's keys are generic; name them after the metric.
            if name == "classification_accuracy":
                module = {f"classification_{key}": value for key, value in module.items()}
            metrics.update(module)
    # Every row is scored on the fields of all references, as json_fields scores them: the rows'
    # scores then average to mean_field_accuracy (a field a row lacks is right if the answer lacks it too).
    fields = reference_fields(references) if structured else None
    records = []
    for row, generation in zip(rows, generations):
        record: dict = {}
        if structured:
            score = score_example(generation.text, row["completion"], fields)
            record.update(valid_json=score["valid_json"], exact_match=score["exact_match"])
            record.update({f"correct_{field}": ok for field, ok in score["fields"].items()})
        else:
            record["exact_match"] = generation.text.strip() == row["completion"].strip()
            if "classification_accuracy" in metric_names:  # the row's share of the aggregate, as it counts
                record["label_match"] = same_label(generation.text, row["completion"])
        if "rouge" in metric_names:  # rouge1, rouge2, rougeL of this row; their means are the metrics
            record.update(rouge_example(generation.text, row["completion"]))
        record["answer_right"] = bool(record["exact_match"])
        records.append(record)
    return metrics, records


def _context(row: dict) -> str | Turns:
    return [tuple(turn) for turn in row["context"]] if row.get("context") else row["prompt"]


def _answer(row: dict) -> str | tuple:
    """A solved row's answer as a few-shot example shows it: its text, or its turn when it calls functions."""
    return Example.from_row(row).answer if row.get("answer_meta") else row["completion"]


def evaluation_prompts(
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    system_prompt: str | None,
    few_shot: Sequence[dict] = (),
    plain_template: str = PLAIN_TEMPLATE,
    reformat: bool = False,
) -> list[str]:
    """The prompt each row is answered from, through the one formatting function.

    Prepared rows carry their prompt already formatted for the base model
    (`prompt_text`); it is used as is unless solved examples go before the input
    or another model's tokenizer must format it (`reformat`).

    Args:
        tokenizer: The answering model's tokenizer.
        rows: Prepared rows, or plain dicts with "prompt".
        system_prompt: The YAML's system prompt (a row's own system message wins).
        few_shot: Solved rows ("context" or "prompt", and "completion") put before
            every input as earlier user/assistant turns.
        plain_template: Layout for tokenizers without a chat template.
        reformat: Format from the row's turns even when it has a prompt_text.

    Returns:
        One prompt text per row.
    """
    examples = [(_context(example), _answer(example)) for example in few_shot]
    prompts = []
    for row in rows:
        if row.get("prompt_text") and not examples and not reformat:
            prompts.append(row["prompt_text"])
            continue
        system = row["system"] if row.get("system") is not None else system_prompt
        prompts.append(format_prompt(tokenizer, with_examples(_context(row), examples), system, plain_template,
                                     row.get("tools")))
    return prompts


def generation_cap(setting: int | str, tokenizer: PreTrainedTokenizerBase, completions: Sequence[str]) -> AnswerCap:
    """evaluation.max_new_tokens for a model: a set number, or auto from these expected answers in its tokens.

    Args:
        setting: "auto" or a number of tokens.
        tokenizer: The answering model's tokenizer (a reference model may count tokens differently).
        completions: Every expected answer of the run (all prepared splits).
    """
    return answer_cap(setting, [answer_tokens(tokenizer, completion) for completion in completions])


def prepared_cap(setting: int | str, tokenizer: PreTrainedTokenizerBase, prepared_dir) -> AnswerCap:
    """`generation_cap` over every expected answer of a prepare_data folder: the run's one cap per tokenizer."""
    return generation_cap(setting, tokenizer, load_prepared_completions(prepared_dir))


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    system_prompt: str | None,
    settings: EvaluationConfig,
    max_new_tokens: int | None = None,
    few_shot: Sequence[dict] = (),
    plain_template: str = PLAIN_TEMPLATE,
    reformat: bool = False,
) -> EvaluationResult:
    """Greedy-generate an answer for every row and score it.

    Args:
        model: Base or adapter-wrapped model.
        tokenizer: Its tokenizer.
        rows: Prepared rows (their `prompt_text` is the formatted prompt), or
            plain dicts with "prompt" and "completion".
        system_prompt: The system prompt training used (for rows not yet formatted).
        settings: Batch size and metrics.
        max_new_tokens: Cap on each answer, resolved over the whole run's answers (`generation_cap`);
            None: settings.max_new_tokens, auto from these rows' answers.
        few_shot: Solved training rows shown before every input (a few-shot baseline).
        plain_template: Layout for tokenizers without a chat template.
        reformat: Format every row with this tokenizer (a model other than the base model).

    Returns:
        Metrics and per-example records.
    """
    if max_new_tokens is None:
        max_new_tokens = generation_cap(settings.max_new_tokens, tokenizer, [row["completion"] for row in rows]).tokens
    prompts = evaluation_prompts(tokenizer, rows, system_prompt, few_shot, plain_template, reformat)
    generations = generate(model, tokenizer, prompts, batch_size=settings.batch_size, max_new_tokens=max_new_tokens)
    expected = [answer_tokens(tokenizer, row["completion"]) for row in rows]
    return score_generations(rows, generations, settings.metrics, expected, max_new_tokens)


def evaluation_fingerprint(config: RunConfig | ConfigPart, rows: list[dict], max_new_tokens: int) -> str:
    """What makes two evaluations comparable: same rows, base model, prompt and generation settings.

    Greedy decoding is deterministic, so two evaluations of the same adapter
    with equal fingerprints give the same numbers. The cap counts as resolved
    (`auto` follows all splits, so the same test rows may get another cap).
    """
    settings = json.dumps(
        [
            config.model.name,
            config.model.revision,
            config.model.dtype,
            config.data.system_prompt,
            config.data.plain_template,
            {**config.evaluation.model_dump(), "max_new_tokens": max_new_tokens},
        ],
        sort_keys=True,
    )
    return hashlib.sha256((settings + fingerprint(rows)).encode()).hexdigest()[:16]
