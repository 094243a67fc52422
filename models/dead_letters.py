"""The dead-letter record: what `dead-letters` carries for an input the pipeline refused, or
an output event a store refused (CONTRACT.md: the original bytes, as text or base64, the
source topic, partition and offset, and a readable error)."""

from __future__ import annotations

import base64
from typing import Any

import orjson

#: A dead letter carries at most this much of the original value; the rest stays
#: addressable in the source topic at the partition and offset it names.
DEAD_LETTER_VALUE_LIMIT = 256 * 1024


def dead_letter(
    raw: bytes | str | None, key: bytes | None, topic: str, partition: int, offset: int, error: str
) -> bytes:
    """The record; it encodes whatever the value's bytes (a text that is not valid UTF-8, or
    holds a lone surrogate, goes as base64 of its bytes)."""
    record: dict[str, Any] = {
        "error": error.encode("utf-8", "backslashreplace").decode("utf-8"),
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": _text_or_base64(key)[0] if key is not None else None,
    }
    if raw is not None and len(raw) > DEAD_LETTER_VALUE_LIMIT:
        record["value_bytes"] = len(raw)
        record["value_truncated"] = True
        raw = raw[:DEAD_LETTER_VALUE_LIMIT]
    value, encoding = _text_or_base64(raw)
    record["value"] = value
    record["value_encoding"] = encoding
    return orjson.dumps(record)


def _text_or_base64(data: bytes | str | None) -> tuple[str | None, str]:
    if data is None:
        return None, "none"
    if isinstance(data, str):
        try:
            data.encode("utf-8")
            return data, "text"
        except UnicodeEncodeError:  # a lone surrogate: its bytes as Python would have written them
            data = data.encode("utf-8", "surrogatepass")
    try:
        return data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"
