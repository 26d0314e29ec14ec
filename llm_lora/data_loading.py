"""Read and validate prompt/completion JSONL files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class DataError(ValueError):
    """A data file that cannot be used; the message names file, line and field."""


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """Read prompt/completion rows, failing on the first bad line.

    Args:
        path: A JSONL file, one object per line with non-empty string
            "prompt" and "completion" fields (other fields are kept).
        limit: Keep only the first `limit` rows.

    Returns:
        The rows, in file order.

    Raises:
        DataError: With file, line and field of the first problem.
    """
    rows: list[dict] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in ("prompt", "completion"):
            if field not in row:
                raise DataError(f"{where}: missing field {field!r}")
            if not isinstance(row[field], str):
                raise DataError(f"{where}: field {field!r} must be a string, got {type(row[field]).__name__}")
            if not row[field].strip():
                raise DataError(f"{where}: field {field!r} is empty")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def fingerprint(rows: list[dict]) -> str:
    """A short content hash of prompt/completion rows: equal rows, equal fingerprint.

    Used to tell whether two evaluations ran on the same test rows.
    """
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["prompt"], row["completion"]]).encode())
    return digest.hexdigest()[:16]
