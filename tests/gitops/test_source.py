"""The git source against real git (file:// and `git daemon` on loopback): trust (signatures, ancestry, files),
composition, gaps, and the bad inputs of a fleet repository. Each refusal names the commit and the reason."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from op_dbus.errors import InvalidInput
from op_dbus.gitops.rollout import Decision, Rollout
from op_dbus.gitops.source import GitSettings, GitSource
from op_dbus.plugin import Plugin
from tests.gitops.fleet import Daemon, Fleet, state
from tests.unit.agent.test_loop import Store


def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
    return {"mem": Store({})}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "fleet")


def source(fleet: Fleet, tmp_path: Path, url: str | None = None, signed: bool = True, **kw: Any) -> GitSource:
    gate = kw.pop("gate", None)
    settings = GitSettings(url or fleet.url, allowed_signers=fleet.allowed if signed else None,
                           hostname=kw.pop("hostname", "web-1"), **kw)
    src = GitSource(settings, tmp_path / "state", load=load, gate=gate)
    src.open()
    return src


def take(src: GitSource) -> Any:
    out = src.poll()
    if out.kind == "new":
        src.keep(out)
    return out


def test_a_signed_commit_is_taken_and_names_commit_signer_and_path(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("hosts/web-1.json", state())
    commit = fleet.commit("first", fleet.ops)
    src = source(fleet, tmp_path)
    out = take(src)
    assert out.kind == "new" and out.commit == commit
    assert out.document is not None and out.document.sections["mem"].values == {"x": 1, "y": 2}  # type: ignore[attr-defined]
    git = out.meta["git"]
    assert git["commit"] == commit and git["signer"] == "ops@example.org" and git["paths"] == ["hosts/web-1.json"]
    assert git["key"].startswith("SHA256:")
    assert src.poll().kind == "unchanged"
    # the clone lives in the state directory, 0700, and remembers the kept commit across restarts
    assert (tmp_path / "state/git/repo.git/HEAD").exists()
    assert (tmp_path / "state/git").stat().st_mode & 0o777 == 0o700
    again = GitSource(src.settings, tmp_path / "state", load=load)
    doc = again.open()
    assert doc is not None and again.kept == commit and again.kept_meta["git"]["signer"] == "ops@example.org"


@pytest.mark.parametrize("key", [None, "intruder"])
def test_unsigned_or_not_allowed_commits_are_refused_and_the_kept_one_stays(fleet: Fleet, tmp_path: Path,
                                                                            key: str | None) -> None:
    fleet.write("hosts/web-1.json", state())
    good = fleet.commit("first", fleet.ops)
    src = source(fleet, tmp_path)
    assert take(src).kind == "new"
    fleet.write("hosts/web-1.json", state({"x": 666}))
    bad = fleet.commit("sneaky", fleet.intruder if key else None)
    out = take(src)
    assert out.kind == "refused" and out.commit == bad
    word = "not in the allowed signers" if key else "not signed"
    assert word in out.reason and bad[:12] in out.reason, out.reason
    assert out.meta["git"]["commit"] == bad and out.meta["reason"] == out.reason
    assert src.kept == good
    assert src.poll().kind == "unchanged"  # reported once
    # the next good commit on top is taken (it descends from the kept one)
    fleet.write("hosts/web-1.json", state({"x": 2}))
    fleet.commit("fix", fleet.ops)
    assert take(src).kind == "new"


def test_a_force_push_is_refused_unless_rewind_is_allowed(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("hosts/web-1.json", state())
    first = fleet.commit("first", fleet.ops)
    fleet.write("hosts/web-1.json", state({"x": 2}))
    fleet.commit("second", fleet.ops)
    src = source(fleet, tmp_path)
    assert take(src).kind == "new"
    fleet.reset_hard(first)
    fleet.write("hosts/web-1.json", state({"x": 3}))
    rewritten = fleet.commit("rewritten", fleet.ops, force=True)
    out = take(src)
    assert out.kind == "refused" and "force-pushed" in out.reason and "--git-allow-rewind" in out.reason
    rewind = source(fleet, tmp_path / "other", allow_rewind=True)
    rewind.kept = src.kept
    assert take(rewind).commit == rewritten and rewind.kept == rewritten


def test_invalid_files_refuse_the_whole_commit_with_path_exact_messages(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("base.json", {"version": 1, "plugins": {"mem": {"values": {"x": 1}}}})
    fleet.write("hosts/web-1.json", state())
    fleet.commit("first", fleet.ops)
    src = source(fleet, tmp_path, template="base.json,hosts/{hostname}.json")
    assert take(src).kind == "new"
    fleet.write("hosts/web-1.json", {"plugins": {"mem": {"values": {"x": "one"}, "bogus": 1}}})
    fleet.commit("bad", fleet.ops)
    out = take(src)
    assert out.kind == "refused"
    assert 'plugins.mem.values.x: expected integer, got string' in out.reason, out.reason
    assert "plugins.mem.bogus: unknown key" in out.reason
    # a file the host reads that is missing
    fleet.write("hosts/web-1.json", state())
    (fleet.work / "base.json").unlink()
    fleet.commit("no base", fleet.ops)
    out = take(src)
    assert out.kind == "refused" and "base.json" in out.reason and "no such file" in out.reason


def test_a_host_without_its_file_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("hosts/web-2.json", state())
    fleet.commit("first", fleet.ops)
    out = take(source(fleet, tmp_path))
    assert out.kind == "refused" and "hosts/web-1.json: 1 problem(s)" in out.reason and "no such file" in out.reason


def test_a_symlink_pointing_outside_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "outside.json").write_text(json.dumps(state()))
    (fleet.work / "hosts").mkdir(parents=True)
    (fleet.work / "hosts/web-1.json").symlink_to(tmp_path / "outside.json")
    fleet.commit("link", fleet.ops)
    out = take(source(fleet, tmp_path))
    assert out.kind == "refused" and "symlink" in out.reason and "outside the repository" in out.reason
    (fleet.work / "hosts/web-1.json").unlink()
    (fleet.work / "hosts/web-1.json").symlink_to("../../../etc/passwd")
    fleet.commit("relative link", fleet.ops)
    out = take(source(fleet, tmp_path / "b"))
    assert out.kind == "refused" and "outside the repository" in out.reason


def test_a_50_mb_file_and_10000_files_are_bounded(fleet: Fleet, tmp_path: Path) -> None:
    for i in range(10_000):
        fleet.write(f"hosts/host-{i}.json", state({"x": i}))
    fleet.write("hosts/web-1.json", "{" + " " * (50 * 1024 * 1024) + "}")
    fleet.commit("huge", fleet.ops)
    import resource

    src = source(fleet, tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    out = take(src)
    elapsed = time.monotonic() - started
    assert out.kind == "refused" and "52428802 bytes; the limit" in out.reason, out.reason
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 40, f"reading the commit grew this process by {grown_mb:.0f} MB"
    assert elapsed < 60, elapsed  # generous: the fetch of 10,000 files dominates
    # the same host among 10,000 others, its file fine: taken
    fleet.write("hosts/web-1.json", state())
    fleet.commit("fixed", fleet.ops)
    assert take(src).kind == "new"


def test_an_unreachable_remote_is_a_gap_and_keeps_the_commit(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("hosts/web-1.json", state())
    good = fleet.commit("first", fleet.ops)
    daemon = Daemon(fleet.root)
    try:
        src = source(fleet, tmp_path, url=daemon.url("fleet.git"))
        assert take(src).commit == good  # over git:// on loopback
    finally:
        daemon.stop()
    out = src.poll()
    assert out.kind == "gap" and out.commit == good and "cannot fetch main from git://127.0.0.1" in out.reason
    assert src.status()["gap"]["attempts"] == 1 and src.kept == good
    assert src.poll().kind == "gap" and src.status()["gap"]["attempts"] == 2
    src.url = fleet.url  # the remote is back (here: the same repository by another path)
    out = src.poll()
    assert out.kind == "unchanged" and out.meta["gap_closed"]["attempts"] == 2 and src.status()["gap"] is None


def test_composition_and_groups(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("base.json", {"version": 1, "plugins": {"mem": {"values": {"x": 1, "y": 2, "z": 3}}}})
    fleet.write("groups/web.yaml", "plugins:\n  mem:\n    values:\n      y: 20\n")
    fleet.write("hosts/web-1.json", {"plugins": {"mem": {"values": {"z": None, "w": 4}}}})
    fleet.commit("layers", fleet.ops)
    src = source(fleet, tmp_path, template="base.json,groups/{group}.yaml,hosts/{hostname}.json", group="web")
    out = take(src)
    assert out.kind == "new", out.reason
    assert out.document.sections["mem"].values == {"x": 1, "y": 20, "w": 4}  # type: ignore[union-attr]
    assert out.meta["git"]["paths"] == ["base.json", "groups/web.yaml", "hosts/web-1.json"]
    with pytest.raises(InvalidInput, match="no group"):
        source(fleet, tmp_path / "b", template="groups/{group}.yaml")


def test_bad_urls_and_templates_are_refused_before_anything_runs(fleet: Fleet, tmp_path: Path) -> None:
    for url, word in [("ext::sh -c touch% /tmp/pwned", "not allowed"), ("-uhoh", "not a URL"),
                      ("fd::3", "not allowed"), ("plain-word", "expected")]:
        with pytest.raises(InvalidInput, match=word):
            source(fleet, tmp_path, url=url)
    for template, word in [("../etc/x.json", "inside the repository"), ("/etc/x.json", "inside"),
                           ("hosts/{user}.json", "unknown variable")]:
        with pytest.raises(InvalidInput, match=word):
            source(fleet, tmp_path, template=template)
    with pytest.raises(InvalidInput, match="host name"):
        source(fleet, tmp_path, hostname="../x")
    fleet.allowed.chmod(0o666)
    with pytest.raises(InvalidInput, match="writable by group or others"):
        source(fleet, tmp_path)


class Gate:
    def __init__(self) -> None:
        self.open = False
        self.asked: list[tuple[str, Rollout | None, str]] = []

    def decide(self, commit: str, commit_time: int, plan: Rollout | None, host: str) -> Decision:
        self.asked.append((commit, plan, host))
        return Decision(self.open, 1, None, "open" if self.open else "wave 1 waits for the collector")


def test_a_closed_wave_waits_and_a_gate_can_open_it_later(fleet: Fleet, tmp_path: Path) -> None:
    fleet.write("rollout.yaml", "waves:\n  - hosts: [canary-1]\n  - percent: 100\nwait: 3600\n")
    fleet.write("hosts/web-1.json", state())
    commit = fleet.commit("first", fleet.ops)
    gate = Gate()
    src = source(fleet, tmp_path, gate=gate)
    out = take(src)
    assert out.kind == "waiting" and src.status()["waiting"]["commit"] == commit
    assert gate.asked[0][1] is not None and gate.asked[0][2] == "web-1"
    gate.open = True
    out = take(src)
    assert out.kind == "new" and out.meta["git"]["wave"] == 1
