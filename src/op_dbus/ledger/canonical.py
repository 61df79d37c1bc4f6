"""RFC 8785 (JCS) canonical JSON bytes, with the integer policy of the audit log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import rfc8785

from op_dbus.errors import LedgerError

# RFC 8785 numbers are IEEE 754 doubles: integers beyond +-(2^53 - 1) cannot be represented exactly
# and the rfc8785 package refuses them. D-Bus uint64 properties (systemd's "infinity" limits are
# 2^64 - 1) hit this routinely, so such integers are recorded as their decimal string instead.
INT_MAX = 2**53 - 1
INT_MIN = -(2**53) + 1
MAX_DEPTH = 200

_encode_plain = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
).encode


class CanonicalError(LedgerError, ValueError):
    """A value cannot be recorded as canonical JSON (NaN, infinity, a non-string key, an unsupported type)."""


def _is_plain(value: Any) -> bool:
    """True when `json.dumps(sort_keys=True)` already yields the RFC 8785 bytes.

    That holds when there are no floats (ECMAScript number formatting differs from Python's repr),
    no out-of-range integers, and every object key is ASCII (Python sorts keys by code point,
    RFC 8785 by UTF-16 code unit; the two agree on ASCII). String escaping is identical.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if INT_MIN <= item <= INT_MAX:
                continue
            return False
        if kind is dict:
            for key in item:
                if type(key) is not str or not key.isascii():
                    return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return True


def _normalise(value: Any, path: str, depth: int) -> Any:
    """A copy of `value` with big integers as strings and tuples as lists; rejects what JSON cannot hold."""
    if depth > MAX_DEPTH:
        raise CanonicalError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        value = int(value)
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalError(f"{path}: {value!r} is not a JSON number")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{path}: object key {key!r} is not a string")
            out[key] = _normalise(item, f"{path}[{json.dumps(key)}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise CanonicalError(f"{path}: a {type(value).__name__} cannot be recorded (JSON values only)")


def canonical(value: Any, *, path: str = "$") -> bytes:
    """The RFC 8785 bytes of `value`; integers outside +-(2^53 - 1) become decimal strings."""
    if _is_plain(value):
        try:
            return _encode_plain(value).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let the strict path name it
        except RecursionError as exc:
            raise CanonicalError(f"{path}: nested too deeply") from exc
    normalised = _normalise(value, path, 0)
    try:
        return rfc8785.dumps(normalised)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError) as exc:
        raise CanonicalError(f"{path}: cannot be written as canonical JSON: {exc}") from exc
    except RecursionError as exc:
        raise CanonicalError(f"{path}: nested too deeply") from exc


def canonical_object(members: Mapping[str, bytes]) -> bytes:
    """The RFC 8785 bytes of an object whose member values are already canonical bytes."""
    keys = sorted(members, key=lambda k: k.encode("utf-16-be"))
    parts = [canonical(key) + b":" + members[key] for key in keys]
    return b"{" + b",".join(parts) + b"}"


def loads(data: bytes) -> Any:
    """Parse canonical bytes back into Python values (big integers stay the strings they were stored as)."""
    return json.loads(data)
