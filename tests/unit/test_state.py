"""State documents: every problem is reported with its path, hostile input ends in a clean error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from op_dbus.errors import InvalidInput, StateFileError
from op_dbus.state import MAX_NESTING, format_path, load_document, parse_text, validate_document


def problems(doc: object) -> list[str]:
    with pytest.raises(StateFileError) as exc:
        validate_document(doc, "t.json")
    return [str(p) for p in exc.value.problems]


def test_format_path_quotes_keys_that_are_not_identifiers() -> None:
    assert format_path(("plugins", "systemd", "units", "nginx.service", "enabled")) == \
        'plugins.systemd.units["nginx.service"].enabled'
    assert format_path(("plugins", "net", "interfaces", 0, "name")) == "plugins.net.interfaces[0].name"


def test_every_problem_is_listed_with_its_path() -> None:
    found = problems({
        "version": 1, "bogus": True,
        "plugins": {"systemd": {"units": {
            "nginx.service": {"active_state": "running", "enabled": "yes", "colour": "red"},
            "not a unit": {}}}, "nosuch": {}},
    })
    assert "bogus: unknown key (expected: version, plugins, probes)" in found
    assert 'plugins.systemd.units["nginx.service"].enabled: expected boolean, got string' in found
    assert 'plugins.systemd.units["nginx.service"].colour: unknown key' in found
    assert any(p.startswith('plugins.systemd.units["nginx.service"].active_state: expected one of') for p in found)
    assert any(p.startswith('plugins.systemd.units["not a unit"]: not a unit name') for p in found)
    assert any(p.startswith("plugins.nosuch: unknown plugin") for p in found)
    assert len(found) == 6


@pytest.mark.parametrize(("doc", "expected"), [
    ({"plugins": {}}, "version: required key is missing"),
    ({"version": 2}, "version: unsupported version 2; this op-dbus reads version 1"),
    ({"version": True}, "version: expected integer, got boolean"),
    ({"version": 1, "plugins": []}, "plugins: expected object, got array"),
    ([], "expected an object at the top level, got array"),
])
def test_top_level_shape(doc: object, expected: str) -> None:
    assert expected in problems(doc)


def test_strict_types_refuse_coercion() -> None:
    found = problems({"version": 1, "plugins": {"systemd": {"units": {"a.service": {"enabled": 1}}}}})
    assert found == ['plugins.systemd.units["a.service"].enabled: expected boolean, got number']


def test_contradictions_are_problems() -> None:
    found = problems({"version": 1, "plugins": {"systemd": {"units": {"a.service": {"masked": True,
                                                                                     "active_state": "active"}}}}})
    assert found == ['plugins.systemd.units["a.service"]: a masked unit cannot be active']


def test_valid_document_round_trips() -> None:
    doc = validate_document({"version": 1, "plugins": {"systemd": {"units": {
        "nginx.service": {"active_state": "active", "enabled": True}}}}}, "t.json")
    assert doc.sections["systemd"].units["nginx.service"].enabled is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(("data", "needle"), [
    (b'{"version": 1, "version": 1}', "duplicate key"),
    (b'{"version": 1,', "invalid JSON at line 1"),
    (b'\xff\xfe{}', "not valid UTF-8"),
    (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), "nesting deeper"),
    (b"version: 1\nversion: 2\n", "duplicate key"),
    (b"version: [1\n", "invalid YAML"),
    (b"a: " + b"[" * 5000, "nesting deeper"),
])
def test_malformed_text_is_a_clean_error(data: bytes, needle: str) -> None:
    with pytest.raises(StateFileError) as exc:
        parse_text(data, "t.json" if data.startswith((b"{", b"[")) else "t.yaml")
    assert needle in str(exc.value)


def test_yaml_documents_are_accepted() -> None:
    value = parse_text(b"version: 1\nplugins:\n  systemd:\n    units:\n      a.service: {enabled: true}\n", "s.yaml")
    assert validate_document(value, "s.yaml").version == 1


def test_state_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "state.json"
    f.write_text(json.dumps({"version": 1, "plugins": {}}))
    f.chmod(0o664)
    with pytest.raises(InvalidInput, match="writable by group or others"):
        load_document(f)
    f.chmod(0o644)
    assert load_document(f).version == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_state_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "state.json"
    f.write_text(json.dumps({"version": 1, "plugins": {}}))
    os.chown(f, 1000, 1000)
    with pytest.raises(InvalidInput, match="owned by uid 1000"):
        load_document(f)


def test_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        load_document(tmp_path / "nope.json")
