"""The auditor's verifier on hostile exports: every malformed input ends in exit 2 (cannot be read) or exit 3 (a
check failed) with a message, never a traceback, and a large export is read in bounded memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ledger_helpers import fill
from test_audit_export import MODULE, export_doc

from op_dbus import audit_verify
from op_dbus.ledger import Ledger

HEAD = '{"format": "op-dbus audit log export", "version": 1, '


@pytest.fixture
def key(ledger: Ledger, tmp_path: Path) -> Path:
    fill(ledger, 3)
    path = tmp_path / "host.pub"
    path.write_text(ledger.verifier_key + "\n")
    return path


def auditor(tmp_path: Path, export: Path, key: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """The copied verifier under `python -I`; returns its result and its peak resident memory in KiB."""
    lone = tmp_path / "auditor"
    lone.mkdir(exist_ok=True)
    shutil.copy(MODULE, lone / "audit_verify.py")
    # VmHWM, not getrusage: ru_maxrss survives exec and would report the forking test process's size.
    code = ("import runpy, sys\n"
            "sys.argv = ['audit_verify.py'] + sys.argv[1:]\n"
            "try:\n"
            "    runpy.run_path('audit_verify.py', run_name='__main__')\n"
            "finally:\n"
            "    hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1]\n"
            "    print('maxrss', hwm, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-I", "-c", code, str(export), "--key", str(key), *extra], cwd=lone,
                       capture_output=True, text=True, timeout=300, check=False)
    rss = int(r.stderr.rsplit("maxrss ", 1)[1])
    return r, rss


HOSTILE = {
    "nested_top": "[" * 200_000,
    "nested_member": HEAD + '"checkpoint": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "nested_block": HEAD + '"blocks": [' + "{\"a\":" * 100_000 + "1" + "}" * 100_000 + "]}",
    "digits_member": HEAD + '"tree_size": ' + "9" * 5000 + ', "blocks": []}',
    "digits_block": HEAD + '"blocks": [{"index": ' + "1" * 5000 + "}]}",
    "nan": HEAD + '"tree_size": NaN, "blocks": []}',
    "not_object": "[1, 2, 3]",
    "trailing": HEAD + '"blocks": []} {}',
    "duplicate": HEAD + '"checkpoint": "a", "checkpoint": "b", "blocks": []}',
    "bad_utf8": HEAD.encode().decode() + '"blocks": ["\udcff"]}',
    "member_after_blocks": HEAD + '"checkpoint": "x\\n\\n", "blocks": [], "range": null}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_export_exits_2_with_a_message(tmp_path: Path, key: Path, name: str) -> None:
    export = tmp_path / "hostile.json"
    export.write_bytes(HOSTILE[name].encode("utf-8", "surrogateescape"))
    r, _ = auditor(tmp_path, export, key)
    assert r.returncode == 2, (name, r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.startswith("audit_verify: cannot check: ")


def test_hostile_values_inside_a_valid_export_fail_with_exit_3(ledger: Ledger, tmp_path: Path, key: Path) -> None:
    doc = export_doc(ledger)
    doc["blocks"][1]["header"] = "[" * 100_000 + "]" * 100_000          # nested too deeply inside the header text
    doc["blocks"][2]["changes"] = '{"n": ' + "7" * 5000 + "}"            # an integer beyond the parser's limit
    doc["blocks"][0]["header"] = doc["blocks"][0]["header"][:-1] + ',"x":"\udcff"}'  # a lone surrogate
    export = tmp_path / "audit.json"
    export.write_text(json.dumps(doc))
    r, _ = auditor(tmp_path, export, key)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "block 1: its header is not a JSON object (nested too deeply)" in r.stdout
    assert "block 2: its changes record does not match" in r.stdout


def test_hostile_documents_in_process_never_raise_anything_but_unreadable(key: Path) -> None:
    head = {"format": "op-dbus audit log export", "version": 1}
    for value in ([], "x", 1, {**head, "blocks": 5}, {**head, "checkpoint": 7, "blocks": [None, [], {"index": True}]},
                  {**head, "key_rotations": {"a": 1}, "checkpoint": "\n\n", "blocks": []}):
        try:
            report = audit_verify.verify_export(value, key.read_text())
        except audit_verify.Unreadable as exc:
            assert str(exc)
        else:
            assert not report.ok and report.problems


def test_a_large_export_is_checked_in_bounded_memory(tmp_path: Path, key: Path) -> None:
    """About 80 MB of export: reading it whole took 3.3 times its size; streamed, memory stays near one block."""
    export = tmp_path / "large.json"
    state = json.dumps({"version": 1, "plugins": {"dbus": {"blob": "x" * 60_000}}})
    with export.open("w") as fh:
        fh.write(HEAD + '"checkpoint": ' + json.dumps(key.read_text().split("+")[0] + "\n1\n" + "A" * 43 + "=\n\n")
                 + ', "range": {"first": 0, "last": 1299}, "blocks": [\n')
        for i in range(1300):
            fh.write(("" if i == 0 else ",\n") + json.dumps({"index": i, "header": "{}", "state": state}))
        fh.write("\n]}\n")
    size_kib = export.stat().st_size // 1024
    r, rss = auditor(tmp_path, export, key)
    assert r.returncode == 3 and "FAILED" in r.stdout  # its checkpoint is not signed: only the memory matters here
    assert rss < size_kib // 2, f"peak RSS {rss} KiB for a {size_kib} KiB export"
