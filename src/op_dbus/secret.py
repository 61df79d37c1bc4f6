"""Secret values in state files: read once, compared in memory, recorded only as a keyed hash, never shown.

A state file marks a value secret in place of the value:

    {"secret": "hunter2"}                                  the value itself
    {"secret_file": "/etc/op-dbus/secrets/db"}             a root-only file holding it (one trailing newline dropped)
    {"secret_hmac": "<64 hex>"}                            the recorded form: only its HMAC is known
    {"value": "UTC", "secret": false}                      explicitly not secret (a name that looks secret)

Container `env` names containing PASSWORD, SECRET, TOKEN or KEY (any case) are secret unless marked otherwise.

A `Secret` holds its clear value privately. Its only JSON form (what `query`, the audit log, exports and the
intent record hold) is `{"secret_hmac": HMAC-SHA256(host secret key, value)}`; its text form is `<secret>`.
The host secret key is 32 random bytes in `<state dir>/secret-hmac.key` (0600, created on first use), so a
guessable password cannot be found by hashing guesses, while a changed value still shows as a different
digest. Comparisons happen on clear values in memory (or on digests, when one side is recorded); a plugin
asks for the clear value (`reveal()`) only to hand it to the backend while applying. A recorded secret
(`secret_hmac`) cannot be revealed: applying it needs the value supplied again (`supply`), and a change that
needs one is refused before anything happens (`require_known`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from op_dbus import files
from op_dbus.errors import InvalidInput
from op_dbus.statedir import SECRET_KEY, StateDir

KEY_NAME = SECRET_KEY
KEY_BYTES = 32
MAX_SECRET_FILE = 64 * 1024
SEALED = "secret_hmac"  # the JSON key of a recorded secret
MARK = "<secret>"  # how a secret is shown to people
# Environment names that hold secrets unless marked otherwise: a substring match, so PGPASSWORD and APIKEY count.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Domain separation: this key hashes nothing but secret values.
_CONTEXT = b"op-dbus secret value v1\x00"


class SecretNeeded(InvalidInput):
    """A change would set a secret whose value is not known here (only its HMAC was recorded)."""


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


# -- the host secret key --------------------------------------------------------------------------------------------

_key_dir: Path | None = None
_keys: dict[Path, bytes] = {}


def use_key_dir(directory: Path) -> None:
    """Hash secrets with the key in `directory` (the state dir, beside host.key) from now on in this process."""
    global _key_dir
    _key_dir = Path(directory).absolute()


def key_path() -> Path:
    if _key_dir is None:
        raise InvalidInput("a secret must be hashed but no state directory is set for its key")
    return _key_dir / KEY_NAME


def hmac_key() -> bytes:
    """The host secret key: read (or created, 0600) once per process, with the same trust checks as host.key."""
    path = key_path()
    key = _keys.get(path)
    if key is None:
        key = _keys[path] = _load_or_create_key(path)
    return key


def _load_or_create_key(path: Path) -> bytes:
    StateDir(path.parent).trusted()
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except PermissionError:
        raise InvalidInput(f"cannot create the secret key {path}: permission denied",
                           hint="run op-dbus as root, or give a --state-dir you own") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # another op-dbus that created it first wins; both then read the same key
    except FileExistsError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    files.fsync_dir(path.parent)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    data = files.read_checked(path, "secret key", limit=KEY_BYTES, secret=True)
    if len(data) != KEY_BYTES:
        raise files.UnsafeFile(f"secret key {path} is not {KEY_BYTES} bytes long",
                               hint="restore it from a backup; without it recorded secrets cannot be compared")
    return data


def digest_of(value: str) -> str:
    """HMAC-SHA256 of a clear value under the host secret key, as lower-case hex."""
    return hmac.new(hmac_key(), _CONTEXT + value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


# -- the value type -------------------------------------------------------------------------------------------------

class Secret:
    """A secret value: shown as `<secret>`, serialised as its HMAC, compared in memory, revealed only to apply.

    Either the clear value is known (from a state file), or only its digest (a recorded `secret_hmac`).
    `name` (e.g. the environment key) and `origin` (inline, a file, a name match, a record) are for messages.
    """

    __slots__ = ("_clear", "_digest", "name", "origin")

    def __init__(self, clear: str | None = None, *, digest: str | None = None, name: str = "",
                 origin: str = "inline") -> None:
        if (clear is None) == (digest is None):
            raise TypeError("a Secret has a clear value or a recorded digest, not both")
        self._clear = clear
        self._digest = digest
        self.name = name
        self.origin = origin

    @classmethod
    def recorded(cls, digest: str, name: str = "") -> Secret:
        return cls(digest=digest, name=name, origin="record")

    @property
    def known(self) -> bool:
        """Whether the clear value is here (a recorded secret has only its digest until one is supplied)."""
        return self._clear is not None

    @property
    def digest(self) -> str:
        return digest_of(self._clear) if self._clear is not None else self._digest or ""

    def reveal(self) -> str:
        """The clear value, for a backend that must set it. Raises SecretNeeded for a recorded secret."""
        if self._clear is None:
            raise SecretNeeded(f"the value of secret {self.name or '?'} is not known: the audit log keeps only its HMAC",
                               hint=SUPPLY_HINT)
        return self._clear

    def supply(self, clear: str) -> bool:
        """Give a recorded secret its value back, if `clear` is that value (its HMAC matches); True if it did."""
        if self._clear is None and hmac.compare_digest(digest_of(clear), self._digest or ""):
            self._clear, self._digest = clear, None
            return True
        return False

    def named(self, name: str) -> Secret:
        self.name = self.name or name
        return self

    def to_json(self) -> dict[str, str]:
        return {SEALED: self.digest}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        if self._clear is not None and other._clear is not None:
            return hmac.compare_digest(self._clear.encode("utf-8", "surrogatepass"),
                                       other._clear.encode("utf-8", "surrogatepass"))
        return hmac.compare_digest(self.digest, other.digest)

    __hash__ = None  # type: ignore[assignment]  # equal secrets may hold a value or a digest: no common hash

    def __repr__(self) -> str:
        return MARK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return MARK

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a secret is not pickled")


SUPPLY_HINT = ("give the value in the state file ({\"secret\": ...} or {\"secret_file\": PATH}); to roll back to a "
               "recorded state, pass it with `op-dbus rollback --to-block N --secrets FILE`")


class _Plain(str):
    """A value the state file explicitly marked as not secret (`{"value": ..., "secret": false}`)."""

    __slots__ = ()


def _clean(value: str, what: str) -> str:
    if _CONTROL.search(value):
        # never quoted: the value is a secret
        raise ValueError(f"{what} contains a control character (newline, NUL, ...); it cannot be passed on")
    return value


def read_secret_file(path_text: str) -> str:
    """The value in a root-only secret file: a regular file, not a link, owned by root (or us), mode 0600/0400."""
    path = Path(path_text)
    if not path.is_absolute():
        raise ValueError(f"secret_file must be an absolute path, got {path_text!r}")
    try:
        data = files.read_checked(path, "secret file", limit=MAX_SECRET_FILE, secret=True)
    except FileNotFoundError:
        raise ValueError(f"secret file {path}: no such file") from None
    except files.UnsafeFile as exc:
        raise ValueError(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
    if len(data) > MAX_SECRET_FILE:
        raise ValueError(f"secret file {path} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    return _clean(text, f"secret file {path}")


_FORMS = ('a string, {"secret": "..."}, {"secret_file": "/abs/path"}, {"secret_hmac": "<64 hex>"} '
          'or {"value": "...", "secret": false}')


def _parse_value(value: Any) -> Any:
    """One environment value as written: a string, or one of the secret forms (see the module docstring)."""
    if isinstance(value, str | Secret):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {_FORMS}")
    keys = set(value)
    if keys == {"secret"} and isinstance(value["secret"], str):
        return Secret(_clean(value["secret"], "the secret"))
    if keys == {"secret_file"} and isinstance(value["secret_file"], str):
        return Secret(read_secret_file(value["secret_file"]), origin=f"file {value['secret_file']}")
    if keys == {SEALED} and isinstance(value[SEALED], str):
        if not _HEX64.fullmatch(value[SEALED]):
            raise ValueError("secret_hmac: expected 64 lower-case hex digits (an HMAC-SHA256 that op-dbus recorded)")
        return Secret.recorded(value[SEALED])
    if keys == {"value", "secret"} and isinstance(value["value"], str) and isinstance(value["secret"], bool):
        return Secret(_clean(value["value"], "the secret")) if value["secret"] else _Plain(value["value"])
    raise ValueError(f"expected {_FORMS}")


def _serialize_value(value: Any, info: core_schema.SerializationInfo) -> Any:
    if isinstance(value, Secret):
        return value.to_json() if info.mode == "json" else value
    return str(value) if isinstance(value, _Plain) else value


class _EnvValueSchema:
    """Pydantic glue: validation, serialisation and JSON Schema of one (possibly secret) environment value."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _parse_value, serialization=core_schema.plain_serializer_function_ser_schema(_serialize_value, info_arg=True))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        def obj(properties: dict[str, Any], required: list[str], description: str) -> dict[str, Any]:
            return {"type": "object", "properties": properties, "required": required, "additionalProperties": False,
                    "description": description}

        return {"anyOf": [
            {"type": "string", "description": "a value; secret when its name contains PASSWORD, SECRET, TOKEN or KEY"},
            obj({"secret": {"type": "string"}}, ["secret"], "a secret value: never shown, recorded as its HMAC"),
            obj({"secret_file": {"type": "string", "pattern": "^/"}}, ["secret_file"],
                "a secret read from a root-only file (regular, not a link, mode 0600 or 0400)"),
            obj({SEALED: {"type": "string", "pattern": "^[0-9a-f]{64}$"}}, [SEALED],
                "a recorded secret (query output, the audit log): matches a live value with the same HMAC"),
            obj({"value": {"type": "string"}, "secret": {"type": "boolean"}}, ["value", "secret"],
                "a value marked secret or not explicitly"),
        ]}


def _mark_by_name(env: dict[str, Any]) -> dict[str, str | Secret]:
    out: dict[str, str | Secret] = {}
    for name, value in env.items():
        if isinstance(value, Secret):
            out[name] = value.named(name)
        elif isinstance(value, _Plain):
            out[name] = str(value)
        elif is_secret_name(name):
            out[name] = Secret(_clean(value, name), name=name, origin="name")
        else:
            out[name] = value
    return out


EnvValue = Annotated[str | Secret, _EnvValueSchema()]
# A container's environment: names to values, where a value may be secret (see the module docstring).
Env = Annotated[dict[str, EnvValue], AfterValidator(_mark_by_name)]


def live_env(values: Mapping[str, str], declared: Mapping[str, str | Secret] | None) -> dict[str, str | Secret]:
    """Environment values read back from a manager, wrapped as secrets where the declared state (or, with no
    declaration, the name) says so, so that they compare with the state file's and never show."""
    out: dict[str, str | Secret] = {}
    for name, value in values.items():
        want = (declared or {}).get(name)
        secret = isinstance(want, Secret) if declared is not None and name in declared else is_secret_name(name)
        out[name] = Secret(value, name=name, origin="live") if secret else value
    return out


def split_env(env: Mapping[str, str | Secret] | None) -> tuple[dict[str, str], dict[str, Secret]]:
    """(plain values, secrets) of an environment: a backend spec carries the first, the apply step adds the second."""
    plain = {k: v for k, v in (env or {}).items() if not isinstance(v, Secret)}
    hidden = {k: v for k, v in (env or {}).items() if isinstance(v, Secret)}
    return plain, hidden


# -- finding secrets in documents and plans -------------------------------------------------------------------------

def walk(value: Any) -> Iterator[Secret]:
    """Every Secret inside models, mappings and sequences."""
    todo = [value]
    while todo:
        node = todo.pop()
        if isinstance(node, Secret):
            yield node
        elif isinstance(node, BaseModel):
            todo.extend(getattr(node, f, None) for f in type(node).model_fields)
        elif isinstance(node, Mapping):
            todo.extend(node.values())
        elif isinstance(node, list | tuple):
            todo.extend(node)


def collect(*sources: Any) -> dict[str, str]:
    """Clear values of the known secrets in `sources`, by digest (what `supply` matches recorded secrets with)."""
    return {s.digest: s.reveal() for s in walk(list(sources)) if s.known}


def supply(target: Any, values: Mapping[str, str]) -> list[Secret]:
    """Give recorded secrets in `target` their values from `values` (by digest); return those still unknown."""
    missing = []
    for s in walk(target):
        if not s.known:
            clear = values.get(s.digest)
            if clear is None or not s.supply(clear):
                missing.append(s)
    return missing


def unknown_in(change: Any) -> list[str]:
    """The secrets a change would set whose value is not known here (`plugin object: NAME`)."""
    return [f"{change.plugin} {change.object}: {s.name or 'a secret'}" for s in walk(change.payload) if not s.known]


def needed_message(changes: Iterable[Any]) -> str:
    names = [name for c in changes for name in unknown_in(c)]
    return ("the change needs secret value(s) that are not known here (the audit log keeps only their HMAC): "
            + "; ".join(names))


def require_known(changes: Iterable[Any]) -> None:
    """Refuse (exit 2, before anything changes) a plan that would set a secret whose value is not known."""
    blocked = [c for c in changes if unknown_in(c)]
    if blocked:
        raise SecretNeeded(needed_message(blocked), hint=SUPPLY_HINT)


# -- showing changes to people ----------------------------------------------------------------------------------------

def _sealed(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and SEALED in value


def redact(value: Any) -> Any:
    """A JSON value with every recorded secret shown as `<secret>`."""
    if _sealed(value) or isinstance(value, Secret):
        return MARK
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _pair(before: Any, after: Any, name: str, notes: dict[str, str]) -> None:
    b_secret, a_secret = _sealed(before), _sealed(after)
    if b_secret or a_secret:
        if b_secret and a_secret:
            if before[SEALED] != after[SEALED]:
                notes[name] = "changed"
        elif a_secret:
            notes[name] = "set" if before is None else "changed"
        else:
            notes[name] = "removed" if after is None else "changed"
        return
    if isinstance(before, Mapping) or isinstance(after, Mapping):
        b = before if isinstance(before, Mapping) else {}
        a = after if isinstance(after, Mapping) else {}
        for key in [*b, *(k for k in a if k not in b)]:
            _pair(b.get(key), a.get(key), str(key), notes)


def redact_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A change record for people (output, logs): secrets shown as `<secret>`, and under `secrets` each secret
    that the change sets, changes or removes (`{"DB_PASSWORD": "changed"}`); an unchanged secret is not listed."""
    notes: dict[str, str] = {}
    _pair(record.get("before"), record.get("after"), "", notes)
    out = {k: redact(v) for k, v in record.items()}
    if notes:
        out["secrets"] = notes
    return out
