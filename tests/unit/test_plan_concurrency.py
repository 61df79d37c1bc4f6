"""Planning runs check and query together, and plugins share one connection per resource while they do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from op_dbus.engine import Engine
from op_dbus.errors import Problem, ServiceUnavailable, StateFileError
from op_dbus.plugin import Change, Context, Plugin, Section, UndoLog
from op_dbus.state import StateDocument


class Empty(Section):
    pass


class SlowReads(Plugin[Empty]):
    """check and query both open the shared resource 'conn' (the opener takes a while) and log what they did."""

    name = "slow"
    model = Empty

    def __init__(self, log: list[str], problems: bool = False, query_fails: bool = False) -> None:
        self.log, self.problems, self.query_fails = log, problems, query_fails
        self.opened = 0

    async def _conn(self, ctx: Context) -> str:
        async def opener() -> str:
            self.opened += 1
            await asyncio.sleep(0.05)
            return "conn"

        return await ctx.resource("conn", opener)  # type: ignore[no-any-return]

    async def check(self, desired: Empty, ctx: Context) -> list[Problem]:
        await self._conn(ctx)
        self.log.append("check")
        return [Problem("plugins.slow", "bad")] if self.problems else []

    async def query(self, ctx: Context, scope: Empty | None = None) -> Empty:
        await self._conn(ctx)
        self.log.append("query")
        if self.query_fails:
            raise ServiceUnavailable("the service went away")
        return Empty()

    def diff(self, desired: Empty, current: Empty) -> list[Change]:
        return []

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        return None


def engine(plugin: SlowReads) -> tuple[Engine, StateDocument]:
    doc = StateDocument(version=1, sections={"slow": Empty()}, source="test")
    return Engine(Context(), load=lambda names: {"slow": plugin}), doc


async def test_check_and_query_share_one_connection_opened_once() -> None:
    plugin = SlowReads([])
    eng, doc = engine(plugin)
    plan = await eng.plan(doc)
    assert plan.changes == {"slow": []}
    assert sorted(plugin.log) == ["check", "query"]
    assert plugin.opened == 1


async def test_a_check_problem_wins_over_a_query_error() -> None:
    eng, doc = engine(SlowReads([], problems=True, query_fails=True))
    with pytest.raises(StateFileError) as err:
        await eng.plan(doc)
    assert "bad" in str(err.value)


async def test_a_query_error_is_raised_when_check_finds_nothing() -> None:
    eng, doc = engine(SlowReads([], query_fails=True))
    with pytest.raises(ServiceUnavailable, match="went away"):
        await eng.plan(doc)


async def test_a_failed_open_is_retried_by_the_next_caller() -> None:
    ctx = Context()
    calls = 0

    async def opener() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ServiceUnavailable("not yet")
        return "up"

    with pytest.raises(ServiceUnavailable):
        await ctx.resource("x", opener)
    assert await ctx.resource("x", opener) == "up"
    assert await ctx.resource("x", opener) == "up"
    assert calls == 2


async def test_callers_at_the_same_time_share_one_open() -> None:
    ctx = Context()
    opened = 0

    async def opener() -> Any:
        nonlocal opened
        opened += 1
        await asyncio.sleep(0.05)
        return object()

    first, second = await asyncio.gather(ctx.resource("x", opener), ctx.resource("x", opener))
    assert first is second and opened == 1
