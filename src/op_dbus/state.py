"""The state document: parse JSON or YAML, validate strictly, and report every problem with its path."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from op_dbus import files
from op_dbus.errors import InvalidInput, OpDbusError, Problem, StateFileError
from op_dbus.plugin import Plugin, Section, plugin_specs

SUPPORTED_VERSIONS = (1,)
# A state file larger than this is refused before parsing: no real machine needs more, and a
# runaway document should not exhaust memory in a root process.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_NESTING = 64

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("plugins", "systemd", "units", "nginx.service", "enabled")` -> `plugins.systemd.units["nginx.service"].enabled`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str):  # YAML allows keys of any type: `? ` alone is a null key
            out += "[" + json.dumps(str(part)) + "]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += "[" + json.dumps(part) + "]"
    return out


_TYPE_WORDS = {
    "bool_type": "expected boolean",
    "bool_parsing": "expected boolean",
    "string_type": "expected string",
    "int_type": "expected integer",
    "int_parsing": "expected integer",
    "float_type": "expected number",
    "dict_type": "expected object",
    "model_type": "expected object",
    "model_attributes_type": "expected object",
    "list_type": "expected array",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


def problems_from_validation(error: ValidationError, prefix: tuple[str | int, ...]) -> list[Problem]:
    problems = []
    for err in error.errors(include_url=False):
        # pydantic adds "[key]" for a bad dict key and "function-..." for validator wrappers: not user paths
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
        kind = err["type"]
        message = _TYPE_WORDS.get(kind)
        if kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            message = f"expected one of {expected}, got {json.dumps(err.get('input'), default=str)}"
        elif message is not None and kind not in ("extra_forbidden", "missing"):
            message += f", got {json_type(err.get('input'))}"
        if message is None:
            message = err["msg"].removeprefix("Value error, ")
        problems.append(Problem(format_path(prefix + loc), message))
    return problems


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (`expected boolean, got string`)."""
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Probe(BaseModel):
    """A health check that decides whether to keep a change: exactly one of `tcp`, `dbus_name`, `unit_active`.

    Only probes that pass before the change are required to pass after it (within `timeout` seconds).
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    tcp: str | None = Field(default=None, description="HOST:PORT that must accept a TCP connection")
    dbus_name: str | None = Field(default=None, description="a name that must have an owner on the system bus")
    unit_active: str | None = Field(default=None, description="a systemd unit that must be active")
    timeout: float = Field(default=5.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_kind(self) -> Probe:
        kinds = [k for k in ("tcp", "dbus_name", "unit_active") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a probe names exactly one of tcp, dbus_name, unit_active")
        if self.tcp is not None:
            host, sep, port = self.tcp.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"tcp: expected HOST:PORT, got {self.tcp!r}")
        return self

    def describe(self) -> str:
        if self.tcp is not None:
            return f"tcp {self.tcp}"
        if self.dbus_name is not None:
            return f"dbus name {self.dbus_name}"
        return f"unit {self.unit_active} active"


@dataclass
class StateDocument:
    """A validated document: `sections` maps plugin name to that plugin's model instance."""

    version: int
    sections: dict[str, Section] = field(default_factory=dict)
    source: str = "<state>"
    probes: list[Probe] = field(default_factory=list)

    def to_json(self, plugins: dict[str, Plugin[Any]]) -> dict[str, Any]:
        return {
            "version": self.version,
            "plugins": {name: plugins[name].dump(sec) for name, sec in self.sections.items()},
        }


_PROBES = TypeAdapter(list[Probe])


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (a hostile document must not blow the Python stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, d = todo.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            todo.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, d + 1) for v in node)
    return deepest


def parse_text(data: bytes, source: str) -> Any:
    """Bytes -> JSON value. JSON unless the name ends in .yaml/.yml or the text is not JSON-shaped."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise StateFileError(source, [Problem("", f"document is {len(data)} bytes; the limit is {MAX_DOCUMENT_BYTES}")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StateFileError(source, [Problem("", f"not valid UTF-8 at byte {e.start}")]) from None
    is_yaml = source.endswith((".yaml", ".yml")) or not text.lstrip().startswith(("{", "["))
    if is_yaml:
        return _parse_yaml(text, source)
    # Deep nesting is checked on the raw text first: json's C parser recurses and a hostile
    # document could otherwise reach the interpreter's recursion limit.
    _check_bracket_depth(text, source)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        raise StateFileError(source, [Problem("", f"duplicate key {json.dumps(str(e))}")]) from None
    except json.JSONDecodeError as e:
        raise StateFileError(source, [Problem("", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")]) from None
    except (ValueError, RecursionError) as e:
        raise StateFileError(source, [Problem("", f"invalid JSON: {e}")]) from None


def _check_bracket_depth(text: str, source: str) -> None:
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise StateFileError(source, [Problem("", f"nesting deeper than {MAX_NESTING} levels")])
        elif ch in "]}":
            depth -= 1


def _parse_yaml(text: str, source: str) -> Any:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            # Anchors and aliases are refused outright: a few hundred bytes of nested aliases ("billion laughs")
            # expand to billions of nodes, and a state file has no need to share subtrees.
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = event.start_mark
                raise yaml.composer.ComposerError(
                    None, None, "anchors and aliases (&name, *name) are not allowed in a state file", mark)
            return super().compose_node(parent, index)

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in keys:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            keys.add(key)
        return loader.construct_mapping(node, deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise StateFileError(source, [Problem("", f"invalid YAML{where}: {what}")]) from None
    except RecursionError:
        raise StateFileError(source, [Problem("", f"nesting deeper than {MAX_NESTING} levels")]) from None
    if _depth(value, MAX_NESTING) > MAX_NESTING:
        raise StateFileError(source, [Problem("", f"nesting deeper than {MAX_NESTING} levels")])
    return value


def validate_document(value: Any, source: str, load: Any = None) -> StateDocument:
    """Check a parsed document against the top-level shape and every plugin's model; raise with all problems."""
    from op_dbus.plugin import load_plugins

    load = load or load_plugins
    problems: list[Problem] = []
    if not isinstance(value, dict):
        raise StateFileError(source, [Problem("", f"expected an object at the top level, got {json_type(value)}")])
    for key in value:
        if key not in ("version", "plugins", "probes"):
            problems.append(Problem(format_path((key,)), "unknown key (expected: version, plugins, probes)"))
    version = value.get("version")
    if "version" not in value:
        problems.append(Problem("version", "required key is missing"))
    elif isinstance(version, bool) or not isinstance(version, int):
        problems.append(Problem("version", f"expected integer, got {json_type(version)}"))
    elif version not in SUPPORTED_VERSIONS:
        problems.append(Problem("version", f"unsupported version {version}; this op-dbus reads version 1"))
    sections: dict[str, Section] = {}
    plugins_value = value.get("plugins", {})
    if not isinstance(plugins_value, dict):
        problems.append(Problem("plugins", f"expected object, got {json_type(plugins_value)}"))
        plugins_value = {}
    installed = plugin_specs() if load is load_plugins else None
    for name, section in plugins_value.items():
        try:
            if installed is not None and name not in installed:
                raise KeyError(name)
            model = load([name])[name].model
        except (KeyError, OpDbusError):
            known = ", ".join(sorted(installed)) if installed is not None else "see `op-dbus schema`"
            problems.append(Problem(format_path(("plugins", name)), f"unknown plugin (installed: {known})"))
            continue
        try:
            sections[name] = model.model_validate(section)
        except ValidationError as e:
            problems.extend(problems_from_validation(e, ("plugins", name)))
    probes: list[Probe] = []
    try:
        probes = _PROBES.validate_python(value.get("probes", []))
    except ValidationError as e:
        problems.extend(problems_from_validation(e, ("probes",)))
    if problems:
        raise StateFileError(source, problems)
    assert isinstance(version, int)  # checked above: one of SUPPORTED_VERSIONS
    return StateDocument(version=int(version), sections=sections, source=source, probes=probes)


def read_state_file(path: Path) -> bytes:
    """The bytes of a state file, read from the one descriptor whose owner, mode and directories were checked
    (sshd's StrictModes, done as OpenSSH's safe_path): what is parsed is exactly what was checked."""
    try:
        data = files.read_checked(path, "state file", limit=MAX_DOCUMENT_BYTES, follow=True)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    return data  # more than MAX_DOCUMENT_BYTES is refused by parse_text, with the size in its message


def load_document(path: str | Path, *, trust_check: bool = True) -> StateDocument:
    """Read, parse and validate a state file ("-" is standard input)."""
    if str(path) == "-":
        import sys

        return validate_document(parse_text(sys.stdin.buffer.read(), "<stdin>"), "<stdin>")
    p = Path(path)
    if trust_check:
        data = read_state_file(p)
    else:
        try:
            with p.open("rb") as f:
                data = f.read(MAX_DOCUMENT_BYTES + 1)
        except FileNotFoundError:
            raise InvalidInput(f"{p}: no such file") from None
        except IsADirectoryError:
            raise InvalidInput(f"{p}: is a directory, expected a state file") from None
        except PermissionError:
            raise InvalidInput(f"{p}: permission denied") from None
    return validate_document(parse_text(data, str(p)), str(p))
