"""Protocol Buffers' wire format, read straight from a model file's bytes: no schema, no parse of what is not
asked for, no code from the file run. ONNX models (``ModelProto``) and Core ML specs (``Model``) are each one
protobuf message; ``runtimes.model_digest`` hashes an ONNX file's fields but one, and the targets' embedded-fact
readers take the string pairs (ONNX ``metadata_props``, Core ML ``userDefined``) efexport wrote into them."""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence

ONNX_METADATA_PROPS = 14  # onnx ModelProto.metadata_props: repeated StringStringEntryProto (key = 1, value = 2)

Buffer = bytes | memoryview | mmap.mmap


def varint(data: Buffer, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``pos`` and the position after it; ValueError if it is truncated or too long."""
    result = shift = 0
    while shift < 64:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint longer than 64 bits")


def fields(data: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start, payload start, end) of each field of the protobuf message in ``data[start:end]``,
    without decoding the payloads; ValueError on anything that is not well-formed."""
    pos = start
    while pos < end:
        first = pos
        key, pos = varint(data, pos)
        number, wire = key >> 3, key & 7
        payload = pos
        if wire == 0:
            _, pos = varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, payload = varint(data, pos)
            pos = payload + length
        elif wire == 5:
            pos += 4
        else:  # groups (3, 4) are in neither ONNX nor Core ML; 6 and 7 are not wire types
            raise ValueError(f"wire type {wire}")
        if number == 0 or pos > end:
            raise ValueError("malformed field")
        yield number, first, payload, pos


def string_pairs(data: Buffer, path: Sequence[int]) -> list[tuple[str, str]]:
    """The (key, value) entries of the repeated key/value message at ``path`` (field numbers from the top
    message; the last names the repeated field): ONNX's ``StringStringEntryProto`` and a protobuf ``map<string,
    string>`` entry are both ``key = 1, value = 2``. In file order, duplicates kept; ValueError when the bytes are
    not well-formed or a key or value is not UTF-8."""
    spans = [(0, len(data))]
    for number in path:  # a message field given twice is merged (its repeated fields concatenated): keep all
        found = []
        for start, end in spans:
            for field, first, payload, stop in fields(data, start, end):
                if field == number:
                    if varint(data, first)[0] & 7 != 2:
                        raise ValueError(f"field {number} is not a message")
                    found.append((payload, stop))
        spans = found
    pairs = []
    for start, end in spans:
        entry = {1: b"", 2: b""}
        for field, _, payload, stop in fields(data, start, end):
            if field in entry:
                entry[field] = bytes(data[payload:stop])
        pairs.append((entry[1].decode(), entry[2].decode()))  # UnicodeDecodeError is a ValueError
    return pairs


__all__ = ["fields", "string_pairs", "varint"]
