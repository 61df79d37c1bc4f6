"""The real engine rolls a real network change back whatever exception interrupts the transaction: a plugin's bug
(struct.error), Ctrl-C (KeyboardInterrupt), a cancelled task. Proven on the kernel in a throwaway namespace."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any, ClassVar

import pytest

from op_dbus.engine import Engine
from op_dbus.engine.journal import Journal
from op_dbus.errors import ApplyFailed, Problem
from op_dbus.ledger import Ledger
from op_dbus.plugin import Change, Context, Plugin, Section, Settings, UndoLog
from op_dbus.plugins.net import NetPlugin
from op_dbus.state import validate_document
from tests.net.conftest import sh


class BoomSection(Section):
    go: bool = True


class BoomPlugin(Plugin[BoomSection]):
    """Applies after the network (order 90) and raises `error` in the middle of its apply."""

    name = "boom"
    model = BoomSection
    order: ClassVar[int] = 90

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def check(self, desired: BoomSection, ctx: Context) -> list[Problem]:
        return []

    async def query(self, ctx: Context, scope: BoomSection | None = None) -> BoomSection:
        return BoomSection(go=False)

    def diff(self, desired: BoomSection, current: BoomSection) -> list[Change]:
        return [Change(self.name, "boom", "set", current.go, desired.go)] if desired.go != current.go else []

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        if any(c.after for c in changes):
            raise self.error


def mtu(netns: str, dev: str) -> int:
    return int(json.loads(sh("ip", "-n", netns, "-j", "link", "show", "dev", dev))[0]["mtu"])


@pytest.mark.parametrize("error", [struct.error("'I' format requires 0 <= number <= 4294967295"),
                                   KeyboardInterrupt(), asyncio.CancelledError(), SystemExit(9)],
                         ids=["struct.error", "KeyboardInterrupt", "CancelledError", "SystemExit"])
async def test_any_exception_during_apply_rolls_a_real_change_back(netns: str, tmp_path: Path,
                                                                   error: BaseException) -> None:
    sh("ip", "-n", netns, "link", "add", "rb0", "type", "veth", "peer", "name", "rb1")
    assert mtu(netns, "rb0") == 1500
    plugins: dict[str, Plugin[Any]] = {"net": NetPlugin(), "boom": BoomPlugin(error)}

    def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
        chosen = {n: plugins[n] for n in (names or plugins) if n in plugins}
        return dict(sorted(chosen.items(), key=lambda kv: kv[1].order))

    state_dir = tmp_path / "state"
    ctx = Context(Settings(state_dir=state_dir, netns=netns, ovsdb=str(tmp_path / "no-ovsdb.sock"), job_timeout=10))
    engine = Engine(ctx, ledger=lambda: Ledger.open(state_dir), load=load)
    doc = validate_document({"version": 1, "plugins": {"net": {"interfaces": [{"name": "rb0", "mtu": 1400}]},
                                                       "boom": {"go": True}}}, "t.json", load)
    try:
        with pytest.raises(ApplyFailed, match="rolled back") as failed:
            await engine.apply(doc)
    finally:
        await ctx.aclose()
    assert type(error).__name__ in str(failed.value)
    assert mtu(netns, "rb0") == 1500  # the MTU change the net plugin made is undone
    assert Journal(state_dir).read() is None  # the transaction ended: nothing left for the next command to recover
    with Ledger.open(state_dir) as log:
        last = log.head()
    assert last is not None and last.kind == "failed" and type(error).__name__ in last.meta["error"], last
    assert failed.value.exit_code == 4
