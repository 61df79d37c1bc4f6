"""`op-dbus check` and `op-dbus render`: offline validation of state files and fleet repositories, for CI and review.

No system access and no root: each file is parsed and validated against the installed plugins' models, and a
fleet repository (a directory with `hosts/`) is composed for every host it lists (with every group the
template's `{group}` can name). Problems come out as `path:line: message`, lines from the YAML/JSON source: a
problem in a composed document is placed in the last file that set the value.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from op_dbus.errors import InvalidInput, OpDbusError, Problem, StateFileError
from op_dbus.gitops.compose import Composed, Reader, compose, directory_reader, expand, parse_template
from op_dbus.gitops.rollout import ROLLOUT_FILES, parse_rollout
from op_dbus.state import MAX_DOCUMENT_BYTES, parse_text, validate_document

STATE_SUFFIXES = (".json", ".yaml", ".yml")
Lister = Callable[[str], list[str]]  # names directly inside a repository directory ("" for the root)


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    message: str
    host: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" + (f" (host {self.host})" if self.host else "")

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "message": self.message, "host": self.host}


# -- where a JSON path is in the source text -----------------------------------------------------------

_TOKEN = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def split_path(text: str) -> tuple[Any, ...] | None:
    """The inverse of `state.format_path`: `plugins.systemd.units["a.service"]` -> ("plugins", ..., "a.service")."""
    out: list[Any] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        out.append(m.group(1) if m.group(1) is not None else int(m.group(2)) if m.group(2) is not None
                   else json.loads(m.group(3)))
        pos = m.end()
    return tuple(out)


_WS = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def _json_offsets(text: str) -> dict[tuple[Any, ...], int]:
    """Offset of every value (for a key: of the key) in a JSON text already known to parse."""
    out: dict[tuple[Any, ...], int] = {}

    def value(i: int, path: tuple[Any, ...]) -> int:
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        out.setdefault(path, i)
        c = text[i]
        if c in "{[":
            close, index = ("}" if c == "{" else "]"), 0
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            while text[i] != close:
                if c == "{":
                    key, j = scanstring(text, i + 1)
                    out.setdefault((*path, key), i)
                    j = _WS.match(text, j).end()  # type: ignore[union-attr]
                    i = value(j + 1, (*path, key))
                else:
                    i = value(i, (*path, index))
                    index += 1
                i = _WS.match(text, i).end()  # type: ignore[union-attr]
                if text[i] == ",":
                    i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            return i + 1
        if c == '"':
            return int(scanstring(text, i + 1)[1])
        m = _SCALAR.match(text, i)
        return m.end() if m else i + 1

    value(0, ())
    return out


def _yaml_lines(text: str) -> dict[tuple[Any, ...], int]:
    import yaml

    out: dict[tuple[Any, ...], int] = {}
    todo: list[tuple[Any, tuple[Any, ...]]] = [(yaml.compose(text, Loader=yaml.SafeLoader), ())]
    while todo:
        node, path = todo.pop()
        if node is None:
            continue
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out.setdefault((*path, k.value), k.start_mark.line + 1)
                todo.append((v, (*path, k.value)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, (*path, i)) for i, v in enumerate(node.value))
    return out


def line_index(data: bytes, name: str) -> dict[tuple[Any, ...], int]:
    """JSON path -> line number in `data` (1 for anything not found)."""
    try:
        text = data.decode("utf-8")
        if name.endswith((".yaml", ".yml")) or not text.lstrip().startswith(("{", "[")):
            return _yaml_lines(text)
        offsets = _json_offsets(text)
    except Exception:  # the parser already reported why the text is unreadable
        return {}
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    return {p: bisect.bisect_right(starts, o) for p, o in offsets.items()}


def _line_of(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...] | None) -> int | None:
    if path is None:
        return None
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _contains(value: Any, path: tuple[Any, ...]) -> bool:
    for part in path:
        if (isinstance(value, dict) and part in value) or (
                isinstance(value, list) and isinstance(part, int) and part < len(value)):
            value = value[part]
        else:
            return False
    return True


_PARSE_LINE = re.compile(r"at line (\d+)")


def _findings(error: StateFileError, place: Callable[[Problem], tuple[str, int]], host: str | None) -> list[Finding]:
    out = []
    for p in error.problems:
        file, line = place(p)
        m = _PARSE_LINE.search(p.message)
        out.append(Finding(file, int(m.group(1)) if m and not p.path else line, str(p), host))
    return out


# -- checking ----------------------------------------------------------------------------------------------

def check_file(path: Path, name: str | None = None, load: Any = None) -> list[Finding]:
    name = name or str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        validate_document(parse_text(data, name), name, load)
    except StateFileError as e:
        lines = line_index(data, name)
        return _findings(e, lambda p: (name, _line_of(lines, split_path(p.path)) or 1), None)
    except OSError as e:
        return [Finding(name, 1, f"cannot read: {e.strerror}")]
    return []


def host_variants(layers: list[str], lister: Lister) -> list[tuple[str, str | None]]:
    """Every (host, group) a fleet repository's template covers: hosts from the `{hostname}` layer's directory,
    groups from the `{group}` layer's (each host with each group, so any assignment is known to be valid)."""
    def names(var: str) -> list[str] | None:
        layer = next((x for x in layers if "{" + var + "}" in x), None)
        if layer is None:
            return None
        directory, _, pattern = layer.rpartition("/")
        if "{" in directory:
            raise InvalidInput(f"--git-path {layer!r}: {{{var}}} may only appear in the file name")
        head, _, tail = pattern.partition("{" + var + "}")
        rx = re.compile(re.escape(head) + r"([A-Za-z0-9_][A-Za-z0-9._-]*)" + re.escape(tail) + "$")
        return sorted(m.group(1) for n in lister(directory) if (m := rx.match(n)))

    hosts = names("hostname") or []
    groups = names("group")
    return [(h, g) for h in hosts for g in (groups if groups else [None])]


def check_composed(reader: Reader, layers: list[str], host: str, group: str | None, load: Any = None,
                   parsed: dict[str, tuple[bytes, Any]] | None = None) -> tuple[list[Finding], Composed | None]:
    label = host if group is None else f"{host}, group {group}"
    try:
        paths = expand(layers, {"hostname": host, "group": group})
        composed = compose(reader, paths, parsed)
    except StateFileError as e:
        try:
            data = reader(e.source) or b""
        except InvalidInput:
            data = b""
        lines = line_index(data, e.source)
        source = e.source
        return _findings(e, lambda p: (source, _line_of(lines, split_path(p.path)) or 1), label), None
    except InvalidInput as e:
        return [Finding(layers[0], 1, e.message, label)], None
    try:
        validate_document(composed.value, ",".join(paths), load)
    except StateFileError as e:
        indexes: dict[int, dict[tuple[Any, ...], int]] = {}

        def place(p: Problem) -> tuple[str, int]:
            path = split_path(p.path) or ()
            for i in range(len(paths) - 1, -1, -1):  # the last file that set it
                if _contains(composed.layers[i], path):
                    break
            else:
                i = len(paths) - 1
            if i not in indexes:
                indexes[i] = line_index(composed.texts[i], paths[i])
            return paths[i], _line_of(indexes[i], path) or 1

        return _findings(e, place, label), composed
    return [], composed


def check_repo(root: Path, template: str, load: Any = None) -> tuple[list[Finding], int]:
    """A fleet repository checked out in `root`: (problems, hosts composed)."""
    layers = parse_template(template)
    reader = directory_reader(root)

    def lister(directory: str) -> list[str]:
        d = root / directory
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []

    findings: list[Finding] = []
    for name in ROLLOUT_FILES:
        if (root / name).is_file():
            data = (root / name).read_bytes()
            try:
                parse_rollout(data, name)
            except StateFileError as e:
                lines = line_index(data, name)

                def place(p: Problem, n: str = name, ls: dict[tuple[Any, ...], int] = lines) -> tuple[str, int]:
                    return n, _line_of(ls, split_path(p.path)) or 1

                findings += _findings(e, place, None)
    variants = host_variants(layers, lister)
    if not variants:
        findings.append(Finding(template, 1, "no host file matches the --git-path template in this repository"))
    parsed: dict[str, tuple[bytes, Any]] = {}
    for host, group in variants:
        try:
            found, _ = check_composed(reader, layers, host, group, load, parsed)
        except InvalidInput as e:
            found = [Finding(host, 1, e.message)]
        findings += found
    return findings, len({h for h, _ in variants})


def check_paths(paths: list[Path], template: str, load: Any = None) -> tuple[list[Finding], dict[str, int]]:
    """Check files and fleet repositories; duplicates (a base file's problem seen from every host) shown once."""
    findings: list[Finding] = []
    counts = {"files": 0, "hosts": 0}
    for path in paths:
        if path.is_dir() and (path / template.split(",")[-1].split("/")[0]).is_dir():
            found, hosts = check_repo(path, template, load)
            findings += [Finding(str(path / f.file), f.line, f.message, f.host) for f in found]
            counts["hosts"] += hosts
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.suffix in STATE_SUFFIXES and p.is_file() and ".git" not in p.parts:
                    findings += check_file(p, load=load)
                    counts["files"] += 1
        elif path.exists():
            findings += check_file(path, load=load)
            counts["files"] += 1
        else:
            findings.append(Finding(str(path), 1, "no such file or directory"))
    unique: dict[tuple[str, int, str], Finding] = {}
    for f in findings:
        unique.setdefault((f.file, f.line, f.message), f)
    return list(unique.values()), counts


# -- what a change of the repository changes per host --------------------------------------------------

def flatten(value: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(value, dict) and value:
        out: dict[tuple[Any, ...], Any] = {}
        for k, v in value.items():
            out.update(flatten(v, (*prefix, k)))
        return out
    return {prefix: value}


def diff_values(old: Any, new: Any) -> list[dict[str, Any]]:
    from op_dbus.state import format_path

    a, b = flatten(old), flatten(new)
    out = []
    for path in sorted(set(a) | set(b), key=lambda p: json.dumps(p, default=str)):
        if a.get(path, _MISSING) != b.get(path, _MISSING):
            out.append({"path": format_path(path), "old": a.get(path, _MISSING), "new": b.get(path, _MISSING)})
    for d in out:
        for k in ("old", "new"):
            if d[k] is _MISSING:
                del d[k]
    return out


_MISSING: Any = object()


def composed_or_error(reader: Reader, layers: list[str], host: str, group: str | None) -> Any:
    try:
        return compose(reader, expand(layers, {"hostname": host, "group": group})).value
    except OpDbusError as e:
        return {"error": e.message}
