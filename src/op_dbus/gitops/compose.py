"""Composition of a host's state from layered files: templates, readers (a directory or a commit), and the merge.

Later files override earlier ones key by key: objects are merged, lists and scalars replaced, and a `null`
deletes the key. Every file a host reads must exist; the merged document is validated as one state file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from op_dbus.errors import InvalidInput, Problem, StateFileError
from op_dbus.state import MAX_DOCUMENT_BYTES, StateDocument, parse_text, validate_document

DEFAULT_TEMPLATE = "hosts/{hostname}.json"
VARIABLES = ("hostname", "group")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
_FIELD = re.compile(r"\{([^{}]*)\}")

# A reader answers a repository-relative path with its bytes, None if there is no such file, or raises
# InvalidInput (a symlink, a file too large, a directory) with a message naming the path.
Reader = Callable[[str], bytes | None]


def parse_template(template: str) -> list[str]:
    """`'base.json,hosts/{hostname}.json'` -> its layers; refuse absolute paths, `..`, unknown variables."""
    layers = [p.strip() for p in template.split(",") if p.strip()]
    if not layers:
        raise InvalidInput("--git-path: no file named", hint="e.g. --git-path 'hosts/{hostname}.json'")
    for layer in layers:
        for name in _FIELD.findall(layer):
            if name not in VARIABLES:
                raise InvalidInput(f"--git-path {layer!r}: unknown variable {{{name}}} (known: "
                                   + ", ".join("{" + v + "}" for v in VARIABLES) + ")")
        parts = layer.split("/")
        if layer.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"--git-path {layer!r}: expected a path inside the repository (no leading /, "
                               "no . or .. parts)")
    return layers


def check_name(what: str, value: str) -> str:
    """A host or group name placed in a path: one plain path component."""
    if not _NAME.match(value):
        raise InvalidInput(f"{what} {value!r}: expected letters, digits, '.', '_' or '-' (not starting with '.')")
    return value


def expand(layers: list[str], variables: dict[str, str | None]) -> list[str]:
    out = []
    for layer in layers:
        def fill(m: re.Match[str], layer: str = layer) -> str:
            value = variables.get(m.group(1))
            if value is None:
                raise InvalidInput(f"--git-path {layer!r} names {{{m.group(1)}}}, but this host has no "
                                   f"{m.group(1)}", hint="set it with --git-group, /etc/op-dbus/agent.json "
                                   '({"group": "web"}) or /etc/op-dbus/group')
            return check_name(m.group(1), value)
        out.append(_FIELD.sub(fill, layer))
    return out


def merge(base: Any, top: Any) -> Any:
    """`top` laid over `base`: objects merged key by key, a null in `top` deletes, anything else replaces.

    Neither input is modified; the result shares the parts it does not change with them (a fleet check merges
    the same base into a thousand hosts), so treat it as read-only or copy it.
    """
    if not (isinstance(base, dict) and isinstance(top, dict)):
        return top
    out = dict(base)
    for key, value in top.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = merge({}, value) if isinstance(value, dict) else value
    return out


@dataclass
class Composed:
    """A host's merged document, the files it came from (in order) and their parsed values (for line lookup)."""

    value: Any
    paths: list[str]
    layers: list[Any] = field(default_factory=list)
    texts: list[bytes] = field(default_factory=list)


def compose(reader: Reader, paths: list[str], parsed: dict[str, tuple[bytes, Any]] | None = None) -> Composed:
    """Read and merge `paths`; a missing or unparsable file raises with its path (nothing is half-read).
    `parsed` keeps files already read (a check of many hosts reads the shared layers once)."""
    merged: Any = {}
    layers, texts = [], []
    for path in paths:
        if parsed is not None and path in parsed:
            data, value = parsed[path]
        else:
            got = reader(path)
            if got is None:
                raise StateFileError(path, [Problem("", "no such file in the repository (named by --git-path)")])
            data, value = got, parse_text(got, path)
            if parsed is not None:
                parsed[path] = (data, value)
        if not isinstance(value, dict):
            raise StateFileError(path, [Problem("", "expected an object at the top level")])
        merged = merge(merged, value)
        layers.append(value)
        texts.append(data)
    return Composed(merged, paths, layers, texts)


def load_composed(reader: Reader, paths: list[str], load: Any = None) -> tuple[StateDocument, Composed]:
    composed = compose(reader, paths)
    source = ",".join(paths) if len(paths) > 1 else paths[0]
    return validate_document(composed.value, source, load), composed


def directory_reader(root: Path) -> Reader:
    """Files of a working tree: regular files inside `root` only (a symlink leaving it is refused)."""
    base = os.path.realpath(root)

    def read(path: str) -> bytes | None:
        real = os.path.realpath(os.path.join(base, path))
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return None
        if not real.startswith(base + os.sep):
            raise InvalidInput(f"{path}: a symlink pointing outside the repository ({real}); refused")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{path}: not a regular file")
        if st.st_size > MAX_DOCUMENT_BYTES:
            raise InvalidInput(f"{path}: {st.st_size} bytes; the limit for a state file is {MAX_DOCUMENT_BYTES}")
        with open(real, "rb") as f:
            return f.read(MAX_DOCUMENT_BYTES + 1)

    return read
