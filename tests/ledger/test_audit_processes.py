"""Exports, compaction and search while other processes append: each sees one consistent log."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import op_dbus
from op_dbus import audit_verify
from op_dbus.ledger import Ledger
from op_dbus.ledger.archive import compact
from op_dbus.ledger.export import write_export
from op_dbus.ledger.search import SearchIndex

SRC = str(Path(op_dbus.__file__).resolve().parent.parent)

WRITER = textwrap.dedent(
    """
    import os, sys
    from op_dbus.ledger import Ledger

    log = Ledger.open(sys.argv[1])
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        state = {"version": 1, "plugins": {"systemd": {"units": {f"u{i}.service": {"enabled": True}}}}}
        changes = [{"plugin": "systemd", "object": f"postgresql-{i}.service", "action": "modify", "after": {"n": i}}]
        log.append("apply", changes, state, actor={"pid": os.getpid()}, summary=f"writer {i}")
    """
)


def test_exports_compaction_and_search_stay_consistent_while_another_process_appends(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Ledger.open(state) as log:
        log.append("genesis", [], {"version": 1, "plugins": {}}, actor={}, summary="genesis")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state), "400"], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    exports = 0
    with Ledger.open(state) as log, SearchIndex.open(log) as index:
        while writer.poll() is None or exports < 3:
            buf = io.StringIO()
            write_export(log, buf)
            doc = json.loads(buf.getvalue())
            report = audit_verify.verify_export(doc, log.verifier_key)
            assert report.ok, report.problems
            assert report.last == report.tree_size - 1  # the blocks and the checkpoint come from one moment
            exports += 1
            compact(log)
            hits = index.search("database config", limit=3)
            assert all(h.tree_size >= 1 for h in hits)
        assert writer.wait() == 0
        assert len(log) == 401 and log.verify_full().ok
        assert index.search("postgresql-399")[0].index == 400
    assert exports >= 3
