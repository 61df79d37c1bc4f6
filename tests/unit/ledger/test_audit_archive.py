"""Archive and compaction: records go, hashes and proofs stay; the archive verifies alone; kill -9 never breaks the log."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ledger_helpers import fill, sample_changes, sample_state

from op_dbus import audit_verify
from op_dbus.errors import InvalidInput
from op_dbus.ledger import Ledger
from op_dbus.ledger.archive import archive, compact, parse_date
from op_dbus.ledger.export import write_export

SRC = Path(audit_verify.__file__).parent.parent


def every_block_proves(ledger: Ledger) -> None:
    for i in range(len(ledger)):
        ledger.prove(i)


def test_compact_drops_old_states_and_every_proof_still_verifies(ledger: Ledger) -> None:
    fill(ledger, 30)
    root = ledger.root()
    head_state = ledger.get(29).state
    outcome = compact(ledger)
    assert outcome.dropped == 29 and outcome.bytes_freed > 0 and outcome.last == 28
    assert all(ledger.get(i).state is None for i in range(29))
    assert ledger.get(29).state == head_state  # verify --current compares against it
    assert all(ledger.get(i).changes == sample_changes(i) for i in range(30))  # change lists stay
    assert ledger.root() == root
    every_block_proves(ledger)
    report = ledger.verify_full()
    assert report.ok, report.problems
    buf = io.StringIO()
    write_export(ledger, buf)
    assert audit_verify.verify_export(json.loads(buf.getvalue()), ledger.verifier_key).ok
    assert compact(ledger).dropped == 0  # idempotent


def test_compact_keeps_the_last_n_and_a_state_shared_with_them(ledger: Ledger) -> None:
    ledger.append("genesis", [], sample_state(100), actor={}, summary="first")
    same = ledger.get(0).state
    fill(ledger, 5)
    ledger.append("rollback", [], sample_state(100), actor={}, summary="back to 0")  # the same record as block 0
    outcome = compact(ledger, keep=2)
    assert ledger.get(0).state == same  # shared with the kept head
    assert [ledger.get(i).state is None for i in range(7)] == [False, True, True, True, True, False, False]
    assert outcome.dropped == 4
    with pytest.raises(InvalidInput):
        compact(ledger, keep=0)


def test_archive_moves_old_records_to_a_file_that_verifies_alone(ledger: Ledger, tmp_path: Path) -> None:
    fill(ledger, 12)
    cutoff = parse_date(ledger.headers(8, 9)[0].time)  # blocks 0..7 are older
    outcome = archive(ledger, cutoff)
    assert (outcome.first, outcome.last, outcome.dropped) == (0, 7, 16)
    path = Path(outcome.path or "")
    assert path == ledger.state_dir / "archive" / "blocks-00000000-00000007.json"
    doc = json.loads(path.read_text())
    report = audit_verify.verify_export(doc, ledger.verifier_key)
    assert report.ok and report.with_changes == report.with_state == 8 and report.last == 7
    assert all(ledger.get(i).changes is None and ledger.get(i).state is None for i in range(8))
    assert ledger.get(8).changes == sample_changes(8)
    every_block_proves(ledger)
    assert ledger.verify_full().ok
    assert archive(ledger, cutoff, path).dropped == 0  # the same archive again: nothing left to drop
    other = path.with_name("other.json")
    other.write_text("{}")
    with pytest.raises(InvalidInput, match="exists already"):
        archive(ledger, cutoff, other)


def test_archive_of_every_block_keeps_the_heads_records(ledger: Ledger) -> None:
    fill(ledger, 5)
    head_state = ledger.get(4).state
    outcome = archive(ledger, parse_date("2999-01-01"))
    assert (outcome.first, outcome.last) == (0, 4)
    assert ledger.get(4).state == head_state and ledger.get(3).state is None


def test_archive_with_nothing_older_does_nothing(ledger: Ledger) -> None:
    fill(ledger, 3)
    outcome = archive(ledger, parse_date("2000-01-01"))
    assert outcome.blocks == 0 and outcome.path is None
    assert not (ledger.state_dir / "archive").exists()


def test_archive_refuses_a_damaged_log_and_drops_nothing(ledger: Ledger) -> None:
    fill(ledger, 6)
    conn = sqlite3.connect(ledger.db_path)
    leaf = json.loads(conn.execute("SELECT leaf FROM blocks WHERE idx = 2").fetchone()[0])
    leaf["summary"] = "edited"
    conn.execute("UPDATE blocks SET leaf = ? WHERE idx = 2", (json.dumps(leaf).encode(),))
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="do not verify"):
        archive(ledger, parse_date("2999-01-01"))
    assert not (ledger.state_dir / "archive").exists()
    assert ledger.get(0).state is not None


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-31", "2026-01-31T00:00:00.000000Z"),
    ("2026-01-31T12:30:00Z", "2026-01-31T12:30:00.000000Z"),
    ("2026-01-31T14:30:00+02:00", "2026-01-31T12:30:00.000000Z"),
])
def test_dates(text: str, expected: str) -> None:
    assert parse_date(text) == expected


def test_a_bad_date_is_refused() -> None:
    with pytest.raises(InvalidInput, match="ISO 8601"):
        parse_date("last tuesday")


# -- kill -9 in the middle ------------------------------------------------------------------------------

_WORKER = """
import os, sys, time
from op_dbus.ledger import Ledger
from op_dbus.ledger import archive as mod

def pause(fn):
    def wrapped(*a, **k):
        result = fn(*a, **k)
        print("paused", flush=True)
        time.sleep(60)
        return result
    return wrapped

at = sys.argv[3]
if at == "in-transaction":
    mod._drop = pause(mod._drop)  # the records are NULL in the open transaction; COMMIT has not run
elif at == "temp-written":
    os.fsync = pause(os.fsync)  # the temp file is complete; the archive file is not in place yet
elif at == "linked":
    os.link = pause(os.link)  # the archive file is in place; its temp name not yet removed
elif at == "archive-written":
    mod.files.atomic_write = pause(mod.files.atomic_write)  # written and its directory fsynced
with Ledger.open(sys.argv[1]) as log:
    print("ready", flush=True)
    if sys.argv[2] == "compact":
        mod.compact(log)
    else:
        mod.archive(log, mod.parse_date("2999-01-01"))
"""


def make_log(state: Path) -> dict[int, tuple[object, object]]:
    with Ledger.open(state) as log:
        for i in range(200):
            big = sample_state(i)
            big["plugins"]["systemd"]["units"].update({f"u{j}.service": {"enabled": True, "n": i} for j in range(40)})
            log.append("genesis" if i == 0 else "apply", sample_changes(i), big, actor={}, summary=f"step {i}")
        return {i: (log.get(i).changes, log.get(i).state) for i in range(200)}


def check_after_kill(state: Path, records: dict[int, tuple[object, object]], what: str) -> int:
    with Ledger.open(state) as log:
        report = log.verify_full()
        assert report.ok, report.problems
        every_block_proves(log)
        dropped = [i for i in range(199) if log.get(i).state is None]
        assert dropped in ([], list(range(199))), len(dropped)  # all or nothing: one transaction
        for i in range(200):
            block = log.get(i)
            assert block.state in (None, records[i][1]) and block.changes in (None, records[i][0])
        archives = sorted((state / "archive").glob("*.json")) if (state / "archive").exists() else []
        if what == "archive" and dropped:
            assert len(archives) == 1  # the records left only once their archive was in place
        for path in archives:
            assert audit_verify.verify_export(json.loads(path.read_text()), log.verifier_key).ok
        return len(dropped)


def run_and_kill(state: Path, what: str, at: str, delay: float = 0.0) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    p = subprocess.Popen([sys.executable, "-c", _WORKER, str(state), what, at], env=env, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    if at != "none":
        assert p.stdout.readline() == b"paused\n"
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()


@pytest.mark.parametrize(("what", "at", "expect_dropped"), [
    ("compact", "in-transaction", False),
    ("archive", "temp-written", False),
    ("archive", "linked", False),
    ("archive", "archive-written", False),
    ("archive", "in-transaction", False),
])
def test_kill_9_at_each_step_leaves_a_log_that_verifies(tmp_path: Path, what: str, at: str, expect_dropped: bool) -> None:
    state = tmp_path / "state"
    records = make_log(state)
    run_and_kill(state, what, at)
    assert bool(check_after_kill(state, records, what)) is expect_dropped
    if what == "archive":
        # the archive file is in place (and verifies) only once it was complete; the records stay in the log
        assert len(list((state / "archive").glob("*.json"))) == (0 if at == "temp-written" else 1)
        # running it again finishes the job, reusing a complete archive file
        with Ledger.open(state) as log:
            outcome = archive(log, parse_date("2999-01-01"))
            assert outcome.dropped > 0 and log.verify_full().ok
        assert check_after_kill(state, records, what) == 199


@pytest.mark.parametrize("what", ["compact", "archive"])
def test_kill_9_at_random_moments_leaves_a_log_that_verifies(tmp_path: Path, what: str) -> None:
    state = tmp_path / "state"
    records = make_log(state)
    for delay in (0.0, 0.01, 0.02, 0.04, 0.08, 0.16):
        run_and_kill(state, what, "none", delay)
        if check_after_kill(state, records, what):
            break
