"""The agent loop with an in-memory plugin whose watch is fed by the test: shadow, enforce, periodic reconciliation,
reload, lost sources, the state lock and adoption of a manual apply. A real audit log in a temporary directory.

The agent against the real systemd, kernel and OVS is proven in tests/e2e/test_agent.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from op_dbus.agent import Agent, AgentConfig
from op_dbus.agent.logs import setup
from op_dbus.agent.notify import Notifier
from op_dbus.engine.lock import StateLock
from op_dbus.errors import ServiceUnavailable
from op_dbus.ledger import Ledger
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, Section, Settings, UndoLog, WatchEvent


class KV(Section):
    values: dict[str, int] = {}


class Store(Plugin[KV]):
    """A key-value store standing in for a system, with a watch the test drives through `events`."""

    name = "mem"
    model = KV

    def __init__(self, values: dict[str, int], watching: bool = True) -> None:
        self.values = values
        self.watching = watching
        self.events: asyncio.Queue[WatchEvent | BaseException] = asyncio.Queue()
        self.applied: list[str] = []
        self.subscriptions = 0

    async def query(self, ctx: Context, scope: KV | None = None) -> KV:
        keys = scope.values if scope is not None else self.values
        return KV(values={k: self.values[k] for k in keys if k in self.values})

    def diff(self, desired: KV, current: KV) -> list[Change]:
        return [Change(self.name, k, "set", current.values.get(k), v)
                for k, v in desired.values.items() if current.values.get(k) != v]

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        for c in changes:
            undo.record(Change(self.name, c.object, "set", c.after, c.before))
            self.applied.append(f"{c.object}={c.after}")
            self.values[c.object] = c.after

    async def watch(self, scope: KV, ctx: Context) -> AsyncIterator[WatchEvent]:
        if not self.watching:
            return
        self.subscriptions += 1
        yield WatchEvent(self.name, source=SUBSCRIBED)
        while True:
            item = await self.events.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def change(self, key: str, value: int, event: bool = True, origin: dict[str, Any] | None = None) -> None:
        """A change made behind op-dbus's back, and (if `event`) the notification the system would send."""
        self.values[key] = value
        if event:
            self.events.put_nowait(WatchEvent(self.name, (key,), "test", origin or {}))


class Harness:
    def __init__(self, tmp_path: Path, store: Store, mode: str = "shadow", log: bool = True, **config: Any) -> None:
        self.store = store
        self.state_dir = tmp_path / "state"
        self.file = tmp_path / "state.json"
        self.write({"x": 1, "y": 2})
        self.stream = io.StringIO()

        def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
            return {"mem": store}

        opener = (lambda: Ledger.open(self.state_dir)) if log else None
        self.agent = Agent(AgentConfig(self.file, mode=mode, debounce=0.01, file_poll=0.05, **config),
                           Settings(state_dir=self.state_dir), ledger=opener, load=load,
                           logger=setup(self.stream, logging.DEBUG), notifier=Notifier({}))
        self.task: asyncio.Task[int] | None = None

    def write(self, values: dict[str, int]) -> None:
        tmp = self.file.with_suffix(".new")
        tmp.write_text(json.dumps({"version": 1, "plugins": {"mem": {"values": values}}}))
        tmp.chmod(0o600)
        tmp.rename(self.file)

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.agent.run())
        await until(lambda: self.agent.ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.agent.inbox.put_nowait(("stop", "test"))
        assert self.task is not None
        assert await asyncio.wait_for(self.task, 5) == 0

    def blocks(self) -> list[Any]:
        with Ledger.open(self.state_dir) as log:
            return [log.get(h.index) for h in log.headers()]

    def kinds(self) -> list[str]:
        return [b.header.kind for b in self.blocks()]

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [e for e in lines if e["event"] == name]


async def until(check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@pytest.fixture
def store() -> Store:
    return Store({"x": 1, "y": 2})


async def test_shadow_records_drift_with_before_after_and_who_and_changes_nothing(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store) as h:
        assert h.kinds() == []  # nothing differs at start: nothing to record
        store.change("x", 5, origin={"pid": 4242, "command": "vi"})
        await until(lambda: "drift" in h.kinds())
        genesis, drift = h.blocks()
        assert genesis.header.kind == "genesis"
        assert drift.changes == [{"plugin": "mem", "object": "x", "action": "drift", "repair": "set",
                                  "before": 1, "after": 5}]
        assert drift.header.actor["pid"] == 4242 and drift.header.actor["command"] == "vi"
        assert drift.header.meta["mode"] == "shadow" and drift.header.meta["objects"] == ["x"]
        assert drift.state == {"version": 1, "plugins": {"mem": {"values": {"x": 5, "y": 2}}}}
        # the same difference again is not recorded twice; a second one is
        store.change("x", 5)
        store.change("y", 3)
        await until(lambda: len(h.kinds()) == 3)
        assert [c["object"] for c in h.blocks()[2].changes] == ["x", "y"]
        assert store.values == {"x": 5, "y": 3} and store.applied == []
        status = h.agent.status()
        assert status["open_drift"] == 2 and status["counts"]["drift"] == 2
        # put back by hand: recorded as resolved
        store.change("x", 1)
        store.change("y", 2)
        await until(lambda: h.agent.status()["open_drift"] == 0)
        assert h.blocks()[-1].header.meta["resolved"]


async def test_enforce_repairs_and_the_apply_block_names_the_drift(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce") as h:
        store.change("x", 9)
        await until(lambda: store.values["x"] == 1)
        await until(lambda: h.kinds()[-1:] == ["apply"])
        *_, drift, repair = h.blocks()
        assert drift.header.kind == "drift" and repair.header.meta["repairs"] == drift.header.index
        assert repair.changes == [{"plugin": "mem", "object": "x", "action": "set", "before": 9, "after": 1}]
        assert h.agent.status()["counts"]["applies"] == 1
        assert h.events("repaired")[0]["latency_ms"] >= 0


async def test_start_reconciles_a_difference_that_is_already_there(tmp_path: Path) -> None:
    store = Store({"x": 7, "y": 2})
    async with Harness(tmp_path, store, mode="enforce") as h:
        await until(lambda: store.values["x"] == 1)
        assert h.blocks()[1].header.meta["sources"] == ["start"]


async def test_a_plugin_without_watch_is_covered_by_the_periodic_reconciliation(tmp_path: Path) -> None:
    store = Store({"x": 1, "y": 2}, watching=False)
    async with Harness(tmp_path, store, interval=0.2) as h:
        assert h.agent.watching == {"mem": "periodic only"}
        store.change("x", 4, event=False)
        await until(lambda: "drift" in h.kinds())
        assert h.blocks()[-1].header.meta["sources"] == ["periodic"]


async def test_state_file_change_and_sighup_reload(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce") as h:
        h.write({"x": 3, "y": 2})
        await until(lambda: store.values["x"] == 3)
        assert h.events("reload")
        h.write({"x": 4, "y": 2})
        h.agent.inbox.put_nowait(("reload", "SIGHUP"))
        await until(lambda: store.values["x"] == 4)
        assert store.subscriptions >= 3  # each reload subscribes again with the new scope


async def test_an_invalid_file_is_refused_and_the_old_one_kept(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce") as h:
        h.file.write_text('{"version": 1, "plugins": {"mem": {"values": {"x": "one"}}}}')
        await until(lambda: h.events("reload-refused"))
        store.change("x", 8)
        await until(lambda: store.values["x"] == 1)
        assert "reload" in h.agent.status()["last_error"]


async def test_a_lost_source_is_a_gap_then_reconnect_and_reconcile(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce") as h:
        store.events.put_nowait(ServiceUnavailable("the bus went away"))
        store.change("x", 6, event=False)  # made during the gap: no event will ever say so
        await until(lambda: store.values["x"] == 1)
        await until(lambda: "until" in h.agent.status()["gaps"][-1])  # closed once the reconciliation is done
        gap = h.agent.status()["gaps"][-1]
        assert gap["error"] == "the bus went away" and gap["attempts"] == 1
        assert h.agent.status()["counts"]["reconnects"] == 1
        assert store.subscriptions == 2


async def test_sources_missing_at_start_still_make_the_agent_ready_and_it_catches_up(tmp_path: Path) -> None:
    class Late(Store):
        """A source that is not there for the first two attempts (a bus that comes up after the agent)."""

        attempts = 0

        async def query(self, ctx: Context, scope: KV | None = None) -> KV:
            Late.attempts += 1
            if Late.attempts <= 2:
                raise ServiceUnavailable("no bus yet")
            return await super().query(ctx, scope)

    store = Late({"x": 5, "y": 2})
    async with Harness(tmp_path, store, mode="enforce") as h:  # ready although blind
        assert h.agent.status()["gaps"][0]["error"] == "no bus yet"
        await until(lambda: store.values["x"] == 1, timeout=10)
        await until(lambda: "until" in h.agent.status()["gaps"][-1])
        gap = h.agent.status()["gaps"][-1]
        assert gap["attempts"] == 2 and len(h.agent.status()["gaps"]) == 1


async def test_a_lost_source_blinds_only_its_plugin(tmp_path: Path, store: Store) -> None:
    class Flaky(Store):
        """A second plugin whose source goes away (ovsdb-server stopped) until `back` is set."""

        name = "flaky"
        back = False

        async def query(self, ctx: Context, scope: KV | None = None) -> KV:
            if not self.back:
                raise ServiceUnavailable("ovsdb-server is gone")
            return await super().query(ctx, scope)

    flaky = Flaky({"z": 1})
    flaky.back = True
    h = Harness(tmp_path, store, mode="enforce")
    h.agent._load = lambda names: {n: p for n, p in (("mem", store), ("flaky", flaky)) if names is None or n in names}
    h.file.write_text(json.dumps({"version": 1, "plugins": {"mem": {"values": {"x": 1, "y": 2}},
                                                            "flaky": {"values": {"z": 1}}}}))
    async with h:
        flaky.back = False
        flaky.events.put_nowait(ServiceUnavailable("ovsdb-server is gone"))
        await until(lambda: "flaky" in h.agent.lost)
        store.change("x", 3)  # still watched and repaired while the other source is away
        await until(lambda: store.values["x"] == 1)
        assert h.agent.status()["watching"]["flaky"] == "lost"
        flaky.values["z"] = 9  # changed while unwatched: found when the source is back
        flaky.back = True
        await until(lambda: flaky.values["z"] == 1, timeout=10)
        gap = h.agent.status()["gaps"][-1]
        assert gap["plugin"] == "flaky" and "until" in gap and not h.agent.lost


async def test_a_held_state_lock_defers_until_released(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store) as h:
        lock = StateLock(h.state_dir)
        assert lock.try_acquire()
        store.change("x", 2)
        await until(lambda: h.events("deferred"))
        assert "drift" not in h.kinds()
        lock.release()
        await until(lambda: "drift" in h.kinds())


async def test_a_manual_apply_is_adopted_not_reverted(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce") as h:
        # what `op-dbus apply` in another process leaves: the change, then its block
        store.values["x"] = 42
        with Ledger.open(h.state_dir) as log:
            log.append("apply", [{"plugin": "mem", "object": "x", "action": "set", "before": 1, "after": 42}],
                       {"version": 1, "plugins": {"mem": {"values": {"x": 42}}}},
                       actor={"pid": 1, "user": "admin"}, summary="set x")
        store.events.put_nowait(WatchEvent("mem", ("x",), "test"))
        await until(lambda: h.agent.adopted)
        await asyncio.sleep(0.2)
        assert store.values["x"] == 42 and store.applied == []
        assert h.agent.doc is not None and h.agent.doc.sections["mem"].values == {"x": 42, "y": 2}
        store.change("y", 0)  # the rest of the file is still kept
        await until(lambda: store.values["y"] == 2)
        assert store.values["x"] == 42
        h.agent.inbox.put_nowait(("reload", "SIGHUP"))  # the file is authoritative again
        await until(lambda: store.values["x"] == 1)


async def test_read_only_never_writes_even_in_enforce_mode(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce", read_only=True) as h:
        assert h.agent.mode == "shadow"
        store.change("x", 2)
        await until(lambda: "drift" in h.kinds())
        await asyncio.sleep(0.1)
        assert store.values["x"] == 2 and store.applied == []


async def test_without_a_log_drift_goes_to_the_log_stream_only(tmp_path: Path, store: Store) -> None:
    async with Harness(tmp_path, store, mode="enforce", log=False) as h:
        store.change("x", 2)
        await until(lambda: store.values["x"] == 1)
        assert not (h.state_dir / "ledger.db").exists()
        (drift,) = h.events("drift")
        assert drift["changes"][0]["object"] == "x" and drift["block"] is None
        await until(lambda: h.events("repaired"))  # logged just after the repair lands


async def test_a_failing_repair_is_not_retried_on_every_event(tmp_path: Path) -> None:
    class Stubborn(Store):
        async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
            self.applied.append("attempt")  # claims success but changes nothing: verification fails

    store = Stubborn({"x": 1, "y": 2})
    async with Harness(tmp_path, store, mode="enforce") as h:
        store.change("x", 2)
        await until(lambda: h.agent.status()["counts"].get("failures") == 1, timeout=10)
        attempts = len(store.applied)
        store.change("x", 2)
        await asyncio.sleep(0.2)
        assert len(store.applied) == attempts
        assert h.kinds().count("failed") == 1


async def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path, store: Store) -> None:
    from op_dbus.errors import LockHeld

    async with Harness(tmp_path, store):
        second = Harness(tmp_path, Store({"x": 1, "y": 2}))
        with pytest.raises(LockHeld, match="another op-dbus agent"):
            await second.agent.run()


async def test_status_file_is_written_and_says_not_running_after_stop(tmp_path: Path, store: Store) -> None:
    from op_dbus.agent.status import read_status

    h = Harness(tmp_path, store)
    async with h:
        st = read_status(h.state_dir)
        assert st is not None and st["mode"] == "shadow" and st["ready"] and st["last_reconcile"]["reason"] == "start"
    st = read_status(h.state_dir)
    assert st is not None and st["ready"] is False
