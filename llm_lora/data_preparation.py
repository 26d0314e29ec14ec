"""Load, validate, format and tokenize the three splits, and save them for the next steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from llm_lora.config import DataConfig
from llm_lora.data_loading import DataError, fingerprint, read_jsonl
from llm_lora.tokenization import IGNORE_INDEX, tokenize_rows

SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    """Tokenized splits plus a summary of what happened to the rows.

    Attributes:
        splits: Split name -> rows with prompt, completion, prompt_text, input_ids, labels.
        summary: Counts per split, rows dropped and why, token statistics, fingerprints.
    """

    splits: dict[str, list[dict]]
    summary: dict = field(default_factory=dict)


def _token_stats(rows: list[dict]) -> dict:
    lengths = sorted(len(row["input_ids"]) for row in rows)
    completion = sum(sum(1 for label in row["labels"] if label != IGNORE_INDEX) for row in rows)
    total = sum(lengths)
    return {
        "tokens": total,
        "mean_tokens": round(total / len(lengths), 1),
        "max_tokens": lengths[-1],
        "p95_tokens": lengths[int(0.95 * (len(lengths) - 1))],
        "completion_token_share": round(completion / total, 3),
    }


def prepare_splits(data: DataConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Read the configured files and turn them into tokenized splits.

    Test and validation rows whose prompt also appears in train are dropped:
    a model scored on rows it was trained on would look better than it is.

    Args:
        data: The YAML's `data` section (paths already resolved).
        tokenizer: The base model's tokenizer; its chat template formats the rows.

    Returns:
        The tokenized splits and their summary.

    Raises:
        DataError: A malformed file, or a split left empty.
    """
    limits = {"train": data.max_train_rows, "validation": data.max_validation_rows, "test": data.max_test_rows}
    files = {"train": data.train_file, "validation": data.validation_file, "test": data.test_file}
    raw = {name: read_jsonl(Path(files[name]), limits[name]) for name in SPLITS}

    train_prompts = {row["prompt"] for row in raw["train"]}
    summary: dict = {"system_prompt": data.system_prompt, "max_seq_length": data.max_seq_length}
    splits: dict[str, list[dict]] = {}
    for name in SPLITS:
        kept = list(range(len(raw[name])))  # positions in the file, for the report
        dropped = []
        if name != "train":
            dropped += [(i, "prompt also in train") for i in kept if raw[name][i]["prompt"] in train_prompts]
            kept = [i for i in kept if raw[name][i]["prompt"] not in train_prompts]
        tokenized = tokenize_rows([raw[name][i] for i in kept], tokenizer, data.system_prompt, data.max_seq_length)
        dropped += [(kept[i], reason) for i, reason in tokenized.dropped]
        if not tokenized.rows:
            raise DataError(f"{files[name]}: no {name} rows left after dropping {len(dropped)} (see max_seq_length)")
        splits[name] = tokenized.rows
        summary[name] = {
            "file": str(files[name]),
            "rows_read": len(raw[name]),
            "rows": len(tokenized.rows),
            "rows_dropped": len(dropped),
            "dropped": [{"row": i + 1, "reason": reason} for i, reason in dropped],
            "fingerprint": fingerprint(tokenized.rows),
            **_token_stats(tokenized.rows),
        }
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


def load_prepared_split(directory: Path, name: str) -> list[dict]:
    """Read one split written by `save_prepared`."""
    with (Path(directory) / f"{name}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
