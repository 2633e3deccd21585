"""The checks every argument passes before it reaches a script: one message naming the field
(:class:`~pausesvc.InvalidInputError`), never a Redis error or a traceback. No I/O."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pausesvc._exceptions import InvalidInputError

__all__ = [
    "MAX_REASON_LENGTH",
    "MAX_TTL_S",
    "number_from_text",
    "validate_load",
    "validate_path",
    "validate_reason",
    "validate_timeout",
    "validate_token",
    "validate_ttl",
]

MAX_REASON_LENGTH = 1024
MAX_TTL_S = 7 * 24 * 3600.0

#: a number written as JSON would write it, in a string ("0.3", "5", "1e-2"); nothing else
_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def number_from_text(value: object) -> object:
    """``"0.3"`` -> ``0.3`` (SkyRL's server did ``float(timeout_s)``); anything else unchanged,
    so the validator after it refuses ``"soon"``, ``"nan"``, ``"inf"`` and ``"1_0"`` by name."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        return float(value)
    return value


def validate_timeout(value: object, *, field: str = "timeout", allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise InvalidInputError(f"{field} is required", field=field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{field} must be a number of seconds", field=field)
    v = float(value)
    if math.isnan(v) or v < 0 or math.isinf(v):
        raise InvalidInputError(f"{field} must be a finite number >= 0, got {value!r}", field=field)
    return v


def validate_ttl(value: object, *, field: str = "ttl") -> int:
    """A lease length in seconds -> milliseconds (> 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{field} must be a number of seconds", field=field)
    v = float(value)
    if math.isnan(v) or v <= 0 or v > MAX_TTL_S:
        raise InvalidInputError(
            f"{field} must be > 0 and <= {int(MAX_TTL_S)} seconds, got {value!r}", field=field
        )
    return max(1, round(v * 1000))


_TOKEN = re.compile(r"[1-9][0-9]{0,18}(-[0-9A-Za-z]{1,64})?")


def validate_token(value: object) -> str:
    """A fencing token as ``pause`` returned it (``"<revision>-<nonce>"``), as a string.

    A bare positive integer is accepted too (holds written before tokens carried a nonce); it
    never matches a hold that has one."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if isinstance(value, str) and _TOKEN.fullmatch(value.strip()):
        return value.strip()
    raise InvalidInputError(
        f"token must be a fencing token as pause returned it (like '57-3f9a1c2b7d4e'), got {value!r}",
        field="token",
    )


def validate_reason(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError("reason must be a string", field="reason")
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidInputError(f"reason is longer than {MAX_REASON_LENGTH} characters", field="reason")
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise InvalidInputError("reason must not contain control characters", field="reason")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInputError("reason must be valid Unicode (no lone surrogates)", field="reason")
    return value


MAX_PATH_LENGTH = 4096
MAX_LOAD_BYTES = 16 * 1024
MAX_LOAD_FIELDS = 64
#: load_lora_adapter fields a desired version sets itself (the adapter's name and ``path``)
RESERVED_LOAD_KEYS = frozenset({"lora_name", "lora_path"})


def validate_path(value: object) -> str:
    """Where a version's weights are: a non-empty string without control characters."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError("path must be a non-empty string", field="path")
    if len(value) > MAX_PATH_LENGTH:
        raise InvalidInputError(f"path is longer than {MAX_PATH_LENGTH} characters", field="path")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise InvalidInputError("path must not contain control characters", field="path")
    return value


def _scalar(key: str, value: object) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise InvalidInputError(
        f"load.{key} must be a string, number, boolean or null, not {type(value).__name__}", field="load"
    )


def validate_load(value: object) -> dict[str, Any]:
    """Extra ``load_lora_adapter`` fields: a JSON object of scalar values; ``lora_name`` and
    ``lora_path`` are not allowed (the adapter's name and ``path`` are)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError("load must be a JSON object", field="load")
    if len(value) > MAX_LOAD_FIELDS:
        raise InvalidInputError(f"load has more than {MAX_LOAD_FIELDS} fields", field="load")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError("load keys must be non-empty strings", field="load")
        if key in RESERVED_LOAD_KEYS:
            raise InvalidInputError(
                f"load must not set {key!r} (the adapter's name and path are used)", field="load"
            )
        _scalar(key, v)
        out[key] = v
    if len(json.dumps(out)) > MAX_LOAD_BYTES:
        raise InvalidInputError(f"load is larger than {MAX_LOAD_BYTES} bytes as JSON", field="load")
    return out
