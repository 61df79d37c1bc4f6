"""D-Bus values as JSON and back, checked against a type signature; introspection XML read into a typed tree.

JSON has fewer types than D-Bus, so the mapping is fixed and documented here once:

    y n q i u x t     integer (range-checked)          d   number
    b                 boolean                          s   string     o  object path    g  signature
    a<T>              array                            a{K V}  object (keys are strings; integer keys in decimal)
    ay                array of integers 0..255         (...)   array of the struct's fields, in order
    v                 {"type": SIGNATURE, "data": VALUE}  (as `busctl --json` writes it)
    h                 not representable (a file descriptor only means something inside one connection)

`from_json` validates and converts, collecting every error with its JSON path; `to_json` is its inverse, so
`to_json(from_json(x))` is the canonical form of `x` and two values are equal when their canonical forms are.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from xml.etree import ElementTree

from dbus_fast import SignatureTree, SignatureType, Variant
from dbus_fast.errors import InvalidSignatureError

from op_dbus.errors import BackendError, InvalidInput
from op_dbus.state import json_type

INT_RANGES = {
    "y": (0, 2**8 - 1),
    "n": (-(2**15), 2**15 - 1),
    "q": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1),
    "x": (-(2**63), 2**63 - 1),
    "t": (0, 2**64 - 1),
}
_OBJECT_PATH = re.compile(r"/([A-Za-z0-9_]+(/[A-Za-z0-9_]+)*)?")


class SignatureMismatch(InvalidInput):
    """A JSON value does not fit a D-Bus signature; `errors` holds (path suffix, message) for every misfit."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p or '(value)'}: {m}" for p, m in errors))


@lru_cache(maxsize=4096)
def parse_signature(signature: str) -> SignatureType:
    """The single complete type of `signature` (a property's type), or ValueError."""
    try:
        types = SignatureTree(signature).types
    except InvalidSignatureError as e:
        raise ValueError(f"invalid D-Bus signature {signature!r}: {e}") from None
    if len(types) != 1:
        raise ValueError(f"{signature!r} is not a single complete D-Bus type")
    return types[0]


def _key(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f'{path}["{key}"]'


def from_json(signature: str | SignatureType, value: Any) -> Any:
    """Convert a JSON value to what dbus-fast marshals for `signature`; raise SignatureMismatch listing every misfit."""
    t = parse_signature(signature) if isinstance(signature, str) else signature
    errors: list[tuple[str, str]] = []
    out = _from(t, value, "", errors)
    if errors:
        raise SignatureMismatch(errors)
    return out


def _from(t: SignatureType, value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    token = t.token
    if token in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append((path, f"expected an integer (D-Bus {token}), got {json_type(value)}"))
            return None
        low, high = INT_RANGES[token]
        if not low <= value <= high:
            errors.append((path, f"{value} is out of range for D-Bus type {token} ({low}..{high})"))
        return value
    if token == "d":
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append((path, f"expected a number (D-Bus d), got {json_type(value)}"))
            return None
        if isinstance(value, float) and not math.isfinite(value):
            errors.append((path, "expected a finite number"))
        return float(value)
    if token == "b":
        if not isinstance(value, bool):
            errors.append((path, f"expected a boolean (D-Bus b), got {json_type(value)}"))
        return value
    if token in ("s", "o", "g"):
        if not isinstance(value, str):
            errors.append((path, f"expected a string (D-Bus {token}), got {json_type(value)}"))
            return None
        if token == "s" and "\0" in value:
            errors.append((path, "a D-Bus string cannot contain NUL"))
        if token == "o" and not _OBJECT_PATH.fullmatch(value):
            errors.append((path, f"{value!r} is not a D-Bus object path"))
        if token == "g":
            try:
                SignatureTree(value)
            except InvalidSignatureError:
                errors.append((path, f"{value!r} is not a D-Bus signature"))
        return value
    if token == "h":
        errors.append((path, "file descriptors (D-Bus h) cannot be declared"))
        return None
    if token == "v":
        if not (isinstance(value, dict) and set(value) == {"type", "data"} and isinstance(value["type"], str)):
            errors.append((path, 'expected a variant as {"type": SIGNATURE, "data": VALUE}, got ' + json_type(value)))
            return None
        try:
            inner = parse_signature(value["type"])
        except ValueError as e:
            errors.append((f"{path}.type", str(e)))
            return None
        before = len(errors)
        data = _from(inner, value["data"], f"{path}.data", errors)
        return Variant(inner.signature, data) if len(errors) == before else None
    if token == "(":
        fields = t.children
        if not isinstance(value, list) or len(value) != len(fields):
            errors.append((path, f"expected an array of {len(fields)} field(s) for the struct {t.signature}, "
                                 f"got {json_type(value)}" + (f" of {len(value)}" if isinstance(value, list) else "")))
            return None
        return [_from(f, v, f"{path}[{i}]", errors) for i, (f, v) in enumerate(zip(fields, value, strict=True))]
    if token == "a":
        (child,) = t.children
        if child.token == "{":
            key_t, val_t = child.children
            if not isinstance(value, dict):
                errors.append((path, f"expected an object (D-Bus {t.signature}), got {json_type(value)}"))
                return None
            result = {}
            for k, v in value.items():
                key = _dict_key(key_t, k, _key(path, k), errors)
                result[key] = _from(val_t, v, _key(path, k), errors)
            return result
        if not isinstance(value, list):
            errors.append((path, f"expected an array (D-Bus {t.signature}), got {json_type(value)}"))
            return None
        items = [_from(child, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return bytes(items) if child.token == "y" and all(isinstance(b, int) for b in items) else items
    errors.append((path, f"unsupported D-Bus type {t.signature}"))
    return None


def _dict_key(t: SignatureType, key: str, path: str, errors: list[tuple[str, str]]) -> Any:
    if t.token in INT_RANGES:
        try:
            number = int(key, 10)
        except ValueError:
            errors.append((path, f"key {key!r} is not an integer (D-Bus {t.token} key)"))
            return key
        return _from(t, number, path, errors)
    if t.token == "b":
        if key not in ("true", "false"):
            errors.append((path, f"key {key!r} is not true/false"))
        return key == "true"
    if t.token == "d":
        try:
            return float(key)
        except ValueError:
            errors.append((path, f"key {key!r} is not a number"))
            return key
    return _from(t, key, path, errors)


def to_json(signature: str | SignatureType, value: Any) -> Any:
    """A value as dbus-fast unmarshals it for `signature`, as JSON (the canonical form of the table above)."""
    t = parse_signature(signature) if isinstance(signature, str) else signature
    return _to(t, value)


def _to(t: SignatureType, value: Any) -> Any:
    token = t.token
    if token == "d":
        return float(value)
    if token == "v":
        inner = value.signature if isinstance(value, Variant) else None
        if inner is None:
            return value
        return {"type": inner, "data": _to(parse_signature(inner), value.value)}
    if token == "(":
        return [_to(f, v) for f, v in zip(t.children, value, strict=True)]
    if token == "a":
        (child,) = t.children
        if child.token == "{":
            key_t, val_t = child.children
            return {_key_text(key_t, k): _to(val_t, v) for k, v in value.items()}
        if child.token == "y":
            return list(bytes(value))
        return [_to(child, v) for v in value]
    if token == "h":
        return None
    return value


def _key_text(t: SignatureType, key: Any) -> str:
    if t.token == "b":
        return "true" if key else "false"
    return str(key)


def canonical(signature: str, value: Any) -> Any:
    """The canonical JSON form of a declared value (1 and 1.0 for a `d` are the same value)."""
    return to_json(signature, from_json(signature, value))


# -- introspection ---------------------------------------------------------------------------------------------


@dataclass
class PropertyInfo:
    name: str
    signature: str
    access: str  # "read", "write" or "readwrite"

    @property
    def writable(self) -> bool:
        return "write" in self.access

    @property
    def readable(self) -> bool:
        return "read" in self.access


@dataclass
class MethodInfo:
    name: str
    in_signature: str


@dataclass
class InterfaceInfo:
    name: str
    properties: dict[str, PropertyInfo] = field(default_factory=dict)
    methods: dict[str, MethodInfo] = field(default_factory=dict)


@dataclass
class ObjectInfo:
    """One object's introspection: its interfaces and the names of its child nodes."""

    interfaces: dict[str, InterfaceInfo] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


def parse_introspection(xml: str, what: str) -> ObjectInfo:
    """Read `Introspectable.Introspect`'s XML; a malformed document is the peer's error, translated here.

    A lean reader over the C XML parser: discovery reads thousands of these, and only names, signatures and
    access modes matter here (dbus-fast's validating parser costs several times more). Objects of one kind
    (systemd's units of one type, say) send the same document, so each distinct document is parsed once;
    the result is shared and must not be modified."""
    try:
        return _parse_cached(xml)
    except ValueError as e:
        raise BackendError(f"{what}: {e}") from None


@lru_cache(maxsize=512)
def _parse_cached(xml: str) -> ObjectInfo:
    if "<!ENTITY" in xml:
        # entity definitions have no place in introspection data and are how XML bombs expand
        raise ValueError("refused introspection data that defines XML entities")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as e:
        raise ValueError(f"unreadable introspection data: {e}") from None
    if root.tag != "node":
        raise ValueError(f"unreadable introspection data: the root element is <{root.tag}>, not <node>")
    info = ObjectInfo(children=[n for c in root.iterfind("node") if (n := c.get("name"))])
    for iface in root.iterfind("interface"):
        name = iface.get("name")
        if not name:
            continue
        entry = InterfaceInfo(name)
        for p in iface.iterfind("property"):
            pname, sig = p.get("name"), p.get("type")
            if pname and sig:
                entry.properties[pname] = PropertyInfo(pname, sig, p.get("access", "read"))
        for m in iface.iterfind("method"):
            mname = m.get("name")
            if mname:
                sig = "".join(a.get("type", "") for a in m.iterfind("arg") if a.get("direction", "in") == "in")
                entry.methods[mname] = MethodInfo(mname, sig)
        info.interfaces[name] = entry
    return info


def child_path(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def argument_signatures(signature: str) -> list[str]:
    """The signature of each complete type in `signature` ("sb" -> ["s", "b"]), in order."""
    return [t.signature for t in SignatureTree(signature).types]


def variant(signature: str, value: Any) -> Any:
    """`value` (already in the library's form, see from_json) wrapped as a D-Bus variant of `signature`."""
    return Variant(signature, value)
