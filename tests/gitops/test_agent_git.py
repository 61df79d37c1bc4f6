"""The agent keeping the state of a real git repository: a new signed commit is applied through the engine and its
blocks name the commit, signer and path; an unsigned one or a force-push is a `refused` block and changes nothing;
an unreachable remote is a gap; shadow records the difference only. An in-memory plugin stands in for the system
(the agent against the lab's real systemd is tests/e2e/test_gitops.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from op_dbus.agent import Agent, AgentConfig
from op_dbus.agent.logs import setup
from op_dbus.agent.notify import Notifier
from op_dbus.gitops.source import GitSettings, GitSource
from op_dbus.ledger import Ledger
from op_dbus.plugin import Plugin, Settings
from tests.gitops.fleet import Fleet, state
from tests.unit.agent.test_loop import Store, until


class GitHarness:
    def __init__(self, tmp_path: Path, fleet: Fleet, store: Store, mode: str = "enforce", interval: float = 0.2,
                 url: str | None = None) -> None:
        self.store = store
        self.state_dir = tmp_path / "state"
        self.stream = io.StringIO()

        def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
            return {"mem": store}

        src = GitSource(GitSettings(url or fleet.url, allowed_signers=fleet.allowed, interval=interval,
                                    hostname="web-1"), self.state_dir, load=load)
        self.agent = Agent(AgentConfig(Path("git"), mode=mode, debounce=0.01, source=src),
                           Settings(state_dir=self.state_dir), ledger=lambda: Ledger.open(self.state_dir), load=load,
                           logger=setup(self.stream, logging.DEBUG), notifier=Notifier({}))
        self.task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> GitHarness:
        self.task = asyncio.create_task(self.agent.run())
        await until(lambda: self.agent.ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.agent.inbox.put_nowait(("stop", "test"))
        assert self.task is not None
        assert await asyncio.wait_for(self.task, 10) == 0

    def blocks(self) -> list[Any]:
        with Ledger.open(self.state_dir) as log:
            return [log.get(h.index) for h in log.headers()]

    def kinds(self) -> list[str]:
        return [b.header.kind for b in self.blocks()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in (json.loads(x) for x in self.stream.getvalue().splitlines()) if e["event"] == name]


async def test_enforce_applies_signed_commits_and_refuses_the_rest(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fleet = Fleet(tmp_path / "fleet")
    fleet.write("hosts/web-1.json", state({"x": 1, "y": 2}))
    first = fleet.commit("first", fleet.ops)
    store = Store({"x": 0, "y": 2})
    async with GitHarness(tmp_path, fleet, store) as h:
        await until(lambda: store.values["x"] == 1, 20)
        await until(lambda: h.kinds()[-1:] == ["apply"], 20)
        apply = h.blocks()[-1]
        assert apply.header.meta["git"]["commit"] == first
        assert apply.header.meta["git"]["signer"] == "ops@example.org"
        assert apply.header.meta["git"]["paths"] == ["hosts/web-1.json"]
        # a new signed commit arrives and is applied
        fleet.write("hosts/web-1.json", state({"x": 5, "y": 2}))
        second = fleet.commit("second", fleet.ops)
        await until(lambda: store.values["x"] == 5, 20)
        await until(lambda: h.blocks()[-1].header.meta.get("git", {}).get("commit") == second, 20)
        # unsigned: a refused block, nothing applied
        fleet.write("hosts/web-1.json", state({"x": 666, "y": 2}))
        unsigned = fleet.commit("unsigned")
        await until(lambda: "refused" in h.kinds(), 20)
        refused = h.blocks()[-1]
        assert refused.header.kind == "refused" and refused.header.meta["git"]["commit"] == unsigned
        assert "not signed" in refused.header.meta["reason"] and unsigned[:12] in refused.header.summary
        assert h.agent.status()["git"]["kept"] == second
        # drift is still repaired to the kept commit's state
        store.change("x", 7)
        await until(lambda: store.values["x"] == 5, 20)
        # a force-push of a signed commit that rewinds history: refused too
        fleet.reset_hard(first)
        fleet.write("hosts/web-1.json", state({"x": 9, "y": 2}))
        rewound = fleet.commit("rewound", fleet.ops, force=True)
        await until(lambda: any(b.header.kind == "refused" and b.header.meta["git"]["commit"] == rewound
                                for b in h.blocks()), 20)
        assert "force-pushed" in h.blocks()[-1].header.meta["reason"]
        await asyncio.sleep(0.5)
        assert store.values["x"] == 5 and h.agent.status()["git"]["kept"] == second
        assert h.events("git-refused") and h.agent.status()["counts"]["git_refused"] == 2
        # what `op-dbus status` shows
        from op_dbus.cli.main import main

        with pytest.raises(SystemExit):  # its exit code says whether another process runs the agent: not here
            main(["--state-dir", str(h.state_dir), "status"])
        text = capsys.readouterr().out
        assert f"git commit      {second[:12]}" in text and "git refused" in text and "force-pushed" in text, text
        assert "state file      " + fleet.url in text


async def test_shadow_records_what_a_commit_would_change(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    fleet.write("hosts/web-1.json", state({"x": 3, "y": 2}))
    commit = fleet.commit("first", fleet.ops)
    store = Store({"x": 1, "y": 2})
    async with GitHarness(tmp_path, fleet, store, mode="shadow") as h:
        await until(lambda: "drift" in h.kinds(), 20)
        drift = h.blocks()[-1]
        assert drift.header.meta["git"]["commit"] == commit
        assert drift.changes == [{"plugin": "mem", "object": "x", "action": "drift", "repair": "set",
                                  "before": 3, "after": 1}]
        assert store.applied == []


async def test_an_unreachable_remote_is_a_gap_and_sighup_fetches_now(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    fleet.write("hosts/web-1.json", state({"x": 1, "y": 2}))
    fleet.commit("first", fleet.ops)
    store = Store({"x": 0, "y": 2})
    async with GitHarness(tmp_path, fleet, store, interval=3600) as h:
        await until(lambda: store.values["x"] == 1, 20)
        moved = fleet.remote.with_name("moved.git")
        fleet.remote.rename(moved)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: h.agent.status()["git"]["gap"] is not None, 20)
        assert h.events("git-gap") and h.agent.status()["counts"]["git_fetch_failures"] >= 1
        kinds = h.kinds()
        moved.rename(fleet.remote)
        fleet.write("hosts/web-1.json", state({"x": 2, "y": 2}))
        fleet.commit("second", fleet.ops)
        os.kill(os.getpid(), signal.SIGHUP)  # the interval is an hour: only SIGHUP fetches
        await until(lambda: store.values["x"] == 2, 20)
        assert h.events("git-reachable") and h.agent.status()["git"]["gap"] is None
        assert "refused" not in kinds


async def test_a_closed_wave_holds_a_commit_back(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "fleet")
    fleet.write("hosts/web-1.json", state({"x": 1, "y": 2}))
    first = fleet.commit("first", fleet.ops)
    store = Store({"x": 0, "y": 2})
    async with GitHarness(tmp_path, fleet, store, interval=0.1) as h:
        await until(lambda: store.values["x"] == 1, 20)
        # web-1 is in the second wave: it opens an hour after the commit
        fleet.write("rollout.yaml", "waves: [{hosts: [canary-1]}, {percent: 100}]\nwait: 3600\n")
        fleet.write("hosts/web-1.json", state({"x": 2, "y": 2}))
        held = fleet.commit("second", fleet.ops)
        await until(lambda: (h.agent.status()["git"]["waiting"] or {}).get("commit") == held, 20)
        await asyncio.sleep(1.0)  # ten more polls
        assert store.values["x"] == 1 and h.agent.status()["git"]["kept"] == first
        (waiting,) = h.events("git-waiting")  # said once, not once per poll
        assert "wave 1 opens" in waiting["msg"]
