"""The engine's transaction logic with in-memory plugins: order, undo on failure, verification retries.

These are fast tests of pure engine logic; the engine against a real systemd is proven in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from op_dbus.engine import Engine
from op_dbus.errors import ApplyFailed, OpDbusError, StateFileError
from op_dbus.errors import Problem as P
from op_dbus.plugin import Change, Context, Plugin, Section, Settings, UndoLog
from op_dbus.state import StateDocument


class KV(Section):
    values: dict[str, int] = {}


class MemoryPlugin(Plugin[KV]):
    """A key-value store standing in for a system; `fail_on` makes setting that key raise."""

    name = "mem"
    model = KV
    order = 10
    journal: ClassVar[list[str]] = []

    def __init__(self, store: dict[str, int], fail_on: str | None = None, drift: bool = False) -> None:
        self.store, self.fail_on, self.drift = store, fail_on, drift

    async def check(self, desired: KV, ctx: Context) -> list[P]:
        return [P(f"plugins.{self.name}.values.{k}", "negative") for k, v in desired.values.items() if v < 0]

    async def query(self, ctx: Context, scope: KV | None = None) -> KV:
        keys = scope.values if scope is not None else self.store
        return KV(values={k: self.store[k] for k in keys if k in self.store})

    def diff(self, desired: KV, current: KV) -> list[Change]:
        return [Change(self.name, k, "set", current.values.get(k), v)
                for k, v in desired.values.items() if current.values.get(k) != v]

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        for c in changes:
            if c.object == self.fail_on and c.after is not None:
                raise OpDbusError(f"cannot set {c.object}")
            undo.record(Change(self.name, c.object, "set", c.after, c.before))
            self.journal.append(f"{self.name}:{c.object}={c.after}")
            if c.after is None:
                self.store.pop(c.object, None)
            else:
                self.store[c.object] = c.after + (1 if self.drift else 0)


class SecondPlugin(MemoryPlugin):
    name = "second"
    order = 20


Load = Callable[[list[str] | None], dict[str, Plugin[Any]]]


@pytest.fixture
def make_engine(tmp_path: Path) -> Callable[[dict[str, Plugin[Any]]], Engine]:
    def make(plugins: dict[str, Plugin[Any]]) -> Engine:
        def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
            chosen = {n: plugins[n] for n in (names or plugins)}
            return dict(sorted(chosen.items(), key=lambda kv: kv[1].order))

        return Engine(Context(Settings(state_dir=tmp_path / "state")), load=load)

    return make


def doc(**sections: dict[str, int]) -> StateDocument:
    return StateDocument(1, {n: KV(values=v) for n, v in sections.items()}, "t.json")


@pytest.fixture(autouse=True)
def clear_journal() -> None:
    MemoryPlugin.journal.clear()


async def test_apply_converges_in_plugin_order(make_engine: Any) -> None:
    a, b = {"x": 1}, {"y": 1}
    result = await make_engine({"second": SecondPlugin(b), "mem": MemoryPlugin(a)}).apply(doc(second={"y": 2}, mem={"x": 2}))
    assert a == {"x": 2} and b == {"y": 2}
    assert MemoryPlugin.journal == ["mem:x=2", "second:y=2"]
    assert [c.object for c in result.applied] == ["x", "y"]


async def test_failure_in_a_later_plugin_undoes_everything_newest_first(make_engine: Any) -> None:
    a, b = {"x": 1, "z": 5}, {"y": 1, "w": 1}
    e = make_engine({"mem": MemoryPlugin(a), "second": SecondPlugin(b, fail_on="w")})
    with pytest.raises(ApplyFailed, match="rolled back"):
        await e.apply(doc(mem={"x": 2, "z": 6}, second={"y": 2, "w": 2}))
    assert a == {"x": 1, "z": 5} and b == {"y": 1, "w": 1}
    assert MemoryPlugin.journal == ["mem:x=2", "mem:z=6", "second:y=2", "second:y=1", "mem:z=5", "mem:x=1"]


async def test_result_that_never_verifies_is_rolled_back(make_engine: Any) -> None:
    a = {"x": 1}
    with pytest.raises(ApplyFailed, match="verification failed"):
        await make_engine({"mem": MemoryPlugin(a, drift=True)}).apply(doc(mem={"x": 2}))
    assert a == {"x": 1 + 1}  # the undo itself is applied by the same drifting store: proof it ran


async def test_check_problems_stop_everything_before_any_change(make_engine: Any) -> None:
    a = {"x": 1}
    with pytest.raises(StateFileError) as exc:
        await make_engine({"mem": MemoryPlugin(a)}).apply(doc(mem={"x": 3, "y": -1}))
    assert [str(p) for p in exc.value.problems] == ["plugins.mem.values.y: negative"]
    assert a == {"x": 1} and MemoryPlugin.journal == []


async def test_dry_run_changes_nothing(make_engine: Any) -> None:
    a = {"x": 1}
    result = await make_engine({"mem": MemoryPlugin(a)}).apply(doc(mem={"x": 2}), dry_run=True)
    assert [c.object for c in result.plan.all_changes] == ["x"] and a == {"x": 1}
