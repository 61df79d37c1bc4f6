"""The GitOps agent's source asks a real collector (on loopback) whether its wave is open: a commit waits while
the collector keeps the wave closed, is taken once the wave opens, and the time gate decides again when the
collector is down. A collector that refuses the host holds the commit."""

from __future__ import annotations

import io
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from op_dbus.fleet.client import Collector
from op_dbus.gitops.rollout import CollectorGate
from op_dbus.gitops.source import GitSettings, GitSource
from op_dbus.ledger import Ledger
from tests.fleet.test_collector_http import grow, op_dbus, start_collector
from tests.gitops.fleet import Fleet, state
from tests.gitops.test_source import load, take


def _applied(log: Ledger, commit: str) -> None:
    log.append("apply", [{"plugin": "mem", "action": "set", "object": "x"}], {"n": len(log)},
               actor={"user": "agent"}, summary=f"apply {commit}", meta={"commit": commit})


def test_the_collector_holds_a_commit_until_its_wave_opens_and_the_time_gate_takes_over_when_it_is_down(
        tmp_path: Path) -> None:
    d = tmp_path / "collector"
    d.mkdir(mode=0o700)
    db_url = f"sqlite:///{d}/fleet.db"
    fleet = Fleet(tmp_path / "fleet")
    host_dir = tmp_path / "web-1"
    with ExitStack() as stack:
        logs = {name: stack.enter_context(Ledger.open(tmp_path / name)) for name in ("canary", "web-1")}
        for name, log in logs.items():
            grow(log, 1)
            assert op_dbus("collector", "enroll", name, "--key", str(log.public_key_path), "--db", db_url).returncode == 0
        stray = stack.enter_context(Ledger.open(tmp_path / "stray"))  # a host the collector never enrolled
        collector = stack.enter_context(ExitStack())
        url = start_collector(collector, db_url, d / "witness.key")
        vkey = op_dbus("collector", "key", "--db", db_url, "--key-file", str(d / "witness.key")).stdout.strip()
        target = Collector.parse(url, vkey)
        operator = op_dbus("collector", "api-token", "create", "--role", "operator", "--db", db_url).stdout.strip()

        gate = CollectorGate(lambda: Ledger.open(host_dir), [target])
        src = GitSource(GitSettings(fleet.url, allowed_signers=fleet.allowed, hostname="web-1"), host_dir,
                        load=load, gate=gate)
        src.open()

        # No rollout.yaml: by the clock alone this commit would be applied at once; the collector holds it.
        fleet.write("hosts/web-1.json", state({"x": 1}))
        first = fleet.commit("first", fleet.ops)
        r = op_dbus("-o", "json", "fleet", "rollout", "start", first, "--wave", "canary", "--wave", "100%",
                    "--collector", url, "--token", operator)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["waves"] == [["canary"], ["web-1"]]
        out = take(src)
        assert out.kind == "waiting", out
        assert "wave 1 is not open" in out.reason and src.status()["waiting"]["commit"] == first
        assert take(src).kind == "waiting"  # asked again on every poll, still closed
        # `op-dbus run --git ... --collector URL=VKEY` builds the same gate, signing with the state dir's log
        from op_dbus.cli.common import Options
        from op_dbus.cli.gitops import git_source

        cli = git_source(Options(None, str(host_dir), 30.0, "text"), fleet.url, "main", src.settings.template,
                         str(fleet.allowed), 60.0, False, None, "web-1", collectors=[target])
        assert isinstance(cli.gate, CollectorGate)
        asked = cli.gate.decide(first, 0, None, "web-1")
        assert not asked.open and f"collector {url}: rollout running, wave 1" in asked.reason, asked

        # The canary reports the commit applied: the collector opens the next wave, and the host takes it.
        _applied(logs["canary"], first)
        r = op_dbus("report", "--collector", f"{url}={vkey}", state_dir=logs["canary"].state_dir)
        assert r.returncode == 0, r.stdout + r.stderr
        out = take(src)
        assert out.kind == "new" and out.commit == first, out
        assert "wave 1 is open" in out.reason and out.meta["git"]["commit"] == first

        # A collector that answers but does not know the asking host holds the commit.
        refused = CollectorGate(lambda: Ledger.open(stray.state_dir), [target])
        decision = refused.decide(first, 0, None, "stray")
        assert not decision.open and "refused" in decision.reason and "404" in decision.reason

        # The collector goes down: a gap, and the time gate of the repository's plan decides.
        collector.close()
        fleet.write("rollout.yaml", "waves:\n  - hosts: [canary]\n  - percent: 100\nwait: 3600\n")
        fleet.write("hosts/web-1.json", state({"x": 2}))
        second = fleet.commit("second", fleet.ops)
        out = take(src)
        assert out.kind == "waiting" and "collector unreachable" in out.reason and "time gate" in out.reason, out
        fleet.write("rollout.yaml", "waves:\n  - hosts: [canary]\n  - percent: 100\nwait: 0\n")
        third = fleet.commit("third", fleet.ops)
        out = take(src)
        assert out.kind == "new" and out.commit == third and "collector unreachable" in out.reason, out
        assert second != third


async def test_the_agent_applies_a_commit_only_once_the_collector_opens_its_wave(tmp_path: Path) -> None:
    import asyncio
    import logging

    from op_dbus.agent import Agent, AgentConfig
    from op_dbus.agent.logs import setup
    from op_dbus.agent.notify import Notifier
    from op_dbus.plugin import Plugin, Settings
    from tests.unit.agent.test_loop import Store, until

    d = tmp_path / "collector"
    d.mkdir(mode=0o700)
    db_url = f"sqlite:///{d}/fleet.db"
    fleet = Fleet(tmp_path / "fleet")
    state_dir = tmp_path / "web-1"
    store = Store({"x": 0})
    with ExitStack() as stack:
        canary = stack.enter_context(Ledger.open(tmp_path / "canary"))
        host = stack.enter_context(Ledger.open(state_dir))
        for name, log in (("canary", canary), ("web-1", host)):
            grow(log, 1)
            assert op_dbus("collector", "enroll", name, "--key", str(log.public_key_path), "--db", db_url).returncode == 0
        url = start_collector(stack, db_url, d / "witness.key")
        vkey = op_dbus("collector", "key", "--db", db_url, "--key-file", str(d / "witness.key")).stdout.strip()
        operator = op_dbus("collector", "api-token", "create", "--role", "operator", "--db", db_url).stdout.strip()
        fleet.write("hosts/web-1.json", state({"x": 1}))
        commit = fleet.commit("first", fleet.ops)
        r = op_dbus("fleet", "rollout", "start", commit, "--wave", "canary", "--wave", "100%", "--collector", url,
                    "--token", operator)
        assert r.returncode == 0, r.stderr

        def plugins(names: list[str] | None) -> dict[str, Plugin[Any]]:
            return {"mem": store}

        src = GitSource(GitSettings(fleet.url, allowed_signers=fleet.allowed, interval=0.2, hostname="web-1"),
                        state_dir, load=plugins, gate=CollectorGate(lambda: Ledger.open(state_dir),
                                                                    [Collector.parse(url, vkey)]))
        agent = Agent(AgentConfig(Path("git"), mode="enforce", debounce=0.01, source=src),
                      Settings(state_dir=state_dir), ledger=lambda: Ledger.open(state_dir), load=plugins,
                      logger=setup(io.StringIO(), logging.DEBUG), notifier=Notifier({}))
        task = asyncio.create_task(agent.run())
        try:
            await until(lambda: (agent.status()["git"]["waiting"] or {}).get("commit") == commit, 30)
            await asyncio.sleep(1.0)  # several polls, each asking the collector
            assert store.values["x"] == 0 and agent.status()["git"]["kept"] is None
            _applied(canary, commit)
            r = await asyncio.to_thread(op_dbus, "report", "--collector", f"{url}={vkey}",
                                        state_dir=canary.state_dir)
            assert r.returncode == 0, r.stdout + r.stderr
            await until(lambda: store.values["x"] == 1, 30)
            assert agent.status()["git"]["kept"] == commit
        finally:
            agent.inbox.put_nowait(("stop", "test"))
            assert await asyncio.wait_for(task, 20) == 0
