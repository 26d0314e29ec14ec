"""Read raw rows from local files, folders or a Hugging Face hub dataset.

Local JSONL is read line by line, so every problem is reported with its file
and line; a bad line is either fatal or dropped and listed (`on_bad_rows`).
JSON, CSV and Parquet files go through the `datasets` library like hub datasets.
`HF_HUB_OFFLINE=1` is respected: a hub dataset then loads only from the cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# File stems that name a split inside a data folder.
SPLIT_STEMS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "validate", "val", "dev", "eval"),
    "test": ("test", "tests", "testing"),
}


class DataError(ValueError):
    """Data that cannot be used; the message names file, line and field."""


@dataclass
class RawRows:
    """Rows read from one source, with the lines that could not be read.

    Attributes:
        rows: (row, "file:line") pairs.
        bad: ("file:line", reason) for every unreadable line.
    """

    rows: list[tuple[dict, str]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def read_jsonl(path: Path) -> RawRows:
    """Read a JSONL file, keeping every bad line's number and reason."""
    result = RawRows()
    try:
        data = path.read_bytes()
        data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors and exports write
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.bad.append((where, f"not UTF-8 (byte {exc.start + 1} of the line)"))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            result.bad.append((where, f"malformed JSON ({exc.msg}, column {exc.colno})"))
            continue
        if not isinstance(row, dict):
            result.bad.append((where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        result.rows.append((row, where))
    return result


def _read_with_datasets(path: Path) -> RawRows:
    import datasets

    builder = {".json": "json", ".csv": "csv", ".parquet": "parquet"}[path.suffix]
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types; the user needs the file and the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if builder == "json":  # datasets does not say where; Python's parser does
            try:
                json.loads(path.read_text(encoding="utf-8-sig"))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
            except UnicodeDecodeError as error:
                raise DataError(f"{path}: not UTF-8 (byte {error.start + 1} of the file)") from None
        raise DataError(f"{path}: cannot read as {builder.upper()}: {reason}") from None
    # CSV header is line 1, so row i sits on line i + 2; other formats count rows from 1.
    offset = 2 if builder == "csv" else 1
    label = "line" if builder == "csv" else "row"
    return RawRows(rows=[(dict(row), f"{path}:{label} {i + offset}") for i, row in enumerate(dataset)])


def read_file(path: Path) -> RawRows:
    """Read one local data file of any supported type.

    Raises:
        DataError: Missing file or unsupported type.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file (data.path reads a folder of split files)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return _read_with_datasets(path)


def split_files_in_folder(folder: Path) -> dict[str, Path]:
    """Find train/validation/test files in a folder by their names.

    A folder with a single data file and no split names yields {"train": file}:
    the other splits are then made from it.

    Raises:
        DataError: No data files, or several files for one split.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no {', '.join(SUFFIXES)} files in this folder")
    found: dict[str, Path] = {}
    for split, stems in SPLIT_STEMS.items():
        matches = [p for p in files if p.stem.lower() in stems]
        if len(matches) > 1:
            raise DataError(f"{folder}: several files for the {split} split: {', '.join(p.name for p in matches)}")
        if matches:
            found[split] = matches[0]
    if not found:
        if len(files) > 1:
            raise DataError(
                f"{folder}: cannot tell the splits apart; name the files train/validation/test "
                f"(found {', '.join(p.name for p in files)})"
            )
        found["train"] = files[0]
    ignored = [p.name for p in files if p not in found.values()]
    if ignored:  # said aloud: a file meant as a split but named otherwise would vanish without a word
        logger.warning(
            "%s: not read: %s (only files named train/validation/test are splits; missing splits are carved"
            " from train)", folder, ", ".join(ignored),
        )
    return found


def read_hub(hub_id: str, subset: str | None, revision: str | None, split_names: dict[str, str]) -> dict[str, RawRows]:
    """Read the configured splits of a hub dataset (or a local dataset folder) with `datasets`.

    Args:
        hub_id: "org/name" on the hub, or a local folder `load_dataset` understands.
        subset: The dataset's configuration name, if it has several.
        revision: A branch, tag or commit.
        split_names: Our split name -> the dataset's split name.

    Returns:
        Raw rows of each split the dataset has.

    Raises:
        DataError: The dataset or a named split cannot be loaded.
    """
    import datasets

    try:
        loaded = datasets.load_dataset(hub_id, subset, revision=revision)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data.hub_id: cannot load {hub_id!r}: {reason}") from None
    result: dict[str, RawRows] = {}
    for ours, theirs in split_names.items():
        if theirs not in loaded:
            if ours == "train":
                raise DataError(
                    f"data.hub_splits.train: split {theirs!r} not in {hub_id!r} (it has {', '.join(loaded)})"
                )
            continue
        label = f"{hub_id}[{theirs}]"
        result[ours] = RawRows(rows=[(dict(row), f"{label} row {i + 1}") for i, row in enumerate(loaded[theirs])])
    return result
