"""A GGUF file's header read without reading the file: its metadata values and where its tensor data ends.

`gguf.GGUFReader` builds a numpy view of every metadata element, the tokenizer's ~100,000 strings included,
which takes seconds; the checks before a run need three numbers. This walks the header once with `struct`
and keeps the scalar and string values (arrays are skipped, counted only).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# GGUF value types (gguf.constants.GGUFValueType) and their sizes; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class HeaderError(ValueError):
    """The bytes do not parse as a GGUF header (a file cut short or not GGUF)."""


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header says.

    Attributes:
        values: Scalar and string metadata by key (arrays are left out).
        data_end: The byte just past the last tensor's data, by the header's offsets and shapes.
        tensor_count: How many tensors the header lists.
    """

    values: dict
    data_end: int
    tensor_count: int


class _Cursor:
    def __init__(self, handle) -> None:
        self.handle = handle

    def take(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise HeaderError("the file ends inside its header")
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8", "replace")

    def skip(self, value_type: int) -> None:
        if value_type == _STRING:
            self.handle.seek(self.unpack("Q"), 1)
        elif value_type == _ARRAY:
            element, count = self.unpack("I"), self.unpack("Q")
            if element in _SCALARS:
                self.handle.seek(count * struct.calcsize(_SCALARS[element]), 1)
            else:
                for _ in range(count):
                    self.skip(element)
        elif value_type in _SCALARS:
            self.handle.seek(struct.calcsize(_SCALARS[value_type]), 1)
        else:
            raise HeaderError(f"unknown metadata value type {value_type}")


def read_header(path: Path) -> GGUFHeader:
    """Read a GGUF file's header.

    Raises:
        HeaderError: The file is not GGUF or its header is cut short or malformed.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # constants only: no numpy views

    with Path(path).open("rb") as handle:
        cursor = _Cursor(handle)
        if cursor.take(4) != b"GGUF":
            raise HeaderError("it does not start with GGUF")
        version = cursor.unpack("I")
        if version < 2:
            raise HeaderError(f"GGUF version {version} is older than this reader knows")
        tensor_count, kv_count = cursor.unpack("Q"), cursor.unpack("Q")
        values: dict = {}
        for _ in range(kv_count):
            key, value_type = cursor.string(), cursor.unpack("I")
            if value_type == _STRING:
                values[key] = cursor.string()
            elif value_type in _SCALARS:
                values[key] = cursor.unpack(_SCALARS[value_type])
            else:
                cursor.skip(value_type)
        extents = []
        for _ in range(tensor_count):
            cursor.string()
            dims = [cursor.unpack("Q") for _ in range(cursor.unpack("I"))]
            kind, offset = cursor.unpack("I"), cursor.unpack("Q")
            try:
                block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (KeyError, ValueError):
                raise HeaderError(f"unknown tensor type {kind}") from None
            elements = 1
            for dim in dims:
                elements *= dim
            extents.append(offset + elements // block * block_bytes)
        alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
        start = handle.tell()
        start += -start % alignment
    return GGUFHeader(values, start + max(extents, default=0), tensor_count)
