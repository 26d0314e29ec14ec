"""A retrain's data: a finetune config's rows plus newly labelled ones, written where the run can read them.

The finetune config keeps every setting but its data source: the rows of each split it has are
written, in the canonical chat shape (`messages`), into a folder of the retrain's own, with the new
labelled rows first in train (so that `data.max_train_rows` keeps them), and the config's copy
there names those files. Validation and test rows the source has stay what they were, so the new
version is scored on the same test rows as the versions before it, and the promotion gate compares
like with like (splits the source carves from train are carved anew from the combined rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from llm_lora.config import RunConfig
from llm_lora.data_formats import Example, RowError, to_example
from llm_lora.data_preparation import read_source
from llm_lora.data_sources import DataError
from llm_lora.monitoring import input_key


@dataclass
class RetrainData:
    """The files a retrain reads.

    Attributes:
        config_file: The finetune YAML to run (every setting of the original, the data keys replaced).
        config: That config, validated.
        train_rows: Rows in its train file.
        new_rows: Of those, the labelled rows added (the first ones in the file).
    """

    config_file: Path
    config: RunConfig
    train_rows: int
    new_rows: int


def _write_rows(path: Path, examples: list[Example]) -> Path:
    # The messages shape holds any format's rows (system, turns, answer, tools, calls, weights).
    path.write_text("".join(json.dumps(e.to_messages_row(), ensure_ascii=False) + "\n" for e in examples),
                    encoding="utf-8")
    return path


def write_retrain_data(finetune: RunConfig, labelled: list[Example], folder: Path,
                       stamp: str | None = None) -> RetrainData:
    """Write a finetune config's splits plus the labelled rows it lacks, and the config that trains on them.

    Args:
        finetune: The finetune config (validated, paths absolute).
        labelled: Every labelled row (the monitor's new_rows source); those whose input any split of the
            config's data holds already are left out.
        folder: `retrain.data_folder`; a subfolder named by `stamp` is made for this retrain.
        stamp: The subfolder's name (default: the date and time).

    Raises:
        DataError: The finetune config's data cannot be read or has a bad row; nothing new to add.
    """
    data = finetune.data
    raws, _ = read_source(data)
    splits: dict[str, list[Example]] = {}
    for split, raw in raws.items():
        examples = []
        for row, where in raw.rows:
            try:
                examples.append(to_example(row, data.format, data.columns, where))
            except RowError as exc:
                if data.on_bad_rows == "error":
                    raise DataError(f"{where}: {exc}") from None
        splits[split] = examples
    known = {input_key(example, data.system_prompt) for examples in splits.values() for example in examples}
    added, seen = [], set(known)
    for example in labelled:
        key = input_key(example, data.system_prompt)
        if key not in seen:
            seen.add(key)
            added.append(example)
    if not added:
        raise DataError("retrain: every labelled row is in the finetune config's data already; nothing to add")
    target = folder / (stamp or f"{datetime.now():%Y_%m_%d-%H_%M_%S}")
    target.mkdir(parents=True, exist_ok=True)
    splits["train"] = added + splits.get("train", [])
    files = {f"{split}_file": str(_write_rows(target / f"{split}.jsonl", examples).resolve())
             for split, examples in splits.items()}
    settings = finetune.model_dump(mode="json", exclude={"remote"} if finetune.remote is None else set())
    settings["data"].update({"train_file": None, "validation_file": None, "test_file": None, "path": None,
                             "hub_id": None, "subset": None, "revision": None, "format": "messages", "columns": {},
                             **files})
    config_file = target / "finetune.yaml"
    header = (f"# Written by the monitor: {len(added)} new labelled rows + the rows of the finetune config's data.\n"
              f"#   python run.py --config {config_file}\n")
    config_file.write_text(header + yaml.safe_dump({"kind": "finetune", **settings}, sort_keys=False),
                           encoding="utf-8")
    return RetrainData(config_file, RunConfig.model_validate(settings), len(splits["train"]), len(added))
