"""Exports and the auditor's standalone verifier: what passes, and every kind of bad input named with where."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import fill

from op_dbus import audit_verify
from op_dbus.ledger import Ledger
from op_dbus.ledger.export import parse_range, write_export

MODULE = Path(audit_verify.__file__)


def export_doc(ledger: Ledger, first: int = 0, last: int | None = None, *, payloads: bool = True) -> dict[str, Any]:
    buf = io.StringIO()
    write_export(ledger, buf, first, last, payloads=payloads)
    return json.loads(buf.getvalue())


@pytest.fixture
def filled(ledger: Ledger) -> Ledger:
    fill(ledger, 23)
    return ledger


def run_isolated(tmp_path: Path, export: Path, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The verifier as an auditor runs it: a copy of the one file, `python -I`, and op_dbus made unimportable."""
    lone = tmp_path / "auditor"
    lone.mkdir(exist_ok=True)
    shutil.copy(MODULE, lone / "audit_verify.py")
    guard = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'op_dbus' or name.startswith('op_dbus.'):\n"
        "            raise ImportError('op_dbus must not be imported by the auditor: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['audit_verify.py'] + sys.argv[1:]\n"
        "runpy.run_path('audit_verify.py', run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-I", "-c", guard, str(export), "--key", str(key), *extra],
                          cwd=lone, capture_output=True, text=True, timeout=60, check=False)


def test_a_full_export_verifies_and_recomputes_the_head(filled: Ledger) -> None:
    doc = export_doc(filled)
    assert doc["format"] == "op-dbus audit log export" and doc["tree_size"] == 23 and len(doc["blocks"]) == 23
    assert doc["root"] == filled.root().hex() and doc["checkpoint"] == filled.checkpoint()
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert report.ok, report.problems
    assert (report.first, report.last, report.with_changes, report.with_state) == (0, 22, 23, 23)
    assert report.notes == []


def test_the_exported_header_is_exactly_the_hashed_leaf(filled: Ledger) -> None:
    doc = export_doc(filled)
    for entry, header in zip(doc["blocks"], filled.headers(), strict=True):
        assert entry["header"].encode() == header.leaf
        assert entry["leaf_hash"] == header.leaf_hash.hex()
        assert [bytes.fromhex(h) for h in entry["inclusion_proof"]] == filled.inclusion_proof(header.index)


def test_a_range_export_verifies_and_says_what_it_cannot_check(filled: Ledger) -> None:
    a, b = parse_range("5-9", len(filled))
    doc = export_doc(filled, a, b)
    assert [e["index"] for e in doc["blocks"]] == [5, 6, 7, 8, 9] and doc["range"] == {"first": 5, "last": 9}
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert report.ok, report.problems
    assert any("starts at block 5" in n for n in report.notes) and any("ends at block 9" in n for n in report.notes)


def test_an_export_without_records_verifies_headers_and_proofs(filled: Ledger) -> None:
    doc = export_doc(filled, payloads=False)
    assert all(e["changes"] is None and e["state"] is None for e in doc["blocks"])
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert report.ok and report.with_changes == report.with_state == 0


@pytest.mark.parametrize("text", ["x", "3-1", "-1-4", "0-23", "a-b"])
def test_bad_ranges_are_refused(text: str) -> None:
    from op_dbus.errors import InvalidInput

    with pytest.raises(InvalidInput, match="range"):
        parse_range(text, 23)


def test_range_forms() -> None:
    assert parse_range("4", 10) == (4, 4)
    assert parse_range("4-", 10) == (4, 9)
    assert parse_range("-3", 10) == (0, 3)


def _edit_header(doc: dict[str, Any], index: int, **fields: Any) -> None:
    header = json.loads(doc["blocks"][index]["header"])
    header.update(fields)
    doc["blocks"][index]["header"] = json.dumps(header, sort_keys=True, separators=(",", ":"))


def test_an_edited_header_names_its_block(filled: Ledger) -> None:
    doc = export_doc(filled)
    _edit_header(doc, 11, summary="nothing to see here")
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 11
    assert any(p.startswith("block 11: its header bytes hash") for p in report.problems)
    assert any(p.startswith("block 11: its inclusion proof does not lead") for p in report.problems)
    assert any(p.startswith("block 12: prev") for p in report.problems)


def test_an_edited_header_with_a_matching_leaf_hash_still_fails_its_proof(filled: Ledger) -> None:
    import hashlib

    doc = export_doc(filled)
    _edit_header(doc, 4, summary="rewritten")
    doc["blocks"][4]["leaf_hash"] = hashlib.sha256(b"\x00" + doc["blocks"][4]["header"].encode()).hexdigest()
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 4
    assert not any("header bytes hash" in p for p in report.problems)
    assert any("block 4: its inclusion proof does not lead" in p for p in report.problems)


def test_an_edited_state_record_names_its_block(filled: Ledger) -> None:
    doc = export_doc(filled)
    state = json.loads(doc["blocks"][7]["state"])
    state["plugins"]["net"]["interfaces"][0]["mtu"] = 9000
    doc["blocks"][7]["state"] = json.dumps(state, sort_keys=True, separators=(",", ":"))
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 7
    assert report.problems == [report.problems[0]] and "block 7: its state record does not match" in report.problems[0]


def test_an_edited_changes_record_names_its_block(filled: Ledger) -> None:
    doc = export_doc(filled)
    doc["blocks"][3]["changes"] = "[]"
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 3 and "changes record does not match" in report.problems[0]


def test_a_removed_block_is_named(filled: Ledger) -> None:
    doc = export_doc(filled)
    del doc["blocks"][9]
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 9
    assert any("block 10 follows block 8" in p for p in report.problems)


def test_a_tampered_proof_is_named(filled: Ledger) -> None:
    doc = export_doc(filled)
    proof = doc["blocks"][15]["inclusion_proof"]
    proof[1] = ("0" if proof[1][0] != "0" else "1") + proof[1][1:]
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 15 and "block 15: its inclusion proof" in report.problems[0]


def test_a_forged_checkpoint_fails_its_signature(filled: Ledger) -> None:
    doc = export_doc(filled)
    origin, _size, root, rest = doc["checkpoint"].split("\n", 3)
    doc["checkpoint"] = "\n".join([origin, "22", root, rest])
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad is None
    assert "checkpoint: the checkpoint's signature" in report.problems[0] and "does not verify" in report.problems[0]


def test_another_hosts_key_is_refused(filled: Ledger, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "other") as other:
        other_key = other.verifier_key
    report = audit_verify.verify_export(export_doc(filled), other_key)
    assert not report.ok and "no signature by the given key" in report.problems[0]


def test_a_key_with_the_right_name_but_other_bytes_is_refused(filled: Ledger, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "other", origin=filled.origin) as impostor:
        report = audit_verify.verify_export(export_doc(filled), impostor.verifier_key)
    assert not report.ok and "no signature by the given key" in report.problems[0]


def test_a_claimed_tree_size_that_is_not_signed_is_named(filled: Ledger) -> None:
    doc = export_doc(filled)
    doc["tree_size"] = 99
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and "tree_size 99" in report.problems[0]


@pytest.mark.parametrize("key", ["", "nonsense", "name+00000000+AAAA", "name+zz+AQ=="])
def test_a_malformed_key_cannot_be_used(filled: Ledger, key: str) -> None:
    with pytest.raises(audit_verify.Unreadable):
        audit_verify.verify_export(export_doc(filled), key)


def test_a_key_whose_id_does_not_match_is_refused(filled: Ledger) -> None:
    name, kid, b64 = filled.verifier_key.split("+", 2)
    wrong = f"{name}+{'%08x' % (int(kid, 16) ^ 1)}+{b64}"
    with pytest.raises(audit_verify.Unreadable, match="key ID"):
        audit_verify.verify_export(export_doc(filled), wrong)


def test_not_an_export_cannot_be_used(filled: Ledger) -> None:
    with pytest.raises(audit_verify.Unreadable, match="not an op-dbus audit log export"):
        audit_verify.verify_export({"blocks": []}, filled.verifier_key)


# -- the standalone verifier, run as an auditor would ---------------------------------------------------


@pytest.fixture
def files(filled: Ledger, tmp_path: Path) -> tuple[Path, Path]:
    export = tmp_path / "audit.json"
    with export.open("w") as fh:
        write_export(filled, fh)
    key = tmp_path / "host.pub"
    key.write_text(filled.public_key_path.read_text())
    return export, key


def test_the_verifier_runs_alone_without_op_dbus(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, key = files
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: blocks 0..22 verified") and "23 changes and 23 state records" in r.stdout
    j = run_isolated(tmp_path, export, key, "--json")
    assert j.returncode == 0 and json.loads(j.stdout)["ok"] is True


def test_the_verifier_imports_only_the_standard_library_and_cryptography(tmp_path: Path) -> None:
    code = ("import sys; sys.path.insert(0, '.'); before = set(sys.modules); import audit_verify; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    lone = tmp_path / "alone"
    lone.mkdir()
    shutil.copy(MODULE, lone / "audit_verify.py")
    r = subprocess.run([sys.executable, "-I", "-c", code], cwd=lone, capture_output=True, text=True, check=True)
    third_party = set(json.loads(r.stdout.replace("'", '"'))) - set(sys.stdlib_module_names) - {"audit_verify"}
    assert third_party <= {"cryptography", "_cffi_backend", "_openssl"}, third_party  # _openssl: cryptography's own


def test_an_edited_export_fails_with_exit_3_naming_the_block(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, key = files
    doc = json.loads(export.read_text())
    _edit_header(doc, 17, kind="apply", summary="edited")
    export.write_text(json.dumps(doc))
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 3
    assert r.stdout.splitlines()[0] == "FAILED at block 17" and "block 17: its header bytes hash" in r.stdout


def test_a_truncated_export_exits_2_and_says_so(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, key = files
    data = export.read_bytes()
    export.write_bytes(data[: len(data) // 2])
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 2 and "not valid JSON at line" in r.stderr and "truncated" in r.stderr


def test_a_corrupted_export_exits_2_naming_line_and_column(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, key = files
    lines = export.read_text().splitlines(keepends=True)
    lines[20] = lines[20].replace('"', "'", 1)
    export.write_text("".join(lines))
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 2 and "line 21, column" in r.stderr, r.stderr


def test_a_wrong_key_file_exits_3(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, _ = files
    with Ledger.open(tmp_path / "elsewhere") as other:
        wrong = other.public_key_path
    r = run_isolated(tmp_path, export, wrong)
    assert r.returncode == 3 and "FAILED" in r.stdout and "no signature by the given key" in r.stdout


def test_a_garbage_key_file_exits_2(tmp_path: Path, files: tuple[Path, Path]) -> None:
    export, _ = files
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\n")
    r = run_isolated(tmp_path, export, bad)
    assert r.returncode == 2 and "C2SP verifier key" in r.stderr


def test_the_verifier_reads_stdin(files: tuple[Path, Path]) -> None:
    export, key = files
    env = {**os.environ, "PYTHONPATH": str(MODULE.parent.parent)}
    r = subprocess.run([sys.executable, "-m", "op_dbus.audit_verify", "-", "--key", str(key)], input=export.read_text(),
                       capture_output=True, text=True, timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stderr


def test_tree_head_matches_the_store_for_every_size(ledger: Ledger) -> None:
    from op_dbus.ledger import merkle

    assert audit_verify.tree_head([]) == merkle.EMPTY_ROOT
    for _ in range(1, 40):
        fill(ledger, 1)
        leaves = [h.leaf_hash for h in ledger.headers()]
        assert audit_verify.tree_head(leaves) == ledger.root()


def test_since_an_earlier_checkpoint_the_log_must_extend_it(filled: Ledger) -> None:
    old = filled.checkpoint(10)
    assert "extends the earlier checkpoint of size 10" in audit_verify.verify_export(
        export_doc(filled), filled.verifier_key, old).notes[-1]
    same = audit_verify.verify_export(export_doc(filled), filled.verifier_key, filled.checkpoint())
    assert same.ok and "still the one signed" in same.notes[-1]
    partial = audit_verify.verify_export(export_doc(filled, 12), filled.verifier_key, old)
    assert not partial.ok and "needs the export to hold blocks 0..9" in partial.problems[0]


def test_since_detects_a_rewritten_history(tmp_path: Path) -> None:
    # the same key signs two histories that differ at block 3: an auditor holding the first notices the second
    key = tmp_path / "host.key"
    with Ledger.open(tmp_path / "a", key_path=key, origin="op-dbus/test/1") as a:
        fill(a, 8)
        seen = a.checkpoint(6)
    with Ledger.open(tmp_path / "b", key_path=key, origin="op-dbus/test/1") as b:
        fill(b, 3)
        b.append("apply", [], {"version": 1, "plugins": {}}, actor={}, summary="a different block 3")
        fill(b, 5)
        report = audit_verify.verify_export(export_doc(b), b.verifier_key, seen)
    assert not report.ok and "are not the ones signed earlier" in report.problems[0]


def test_since_from_the_command_line(tmp_path: Path, files: tuple[Path, Path], filled: Ledger) -> None:
    export, key = files
    old = tmp_path / "seen.txt"
    old.write_text(filled.checkpoint(5))
    r = run_isolated(tmp_path, export, key, "--since", str(old))
    assert r.returncode == 0 and "extends the earlier checkpoint of size 5" in r.stdout, r.stdout + r.stderr
    r = run_isolated(tmp_path, export, key, "--since", str(export))  # an earlier export works too
    assert r.returncode == 0 and "still the one signed" in r.stdout
