"""From the configured source to tokenized train/validation/test splits, with a record of every row lost.

Order of work: read → convert to canonical examples (bad rows fail or are
dropped) → make missing splits → drop exact duplicates → drop evaluation rows
whose input also appears in train (leakage) → cap row counts → tokenize with
loss masks (over-long rows dropped or shortened) → summarize.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llm_lora.answer_length import answer_tokens
from llm_lora.config import DataConfig
from llm_lora.data_formats import Example, RowError, to_example
from llm_lora.data_sources import SPLITS, DataError, RawRows, read_file, read_hub, split_files_in_folder
from llm_lora.tokenization import IGNORE_INDEX, tokenize_examples

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def fingerprint(rows: list[dict]) -> str:
    """A short content hash of prepared rows: same inputs and answers, same fingerprint.

    Used to tell whether two evaluations ran on the same test rows.
    """
    digest = hashlib.sha256()
    for row in rows:
        # Rows without tools hash as they always did, so earlier versions' fingerprints still compare.
        extra = [row["tools"], row.get("answer_meta")] if row.get("tools") or row.get("answer_meta") else []
        digest.update(json.dumps([row.get("system"), row.get("context"), row["completion"], *extra]).encode())
    return digest.hexdigest()[:16]


LENGTH_BINS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

# Tokenizers that do not know their model's context window report a huge placeholder (1e30).
_UNKNOWN_CONTEXT = 10_000_000


def tokenizer_context(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model takes, as its tokenizer records it; None when it does not say."""
    length = getattr(tokenizer, "model_max_length", None)
    return int(length) if isinstance(length, int) and 0 < length < _UNKNOWN_CONTEXT else None


def answer_length_counts(tokenizer: PreTrainedTokenizerBase, rows: list[dict]) -> dict[str, int]:
    """How many expected answers have each length (tokens with end-of-turn), shortest first."""
    counts: dict[int, int] = {}
    for row in rows:
        length = answer_tokens(tokenizer, row["completion"])
        counts[length] = counts.get(length, 0) + 1
    return {str(length): counts[length] for length in sorted(counts)}


def expand_counts(counts: dict[str, int]) -> list[int]:
    """The lengths behind `answer_length_counts`, one per answer."""
    return [int(length) for length, count in counts.items() for _ in range(count)]


@dataclass
class PreparedData:
    """Tokenized splits plus a summary of what happened to the rows.

    Attributes:
        splits: Split name -> rows (example fields, prompt_text, input_ids, labels).
        summary: Counts per split, every dropped row with its reason, token statistics.
    """

    splits: dict[str, list[dict]]
    summary: dict = field(default_factory=dict)


def read_source(data: DataConfig) -> tuple[dict[str, RawRows], str]:
    """Read raw rows of the splits the source has, and describe the source."""
    if data.hub_id is not None:
        description = f"hub dataset {data.hub_id}" + (f" ({data.subset})" if data.subset else "")
        return read_hub(data.hub_id, data.subset, data.revision, data.hub_splits), description
    if data.path is not None:
        path = Path(data.path)
        files = split_files_in_folder(path) if path.is_dir() else {"train": path}
        return {split: read_file(file) for split, file in files.items()}, str(path)
    files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    return {split: read_file(Path(file)) for split, file in files.items() if file is not None}, str(data.train_file)


def _convert(raw: RawRows, data: DataConfig, split: str, dropped: list[dict]) -> list[Example]:
    bad = list(raw.bad)
    examples = []
    for row, source in raw.rows:
        try:
            examples.append(to_example(row, data.format, data.columns, source))
        except RowError as exc:
            bad.append((source, str(exc)))
    if bad and data.on_bad_rows == "error":
        source, reason = bad[0]
        more = f" ({len(bad) - 1} more bad rows; data.on_bad_rows: drop skips and lists them)" if len(bad) > 1 else ""
        raise DataError(f"{source}: {reason}{more}")
    dropped += [{"split": split, "source": source, "reason": reason} for source, reason in bad]
    return examples


def _carve(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off a seeded random share of the rows: (rest, carved)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(examples) * share))
    carved = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in carved], [examples[i] for i in sorted(carved)]


def _input_key(example: Example, system_prompt: str | None) -> tuple:
    return example.input_key(system_prompt)


def _length_histogram(lengths: list[int]) -> dict[str, int]:
    histogram: dict[str, int] = {}
    low = 0
    for high in LENGTH_BINS:
        histogram[f"{low + 1}-{high}"] = sum(1 for n in lengths if low < n <= high)
        low = high
    histogram[f">{LENGTH_BINS[-1]}"] = sum(1 for n in lengths if n > LENGTH_BINS[-1])
    return {label: count for label, count in histogram.items() if count}


def _token_stats(rows: list[dict]) -> dict:
    lengths = sorted(len(row["input_ids"]) for row in rows)
    trained = sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in rows)
    total = sum(lengths)
    return {
        "tokens": total,
        "trained_tokens": trained,
        "mean_tokens": round(total / len(lengths), 1),
        "min_tokens": lengths[0],
        "p50_tokens": lengths[len(lengths) // 2],
        "p95_tokens": lengths[int(0.95 * (len(lengths) - 1))],
        "max_tokens": lengths[-1],
        "completion_token_share": round(trained / total, 3),
        "length_histogram": _length_histogram(lengths),
    }


@dataclass
class SplitExamples:
    """The rows of each split after reading, converting, carving, de-duplication and the leakage check."""

    splits: dict[str, list[Example]]
    raw: dict[str, RawRows]
    source: str
    made: list[str]
    dropped: list[dict]
    counts: dict[str, dict]
    duplicates: dict[str, int]
    leakage: dict[str, int]

    def empty_split_error(self, split: str, data: DataConfig) -> DataError:
        return DataError(_no_rows_left(split, data, self.raw, self.made, self.source,
                                       [d for d in self.dropped if d["split"] == split]))


def split_examples(data: DataConfig) -> SplitExamples:
    """Everything before tokenization: no model or tokenizer needed.

    Raises:
        DataError: A bad row with `on_bad_rows: error`, a missing source, or no training rows.
    """
    raw, source = read_source(data)
    dropped: list[dict] = []
    examples = {split: _convert(rows, data, split, dropped) for split, rows in raw.items()}
    if not examples.get("train"):
        raise DataError(_no_rows_left("train", data, raw, [], source, dropped))

    made = []
    for split, share, seed in (("test", data.test_share, data.seed), ("validation", data.validation_share, data.seed + 1)):
        if split not in examples:
            examples["train"], examples[split] = _carve(examples["train"], share, seed)
            made.append(split)

    counts = {split: {"rows_read": len(raw[split].rows) + len(raw[split].bad) if split in raw else 0} for split in SPLITS}
    duplicates = {}
    for split in SPLITS:
        seen: set = set()
        kept = []
        for example in examples[split]:
            if example.key() in seen:
                dropped.append({"split": split, "source": example.source, "reason": "exact duplicate"})
                continue
            seen.add(example.key())
            kept.append(example)
        duplicates[split] = len(examples[split]) - len(kept)
        examples[split] = kept

    train_inputs = {_input_key(example, data.system_prompt) for example in examples["train"]}
    leakage = {}
    for split in ("validation", "test"):
        kept = []
        for example in examples[split]:
            if _input_key(example, data.system_prompt) in train_inputs:
                dropped.append({"split": split, "source": example.source, "reason": "input also in train (leakage)"})
            else:
                kept.append(example)
        leakage[split] = len(examples[split]) - len(kept)
        examples[split] = kept
    return SplitExamples(examples, raw, source, made, dropped, counts, duplicates, leakage)


def _row_limits(data: DataConfig) -> dict[str, int | None]:
    """data.max_*_rows by split (None: all rows)."""
    return {"train": data.max_train_rows, "validation": data.max_validation_rows, "test": data.max_test_rows}


def check_rows(data: DataConfig) -> dict[str, int] | None:
    """Read local sources and prepare every split up to tokenization: the checks that need no model.

    Run before a pipeline starts (and by --dry-run), so a typo in the data, or a split that
    de-duplication or the leakage check would empty, fails in a second with the file and line,
    not as a failed pipeline run. Hub datasets are left to the pipeline (reading them may mean
    a download).

    Returns:
        The rows each split will have before tokenization (which may drop over-long rows), or None
        for a hub dataset.

    Raises:
        DataError: What prepare_splits would raise for the same rows before tokenizing them.
    """
    if data.hub_id:
        return None
    prepared = split_examples(data)
    for split in SPLITS:
        if not prepared.splits[split]:
            raise prepared.empty_split_error(split, data)
    limits = _row_limits(data)
    return {split: min(len(rows), limits[split] or len(rows)) for split, rows in prepared.splits.items()}


def _no_rows_left(split: str, data: DataConfig, raw: dict, made: list[str], source: str, dropped: list[dict]) -> str:
    """One line: which split came out empty, from which file, and why its rows went."""
    read = [where for _, where in raw[split].rows] + [where for where, _ in raw[split].bad] if split in raw else []
    if read and ":" in read[0]:
        origin = read[0].rsplit(":", 1)[0]  # "file:line" of its first row
    elif getattr(data, f"{split}_file", None):
        origin = f"data.{split}_file: {getattr(data, f'{split}_file')}"
    else:
        origin = f"{source} ({split} rows carved from train)" if split in made else source
    reasons: dict[str, int] = {}
    for entry in dropped:
        reason = entry["reason"]
        kind = ("over max_seq_length" if "max_seq_length" in reason
                else reason if reason in ("exact duplicate", "input also in train (leakage)") else "bad row")
        reasons[kind] = reasons.get(kind, 0) + 1
    why = ", ".join(f"{count} {kind}" for kind, count in sorted(reasons.items(), key=lambda item: -item[1]))
    return (f"{origin}: no {split} rows left"
            + (f" of {len(read)} read" if read else "")
            + (f": {why}" if why else " (no rows in it)"))


def prepare_splits(
    data: DataConfig, tokenizer: PreTrainedTokenizerBase, context_window: int | None = None
) -> PreparedData:
    """Read the configured source and turn it into tokenized splits.

    Args:
        data: The YAML's `data` section (paths already resolved).
        tokenizer: The base model's tokenizer; its chat template formats the rows.
        context_window: The model's longest sequence (`model_loading.context_window`), the limit of
            `max_seq_length: auto`; None: what the tokenizer records, else no limit.

    Returns:
        The tokenized splits and a summary for the preflight report.

    Raises:
        DataError: A bad row with `on_bad_rows: error`, a missing source, or a split left empty.
    """
    prepared = split_examples(data)
    examples, raw, source, made, dropped = prepared.splits, prepared.raw, prepared.source, prepared.made, prepared.dropped
    counts, duplicates, leakage = prepared.counts, prepared.duplicates, prepared.leakage

    limits = _row_limits(data)
    window = context_window or tokenizer_context(tokenizer)
    max_seq_length = window if data.max_seq_length == "auto" else data.max_seq_length
    splits: dict[str, list[dict]] = {}
    summary: dict = {
        "source": source,
        "splits_made": made,
        "system_prompt": data.system_prompt,
        "max_seq_length": max_seq_length,  # None: no limit (auto, and the model names no context window)
        "max_seq_length_setting": data.max_seq_length,
        "context_window": window,
        "loss_on": data.loss_on,
        "packing": data.packing,
    }
    for split in SPLITS:
        capped = examples[split][: limits[split]] if limits[split] else examples[split]
        tokenized = tokenize_examples(
            capped, tokenizer, data.system_prompt, max_seq_length, data.loss_on, data.over_length,
            data.plain_template,
        )
        dropped += [{"split": split, "source": src, "reason": reason} for src, reason in tokenized.dropped]
        if not tokenized.rows:
            raise DataError(_no_rows_left(split, data, raw, made, source, [d for d in dropped if d["split"] == split]))
        splits[split] = tokenized.rows
        summary[split] = {
            **counts[split],
            "rows": len(tokenized.rows),
            "capped_at": limits[split],
            "duplicates_dropped": duplicates[split],
            "leakage_dropped": leakage.get(split, 0),
            "over_length": sum(1 for _, reason in tokenized.dropped if "max_seq_length" in reason),
            "longest_over_length": tokenized.longest_dropped,
            "truncated": len(tokenized.truncated),
            "mask_problems": sum(1 for _, reason in tokenized.dropped if "loss" in reason),
            # What carries loss: OpenAI's rule on chat rows (every assistant message of weight 1), or loss_on.
            "trained_turns": tokenized.trained_turns,
            "assistant_turns": tokenized.assistant_turns,
            "weighted_rows": tokenized.weighted_rows,
            "tool_rows": sum(1 for row in tokenized.rows if row.get("tools")),
            "call_answers": sum(1 for row in tokenized.rows if row.get("answer_meta", {}).get("tool_calls")),
            "fingerprint": fingerprint(tokenized.rows),
            **_token_stats(tokenized.rows),
        }
    # What evaluation.max_new_tokens: auto follows, and what the preflight report checks a set cap against.
    summary["answer_length_counts"] = answer_length_counts(tokenizer, [row for rows in splits.values() for row in rows])
    summary["dropped"] = dropped
    return PreparedData(splits=splits, summary=summary)


def save_prepared(prepared: PreparedData, directory: Path) -> Path:
    """Write each split as JSONL plus the summary as JSON into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in prepared.splits.items():
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (directory / "summary.json").write_text(json.dumps(prepared.summary, indent=2))
    return directory


TRAINING_SPLITS = ("train", "validation")


def training_digest(directory: Path) -> str:
    """A content hash of the splits training reads (train and validation, as `save_prepared` wrote them).

    The training step's cache key: other test rows (another `max_test_rows`, a new test file) give a new
    prepared folder but the same digest, and the trained adapter is reused rather than trained again.
    """
    digest = hashlib.sha256()
    for name in TRAINING_SPLITS:
        digest.update(name.encode() + b"\0")
        digest.update((Path(directory) / f"{name}.jsonl").read_bytes())
    return digest.hexdigest()


def load_prepared_split(directory: Path, name: str) -> list[dict]:
    """Read one split written by `save_prepared`."""
    with (Path(directory) / f"{name}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def load_prepared_completions(directory: Path) -> list[str]:
    """Every expected answer of the prepared splits (what evaluation.max_new_tokens: auto follows)."""
    return [row["completion"] for name in SPLITS for row in load_prepared_split(directory, name)]
