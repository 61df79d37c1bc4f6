"""The engine as the one writer of the audit log: drift blocks, rollback to a block, verify --current; a real
ledger in a temporary state directory, a key-value plugin standing in for the system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from op_dbus.engine import Engine
from op_dbus.errors import InvalidInput, LockHeld
from op_dbus.ledger import Ledger
from op_dbus.plugin import Context, Plugin, Settings
from op_dbus.statedir import StateDir
from tests.unit.test_engine import MemoryPlugin, doc


def _engine(state: Path, store: dict[str, int], *, log: bool = True) -> Engine:
    plugins: dict[str, Plugin[Any]] = {"mem": MemoryPlugin(store)}

    def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
        return {n: plugins[n] for n in (names or plugins)}

    return Engine(Context(Settings(state_dir=state)), ledger=(lambda: Ledger.open(state)) if log else None, load=load)


def test_record_drift_writes_genesis_first_and_needs_a_log(tmp_path: Path) -> None:
    state = {"version": 1, "plugins": {"mem": {"values": {"x": 1}}}}
    engine = _engine(tmp_path / "s", {})
    block = engine.record_drift([{"plugin": "mem", "object": "x", "action": "drift"}], state,
                                observed={"uid": 0}, summary="drift: x" * 100, meta={"mode": "shadow"})
    assert block is not None and block.index == 1 and block.kind == "drift"
    with Ledger.open(tmp_path / "s") as ledger:
        assert [h.kind for h in ledger.headers()] == ["genesis", "drift"]
        assert len(ledger.get(1).header.summary) == 500
    assert _engine(tmp_path / "t", {}, log=False).record_drift([], state, observed={}, summary="", meta={}) is None


def test_try_hold_gives_way_to_an_apply_holding_the_lock(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "s", {})
    with StateDir(tmp_path / "s").lock():
        with engine.try_hold() as held:
            assert not held
        with pytest.raises(LockHeld):
            engine.hold(0.0).__enter__()
    with engine.try_hold() as held:
        assert held


async def test_rollback_to_and_verify_current(tmp_path: Path) -> None:
    store = {"x": 1}
    engine = _engine(tmp_path / "s", store)
    await engine.apply(doc(mem={"x": 2}))  # blocks 0 (genesis, x=1) and 1 (x=2)
    assert (await engine.verify_current()).ok
    store["x"] = 5
    report = await engine.verify_current()
    assert not report.ok and report.block == 1 and [c.object for c in report.drift] == ["x"]
    dry = await engine.rollback_to(0, dry_run=True)
    assert store["x"] == 5 and dry.result.block is None and dry.proof.block.header.index == 0
    done = await engine.rollback_to(0)
    assert store["x"] == 1 and done.result.block is not None and done.result.block.kind == "rollback"
    assert done.result.block.meta["to_block"] == 0
    with pytest.raises(InvalidInput, match="no block 9"):
        await engine.rollback_to(9)


async def test_verify_current_on_an_empty_log_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await _engine(tmp_path / "s", {}).verify_current()
