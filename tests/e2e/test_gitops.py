"""GitOps end to end: the agent, installed from wheels in the lab, follows a bare repository in the lab that the
host pushes to, and applies each signed commit to the lab's real systemd. Unsigned commits, a key not allowed, a
force-push, an invalid file and a symlink leaving the repository are each a `refused` block; the system stays."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import systemctl
from tests.gitops.fleet import Fleet, git

REPO = "/srv/fleet.git"


def doc(worker: str) -> dict[str, Any]:
    return {"version": 1, "plugins": {"systemd": {"units": {"app-worker.service": {"active_state": worker}}}}}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, lab: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            journal = lab.run(["journalctl", "-u", "op-dbus-git", "--no-pager", "-o", "cat", "-n", "30"],
                              check=False).stdout if lab is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{journal}")
        time.sleep(0.2)


class Host:
    def __init__(self, lab: Any, exe: str) -> None:
        self.lab = lab
        self.exe = exe

    def op(self, *args: str) -> Any:
        return self.lab.run([self.exe, *args], check=False)

    def blocks(self) -> list[dict[str, Any]]:
        r = self.op("-o", "json", "blockchain", "list")
        return json.loads(r.stdout) if r.returncode == 0 else []

    def block(self, index: int) -> dict[str, Any]:
        return json.loads(self.op("-o", "json", "blockchain", "show", str(index)).stdout)  # type: ignore[no-any-return]

    def find(self, kind: str, commit: str) -> dict[str, Any] | None:
        for b in reversed(self.blocks()):
            if b["kind"] == kind:
                full = self.block(b["index"])
                if (full.get("meta") or {}).get("git", {}).get("commit") == commit:
                    return full
        return None

    def worker(self) -> str:
        return systemctl(self.lab, "is-active", "app-worker.service")[0]


@pytest.fixture(scope="module")
def fleet(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    f = Fleet(tmp_path_factory.mktemp("gitops") / "fleet")
    lab.run(["sh", "-c", f"rm -rf {REPO} && git init -q --bare -b main {REPO}"])
    # The host pushes with git's own pack protocol into the lab's repository: git's ssh transport with a "ssh"
    # that enters the lab machine instead of dialing (the lab has no network route to the host).
    enter = f.root / "enter-lab"
    enter.write_text(f'#!/bin/sh\nfor last; do :; done\nexec nsenter -t {lab.leader} -a env -i '
                     f'PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c "$last"\n')
    enter.chmod(0o755)
    f.push_env = {"GIT_SSH_COMMAND": str(enter), "GIT_SSH_VARIANT": "simple"}
    git(f.work, "remote", "set-url", "origin", f"lab:{REPO}")
    (lab.root / "etc/op-dbus").mkdir(parents=True, exist_ok=True)
    shutil.copy(f.allowed, lab.root / "etc/op-dbus/allowed_signers")
    return f


@pytest.fixture(scope="module")
def host(lab: Any, fleet: Fleet) -> Any:
    exe = lab.install_op_dbus()
    lab.run(["systemctl", "stop", "app-worker.service"], check=False)
    fleet.write("hosts/lab.json", doc("inactive"))
    first = fleet.commit("start", fleet.ops)
    lab.run(["systemd-run", "--unit=op-dbus-git", "-p", "Type=notify", "-p", "NotifyAccess=main", exe, "run",
             "--git", f"file://{REPO}", "--git-host", "lab", "--git-allowed-signers", "/etc/op-dbus/allowed_signers",
             "--git-interval", "1", "--mode", "enforce"], timeout=120)
    h = Host(lab, exe)
    wait_for("the first commit to be kept", lambda: h.op("-o", "json", "status").returncode == 0
             and json.loads(h.op("-o", "json", "status").stdout).get("git", {}).get("kept") == first, lab=lab)
    yield h
    lab.run(["systemctl", "stop", "op-dbus-git.service"], check=False)


def test_a_signed_commit_is_applied_to_systemd_and_recorded(host: Host, fleet: Fleet) -> None:
    fleet.write("hosts/lab.json", doc("active"))
    commit = fleet.commit("start the worker", fleet.ops)
    block = wait_for("the apply block of the commit", lambda: host.find("apply", commit))
    assert host.worker() == "active"
    meta = block["meta"]["git"]
    assert meta["signer"] == "ops@example.org" and meta["paths"] == ["hosts/lab.json"] and meta["ref"] == "main"
    assert any(c["object"] == "app-worker.service" for c in block["changes"])


@pytest.mark.parametrize("case", ["unsigned", "intruder", "invalid", "symlink", "force-push"])
def test_bad_commits_are_refused_recorded_and_change_nothing(host: Host, fleet: Fleet, case: str,
                                                             tmp_path: Path) -> None:
    assert host.worker() == "active"
    kept = json.loads(host.op("-o", "json", "status").stdout)["git"]["kept"]
    force = False
    key: Path | None = fleet.ops
    if case == "unsigned":
        fleet.write("hosts/lab.json", doc("inactive"))
        key, why = None, "not signed"
    elif case == "intruder":
        fleet.write("hosts/lab.json", doc("inactive"))
        key, why = fleet.intruder, "not in the allowed signers"
    elif case == "invalid":
        fleet.write("hosts/lab.json", {"version": 1, "plugins": {"systemd": {"units": {
            "app-worker.service": {"active_state": "stopped"}}}}})
        why = 'plugins.systemd.units["app-worker.service"].active_state: expected one of'
    elif case == "symlink":
        (fleet.work / "hosts/lab.json").unlink()
        (fleet.work / "hosts/lab.json").symlink_to("/etc/shadow")
        why = "outside the repository"
    else:
        fleet.reset_hard(kept)
        git(fleet.work, "reset", "-q", "--soft", "HEAD~1")
        fleet.write("hosts/lab.json", doc("inactive"))
        force, why = True, "force-pushed"
    commit = fleet.commit(f"bad: {case}", key, force=force)
    block = wait_for("the refused block", lambda: host.find("refused", commit))
    assert why in block["meta"]["reason"], block["meta"]["reason"]
    assert commit[:12] in block["summary"]
    time.sleep(2)  # two more polls: nothing applied
    assert host.worker() == "active"
    assert json.loads(host.op("-o", "json", "status").stdout)["git"]["kept"] == kept
    # put the repository back on the kept commit's content for the next case
    git(fleet.work, "reset", "-q", "--hard", kept)
    if case == "force-push":
        return
    fleet.write("hosts/lab.json", doc("active"))
    fixed = fleet.commit(f"after {case}", fleet.ops, force=True)
    wait_for("the next good commit to be kept", lambda: json.loads(host.op("-o", "json", "status").stdout)
             ["git"]["kept"] == fixed)
