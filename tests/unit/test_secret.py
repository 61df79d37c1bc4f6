"""Secret values: the keyed hash and its key file, rendering, parsing, secret files and redaction (pure logic and
real files; the end-to-end leak paths are in tests/containers/test_secrets.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from op_dbus import files, secret
from op_dbus.errors import StateFileError
from op_dbus.plugins.containers import ContainersState
from op_dbus.state import validate_document

PASSWORD = "letmein"  # the kind of value a guess list holds


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    secret.use_key_dir(d)
    return d


def env_of(env: dict[str, Any]) -> dict[str, Any]:
    state = ContainersState.model_validate({"containers": {"c": {"backend": "podman", "image": "i", "env": env}}})
    value = state.containers["c"].env
    assert value is not None
    return value


# -- the key and the hash ---------------------------------------------------------------------------------------------

def test_the_hmac_is_keyed_not_a_plain_sha256_of_the_value(key_dir: Path) -> None:
    digest = secret.digest_of(PASSWORD)
    assert digest != hashlib.sha256(PASSWORD.encode()).hexdigest()
    key = (key_dir / secret.KEY_NAME).read_bytes()
    assert digest == hmac.new(key, b"op-dbus secret value v1\x00" + PASSWORD.encode(), hashlib.sha256).hexdigest()
    other = key_dir.parent / "other-host"
    secret.use_key_dir(other)
    assert secret.digest_of(PASSWORD) != digest  # another host's key: the same password gives another hash


def test_the_key_is_created_0600_once_and_reused(key_dir: Path) -> None:
    first = secret.digest_of(PASSWORD)
    path = key_dir / secret.KEY_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_dir.stat().st_mode & 0o777 == 0o700
    secret._keys.clear()  # a new process
    assert secret.digest_of(PASSWORD) == first
    assert list(key_dir.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["readable", "symlink", "short", "other-owner"])
def test_an_unsafe_key_file_is_refused(key_dir: Path, damage: str) -> None:
    key_dir.mkdir(mode=0o700)
    path = key_dir / secret.KEY_NAME
    if damage == "symlink":
        target = key_dir / "elsewhere"
        target.write_bytes(os.urandom(32))
        target.chmod(0o600)
        path.symlink_to(target)
    else:
        path.write_bytes(os.urandom(16 if damage == "short" else 32))
        path.chmod(0o644 if damage == "readable" else 0o600)
        if damage == "other-owner":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(path, 65534, 65534)
    secret._keys.clear()
    with pytest.raises(files.UnsafeFile):
        secret.digest_of(PASSWORD)


# -- a Secret never shows its value -----------------------------------------------------------------------------------

def test_a_secret_renders_as_a_marker_everywhere(key_dir: Path) -> None:
    s = secret.Secret(PASSWORD)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", json.dumps({"v": s}, default=str), repr([s]), repr({"k": s})]
    assert all(PASSWORD not in text for text in shown)
    state = ContainersState.model_validate({"containers": {"c": {"backend": "podman", "image": "i",
                                                                 "env": {"DB_PASSWORD": PASSWORD}}}})
    assert PASSWORD not in repr(state) and PASSWORD not in str(state.model_dump())
    dumped = state.model_dump(mode="json")
    assert dumped["containers"]["c"]["env"] == {"DB_PASSWORD": {"secret_hmac": secret.digest_of(PASSWORD)}}
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert s.reveal() == PASSWORD


def test_secrets_compare_by_value_in_memory_and_by_digest_when_recorded(key_dir: Path) -> None:
    assert secret.Secret(PASSWORD) == secret.Secret(PASSWORD)
    assert secret.Secret(PASSWORD) != secret.Secret("other")
    recorded = secret.Secret.recorded(secret.digest_of(PASSWORD), "DB_PASSWORD")
    assert recorded == secret.Secret(PASSWORD) and secret.Secret(PASSWORD) == recorded
    assert recorded != secret.Secret("other")
    assert secret.Secret(PASSWORD) != PASSWORD  # a secret never equals a plain string
    with pytest.raises(secret.SecretNeeded, match="DB_PASSWORD"):
        recorded.reveal()
    assert not recorded.supply("other")
    assert recorded.supply(PASSWORD) and recorded.reveal() == PASSWORD


# -- the state file's forms -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DB_PASSWORD", "pgpassword", "API_KEY", "GITHUB_TOKEN", "Client_Secret"])
def test_names_that_look_secret_are_secret(name: str) -> None:
    assert isinstance(env_of({name: "v"})[name], secret.Secret)


def test_other_names_are_plain_and_a_secret_name_can_be_marked_not_secret() -> None:
    env = env_of({"TZ": "UTC", "KEYMAP": {"value": "de", "secret": False}, "MODE": {"secret": "x"},
                  "LEVEL": {"value": "y", "secret": True}})
    assert env["TZ"] == "UTC" and type(env["KEYMAP"]) is str and env["KEYMAP"] == "de"
    assert isinstance(env["MODE"], secret.Secret) and isinstance(env["LEVEL"], secret.Secret)


def test_a_control_character_in_a_secret_is_refused_without_showing_it() -> None:
    with pytest.raises(StateFileError) as caught:
        validate_document({"version": 1, "plugins": {"containers": {"containers": {"c": {
            "backend": "podman", "image": "i", "env": {"DB_PASSWORD": "pw\nlxc.hook.pre-start = /x",
                                                        "OTHER": {"secret": "a\x00b"}}}}}}}, "t")
    text = str(caught.value)
    assert "control character" in text and "lxc.hook" not in text and "a\x00b" not in text


def test_a_malformed_secret_form_names_the_forms() -> None:
    with pytest.raises(ValidationError, match="secret_file"):
        env_of({"A": {"secret": "x", "extra": 1}})
    with pytest.raises(ValidationError, match="64 lower-case hex"):
        env_of({"A": {"secret_hmac": "abc"}})


def test_a_secret_file_is_read_once_with_one_newline_dropped(tmp_path: Path) -> None:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    f = d / "db"
    f.write_text("from-file\n")
    f.chmod(0o400)
    value = env_of({"X": {"secret_file": str(f)}})["X"]
    assert isinstance(value, secret.Secret) and value.reveal() == "from-file"


@pytest.mark.parametrize("damage", ["mode-0640", "symlink", "other-owner", "open-directory", "relative", "fifo"])
def test_an_unsafe_secret_file_is_refused(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "secrets"
    d.mkdir(mode=0o700)
    f = d / "db"
    f.write_text("never-shown\n")
    f.chmod(0o600)
    path = str(f)
    if damage == "mode-0640":
        f.chmod(0o640)
    elif damage == "symlink":
        (d / "link").symlink_to(f)
        path = str(d / "link")
    elif damage == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root")
        os.chown(f, 65534, 65534)
    elif damage == "open-directory":
        d.chmod(0o777)
    elif damage == "relative":
        path = "secrets/db"
    else:
        os.mkfifo(d / "fifo", 0o600)
        path = str(d / "fifo")
    with pytest.raises(StateFileError) as caught:
        validate_document({"version": 1, "plugins": {"containers": {"containers": {"c": {
            "backend": "podman", "image": "i", "env": {"DB": {"secret_file": path}}}}}}}, "t")
    text = str(caught.value)
    assert 'containers.c.env.DB' in text and "never-shown" not in text


def test_the_schema_documents_the_secret_forms() -> None:
    from op_dbus.schema import document_schema

    text = json.dumps(document_schema(["containers"]))
    for form in ("secret_file", "secret_hmac", '"secret"', "PASSWORD, SECRET, TOKEN or KEY"):
        assert form in text


# -- showing changes --------------------------------------------------------------------------------------------------

def test_a_change_record_shows_which_secrets_change_and_no_digest() -> None:
    a, b = {"secret_hmac": "a" * 64}, {"secret_hmac": "b" * 64}
    record = {"plugin": "containers", "object": "db", "action": "recreate",
              "before": {"env": {"P1": a, "P2": a, "P3": a, "P5": "plain", "TZ": "UTC"}},
              "after": {"env": {"P1": b, "P2": a, "P4": b, "P5": b, "TZ": "CET"}}}
    shown = secret.redact_record(record)
    assert shown["secrets"] == {"P1": "changed", "P3": "removed", "P4": "set", "P5": "changed"}
    assert shown["before"]["env"]["P1"] == shown["after"]["env"]["P2"] == secret.MARK
    assert "a" * 64 not in json.dumps(shown) and "b" * 64 not in json.dumps(shown)
    assert "secrets" not in secret.redact_record({**record, "after": record["before"]})


def test_a_plan_that_needs_an_unknown_secret_is_refused_naming_it(key_dir: Path) -> None:
    from op_dbus.plugin import Change

    known = Change("containers", "a", "create", payload={"secrets": {"K": secret.Secret("v", name="K")}})
    assert secret.require_known([known]) is None
    unknown = Change("containers", "db", "recreate",
                     payload={"secrets": {"DB_PASSWORD": secret.Secret.recorded("0" * 64, "DB_PASSWORD")}})
    with pytest.raises(secret.SecretNeeded, match=r"containers db: DB_PASSWORD") as caught:
        secret.require_known([known, unknown])
    assert caught.value.exit_code == 2


def test_a_backend_check_sees_every_env_name_but_no_secret_value() -> None:
    from op_dbus.backends.containers.proxmox import ProxmoxBackend
    from op_dbus.plugins.containers import spec_of, spec_to_check

    state = ContainersState.model_validate({"containers": {"c": {"backend": "proxmox", "image": "i",
                                                                 "env": {"DB_PASSWORD": PASSWORD}}}})
    want = state.containers["c"]
    assert spec_of("c", want).env == {}  # the apply step adds the value, nothing before it
    checked = spec_to_check("c", want)
    assert checked.env == {"DB_PASSWORD": ""}
    assert any("env" in p for p in ProxmoxBackend(pct="/nonexistent/pct").check_spec(checked))
