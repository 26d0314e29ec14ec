"""Read raw rows from local files, folders or a Hugging Face hub dataset.

Local files are read here, not through `datasets`: every problem is reported
with its file and line (JSONL and CSV) or row, a bad line is either fatal or
dropped and listed (`on_bad_rows`), and CSV cells stay the text they were
written as (an answer column of 0/1/2 is a classification label, not a number).
Hub datasets go through `datasets`; `HF_HUB_OFFLINE=1` is respected: a hub
dataset then loads only from the cache.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
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
    data = _bytes_of(path).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark, as some editors write
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


def _bytes_of(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:  # no permission, a folder, a device
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None


def _text_of(path: Path) -> str:
    try:
        return _bytes_of(path).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 (byte {error.start + 1} of the file)") from None


def read_json(path: Path) -> RawRows:
    """A JSON file: a list of row objects, an object of equal-length columns, or JSON Lines under a .json name."""
    text = _text_of(path)
    if not text.strip():
        return RawRows()
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and text.lstrip().startswith("{"):  # one object per line: JSON Lines
            return read_jsonl(path)
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg}, column {error.colno})") from None
    if isinstance(loaded, dict) and len(loaded) == 1 and _is_rows(next(iter(loaded.values()))):
        loaded = next(iter(loaded.values()))  # rows under one key, e.g. {"data": [{...}, ...]}
    elif isinstance(loaded, dict) and loaded and all(isinstance(value, list) for value in loaded.values()):
        lengths = {name: len(values) for name, values in loaded.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{path}: columns of different lengths ({', '.join(f'{k}: {v}' for k, v in lengths.items())})")
        names = list(loaded)
        loaded = [dict(zip(names, values)) for values in zip(*loaded.values())]
    if isinstance(loaded, dict):
        loaded = [loaded]
    if not isinstance(loaded, list):
        raise DataError(f"{path}: expected a list of row objects, got {type(loaded).__name__}")
    result = RawRows()
    for number, row in enumerate(loaded, start=1):
        where = f"{path}:row {number}"
        if isinstance(row, dict):
            result.rows.append((row, where))
        else:
            result.bad.append((where, f"expected a JSON object, got {type(row).__name__}"))
    return result


def _is_rows(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def _delimiter(path: Path, text: str) -> str:
    """Tab for .tsv; else the comma, unless the header line has none and a semicolon, tab or bar separates it."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return next((mark for mark in (";", "\t", "|") if mark in header), ",")


def read_csv(path: Path) -> RawRows:
    """A CSV (or TSV) file with a header line; every cell is kept as the text written there."""
    text = _text_of(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell are rows too
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(path, text), strict=True)
    result = RawRows()
    try:
        header = next(reader, None)
        if header is None:
            return result
        names = [name.strip() for name in header]
        unnamed = [str(i + 1) for i, name in enumerate(names) if not name]
        if unnamed:
            raise DataError(f"{path}:1: header has an unnamed column (column {unnamed[0]})")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataError(f"{path}:1: header names column {repeated[0]!r} twice")
        start = reader.line_num + 1
        for cells in reader:
            where = f"{path}:line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            if len(cells) != len(names):
                result.bad.append((where, f"{len(cells)} cells, but the header has {len(names)} columns"))
                continue
            result.rows.append((dict(zip(names, cells)), where))
    except csv.Error as error:  # e.g. a quote opened and never closed
        raise DataError(f"{path}:line {start}: malformed CSV ({error}); a quoted cell may be missing its closing quote") from None
    return result


def read_parquet(path: Path) -> RawRows:
    """A Parquet file, row by row."""
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read as Parquet ({reason}); the file may be damaged or not Parquet") from None
    return RawRows(rows=[(row, f"{path}:row {i + 1}") for i, row in enumerate(table.to_pylist())])


def read_file(path: Path) -> RawRows:
    """Read one local data file of any supported type.

    Raises:
        DataError: Missing file or unsupported type.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file (data.path reads a folder of split files)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(SUFFIXES)})")
    reader = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".tsv": read_csv, ".parquet": read_parquet}[suffix]
    return reader(path)


def files_digest(paths: list[Path]) -> str:
    """A short hash of files' contents (a missing file hashes as missing): what a step reading them is keyed on."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(str(path).encode() + (path.read_bytes() if path.is_file() else b"\0missing"))
    return digest.hexdigest()[:16]


def split_files_in_folder(folder: Path) -> dict[str, Path]:
    """Find train/validation/test files in a folder by their names.

    A folder with a single data file and no split names yields {"train": file}:
    the other splits are then made from it.

    Raises:
        DataError: No data files, or several files for one split.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:5]
        raise DataError(f"{folder}: no {', '.join(SUFFIXES)} files in this folder"
                        + (f" (found {', '.join(others)})" if others else " (it is empty)"))
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
    if "train" not in found:
        raise DataError(
            f"{folder}: no train file (found {', '.join(p.name for p in files)}); name the training rows"
            f" train{files[0].suffix.lower()} (or training)"
        )
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
