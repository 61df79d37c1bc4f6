"""The audit log across processes: SIGKILL at random moments leaves whole blocks only; concurrent appends are serialised."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import op_dbus
from op_dbus.ledger import Ledger, verify

SRC = str(Path(op_dbus.__file__).resolve().parent.parent)

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from op_dbus.ledger import Ledger

    state_dir, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    log = Ledger.open(state_dir)
    print("ready", flush=True)
    while go != "-" and not Path(go).exists():
        time.sleep(0.001)
    i = 0
    while count < 0 or i < count:
        # Large records make each append spend longer inside its transaction, where a kill hurts most.
        state = {"version": 1, "plugins": {"p": {"worker": worker, "i": i, "pad": "s" * 20000}}}
        changes = [{"plugin": "p", "object": f"o{i}", "action": "set", "before": None, "after": {"pad": "c" * 8000}}]
        header = log.append("apply", changes, state, actor={"worker": worker, "pid": os.getpid()}, summary=f"{worker} {i}")
        print(header.index, flush=True)
        i += 1
    """
)


def _spawn(state_dir: Path, worker: str, count: int, go: str = "-") -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(state_dir), worker, str(count), go],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line


def test_sigkill_during_appends_leaves_only_whole_blocks(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    rng = random.Random(int(os.environ.get("LEDGER_KILL_SEED", "0")) or None)
    confirmed = 0
    kills = 0
    for round_ in range(30):
        proc = _spawn(state_dir, f"w{round_}", -1)
        try:
            _wait_ready(proc)
            time.sleep(rng.uniform(0.0, 0.08))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        printed = [int(line) for line in out.split() if line.isdigit()]
        if printed:
            # A block that append() returned for was committed with synchronous=FULL: it must be there.
            confirmed = max(confirmed, printed[-1] + 1)
    assert kills == 30
    with Ledger.open(state_dir) as log:
        size = len(log)
        assert size >= confirmed
        assert size > 30, "the writers never got to append; the test proved nothing"
        report = log.verify_full(all_signatures=True)
        assert report.ok, report.problems
        for index in range(size):
            block = log.get(index)  # checks both records against their hashes
            assert block.state is not None and block.changes is not None
            assert block.state["plugins"]["p"]["i"] == int(block.header.summary.split()[1])


@pytest.mark.parametrize("link_check", ["in-process", "child-process"])
def test_concurrent_appends_are_serialised(tmp_path: Path, link_check: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if link_check == "child-process":
        monkeypatch.setattr(verify, "CHILD_THRESHOLD", -1)
    state_dir = tmp_path / "state"
    go = tmp_path / "go"
    per_worker = 150
    workers = [_spawn(state_dir, f"w{k}", per_worker, str(go)) for k in range(3)]
    try:
        for proc in workers:
            _wait_ready(proc)
        go.touch()
        # Verifying while others append sees a consistent snapshot: never a false alarm.
        with Ledger.open(state_dir) as log:
            while any(proc.poll() is None for proc in workers):
                report = log.verify_full(update=False)
                assert report.ok, report.problems
        outputs = []
        for proc in workers:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            outputs.append([int(line) for line in out.split() if line.isdigit()])
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    claimed = sorted(i for indexes in outputs for i in indexes)
    assert claimed == list(range(3 * per_worker))
    with Ledger.open(state_dir) as log:
        headers = log.headers()
        assert [h.index for h in headers] == list(range(3 * per_worker))
        for k, indexes in enumerate(outputs):
            assert [headers[i].actor["worker"] for i in indexes] == [f"w{k}"] * per_worker
            assert indexes == sorted(indexes)
        # The writers really overlapped: runs of one worker's blocks are interleaved with the others'.
        switches = sum(1 for a, b in itertools.pairwise(headers) if a.actor["worker"] != b.actor["worker"])
        assert switches >= 3
        report = log.verify_full()
        assert report.ok, report.problems
        assert report.size == 3 * per_worker
