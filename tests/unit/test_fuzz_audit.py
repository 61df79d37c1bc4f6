"""The auditor's verifier on any bytes: a report (exit 0 or 3) or `Unreadable` (exit 2) with a message, never
another exception, whatever the export holds; mutations of a real export are caught, not crashed on."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_dbus import audit_verify
from op_dbus.ledger import Ledger

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=os.environ.get("CI") == "true")


def _real_export() -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory() as d, Ledger.open(Path(d) / "s") as log:
        for i in range(5):
            log.append("genesis" if i == 0 else "apply", [{"plugin": "net", "object": "br0", "action": "modify",
                                                           "after": {"mtu": 1500 + i}}],
                       {"version": 1, "plugins": {"net": {"interfaces": [{"name": "br0", "mtu": 1500 + i}]}}},
                       actor={"user": "root"}, summary=f"step {i}")
        log.rotate_key(actor={"user": "root"})
        key = log.key_rotations()[0][1].vkey  # the key before the rotation: the verifier must follow it
        from op_dbus.ledger.export import write_export

        buf = io.StringIO()
        write_export(log, buf)
    return buf.getvalue().encode(), key


EXPORT, KEY = _real_export()

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.text(max_size=12), kids, max_size=4), max_leaves=30)
head = {"format": "op-dbus audit log export", "version": 1}
near_exports = st.fixed_dictionaries({**{k: st.just(v) for k, v in head.items()}}, optional={
    "checkpoint": st.sampled_from([json.loads(EXPORT)["checkpoint"], "x\n\n", ""]) | json_values,
    "range": st.fixed_dictionaries({"first": st.integers(-2, 8), "last": st.integers(-2, 8)}) | json_values,
    "key_rotations": st.just(json.loads(EXPORT)["key_rotations"]) | json_values,
    "tree_size": st.integers(-1, 10) | json_values,
    "blocks": st.lists(st.sampled_from(json.loads(EXPORT)["blocks"]) | json_values, max_size=8) | json_values,
})


def check_bytes(data: bytes) -> None:
    try:
        report = audit_verify.verify_stream(audit_verify.JsonStream(io.BytesIO(data), "fuzz.json"), KEY)
    except audit_verify.Unreadable as exc:
        assert str(exc)
    else:
        assert report.ok or report.problems
        json.dumps(report.to_dict())


def test_the_real_export_verifies() -> None:
    report = audit_verify.verify_stream(audit_verify.JsonStream(io.BytesIO(EXPORT), "x"), KEY)
    assert report.ok and report.complete and report.key_rotations == 1, report.problems


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes(data: bytes) -> None:
    check_bytes(data)


@SETTINGS
@given(st.data())
def test_mutated_real_exports(data: st.DataObject) -> None:
    buf = bytearray(EXPORT)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(buf)))
        cut = data.draw(st.integers(0, 8))
        buf[at:at + cut] = data.draw(st.binary(max_size=8) | st.sampled_from([b"[", b"{", b'"', b"9" * 50, b"\\u",
                                                                               b"\xff", b"\xe2\x80", b"-Infinity"]))
    mutated = bytes(buf)
    try:
        report = audit_verify.verify_stream(audit_verify.JsonStream(io.BytesIO(mutated), "fuzz.json"), KEY)
    except audit_verify.Unreadable as exc:
        assert str(exc)
        return
    if mutated != EXPORT:
        # Anything but white space or the informational members changed must fail a check; verifying is fine too
        # when the edit fell on what no check covers (prose in "about", "exported_at", "origin").
        assert report.ok or report.problems


@SETTINGS
@given(near_exports)
def test_documents_that_look_like_exports(doc: dict[str, Any]) -> None:
    try:
        report = audit_verify.verify_export(doc, KEY)
    except audit_verify.Unreadable as exc:
        assert str(exc)
    else:
        assert report.ok or report.problems
    check_bytes(json.dumps(doc).encode())


@SETTINGS
@given(st.text(max_size=200), st.integers(0, 400))
def test_any_key_text(text: str, cut: int) -> None:
    for key in (text, KEY[:cut] + text):
        try:
            audit_verify.verify_stream(audit_verify.JsonStream(io.BytesIO(EXPORT), "x"), key)
        except audit_verify.Unreadable as exc:
            assert str(exc)
