"""`op-dbus check` and `op-dbus render` as a CI system runs them: the real command, offline, as any user;
`path:line: message` with lines from the JSON/YAML source; a fleet repository composed for every host."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from op_dbus.gitops.check import _json_offsets, check_paths, split_path
from op_dbus.gitops.compose import merge
from tests.gitops.fleet import git

TEMPLATE = "base.json,groups/{group}.yaml,hosts/{hostname}.json"


def op(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "op_dbus", *args], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=120)


def repo(root: Path) -> Path:
    (root / "hosts").mkdir(parents=True)
    (root / "groups").mkdir()
    (root / "base.json").write_text(json.dumps({"version": 1, "plugins": {"systemd": {"units": {
        "ssh.service": {"active_state": "active"}}}}}, indent=2) + "\n")
    (root / "groups/web.yaml").write_text("plugins:\n  systemd:\n    units:\n      nginx.service:\n"
                                          "        active_state: active\n        enabled: true\n")
    (root / "hosts/web-1.json").write_text(json.dumps({"plugins": {"systemd": {"units": {"ssh.service": None}}}}))
    (root / "hosts/web-2.json").write_text("{}")
    return root


def test_merge_rules() -> None:
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "keep": True}
    top = {"a": {"b": 2, "c": [3], "d": None, "f": {"g": None}}}
    assert merge(base, top) == {"a": {"b": 2, "c": [3], "f": {}}, "keep": True}
    assert base["a"]["d"] == {"e": 1}  # inputs untouched


def test_json_locations_and_paths() -> None:
    text = '{\n  "plugins": {\n    "systemd": {\n      "units": {\n        "a.service": {"enabled": "yes"}\n}}}}'
    offsets = _json_offsets(text)
    path = split_path('plugins.systemd.units["a.service"].enabled')
    assert path == ("plugins", "systemd", "units", "a.service", "enabled")
    assert text[:offsets[path]].count("\n") + 1 == 5
    assert split_path("probes[0].tcp") == ("probes", 0, "tcp")


def test_a_valid_fleet_repository_passes(tmp_path: Path) -> None:
    r = op("check", "--git-path", TEMPLATE, str(repo(tmp_path / "fleet")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: 0 file(s), 2 host(s) valid" in r.stderr


def test_problems_are_path_line_message_from_the_file_that_set_the_value(tmp_path: Path) -> None:
    root = repo(tmp_path / "fleet")
    (root / "groups/web.yaml").write_text("plugins:\n  systemd:\n    units:\n      nginx.service:\n"
                                          "        active_state: running\n")
    (root / "hosts/web-2.json").write_text('{\n  "plugins": {\n    "systemd": {\n      "units": {\n'
                                           '        "cron.service": {"active_state": "active", "bogus": 1}\n'
                                           '      }\n    }\n  }\n}\n')
    (root / "hosts/web-3.json").write_text('{\n  "plugins": {,\n}')
    r = op("check", "--git-path", TEMPLATE, str(root))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f'{root}/groups/web.yaml:5: plugins.systemd.units["nginx.service"].active_state: expected one of ' \
           "'active' or 'inactive', got \"running\" (host web-1, group web)" in lines, lines
    assert f'{root}/hosts/web-2.json:5: plugins.systemd.units["cron.service"].bogus: unknown key ' \
           "(host web-2, group web)" in lines, lines
    assert any(x.startswith(f"{root}/hosts/web-3.json:2: invalid JSON at line 2") for x in lines), lines
    assert len(lines) == 3  # the group's problem is shown once, not once per host
    j = json.loads(op("check", "-o", "json", "--git-path", TEMPLATE, str(root)).stdout)
    assert not j["ok"] and j["hosts"] == 3
    assert {"file": f"{root}/hosts/web-2.json", "line": 5, "host": "web-2, group web",
            "message": 'plugins.systemd.units["cron.service"].bogus: unknown key'} in j["problems"]


def test_single_files_and_directories_of_state_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nplugins:\n  systemd:\n    units:\n      a.service:\n        enabled: true\n")
    bad = tmp_path / "more/bad.yaml"
    bad.parent.mkdir()
    bad.write_text("version: 1\nplugins:\n  systemd:\n    units:\n      a.service:\n        enabled: maybe\n")
    r = op("check", str(good))
    assert r.returncode == 0, r.stderr
    r = op("check", str(tmp_path))
    assert r.returncode == 2
    assert r.stdout.strip() == f'{bad}:6: plugins.systemd.units["a.service"].enabled: expected boolean, got string'
    assert op("check", str(tmp_path / "missing.json")).returncode == 2


def test_missing_host_layer_and_symlinks_leaving_the_repository(tmp_path: Path) -> None:
    root = repo(tmp_path / "fleet")
    (tmp_path / "secret.json").write_text("{}")
    (root / "hosts/evil.json").symlink_to(tmp_path / "secret.json")
    (root / "groups/web.yaml").unlink()
    (root / "groups/db.yaml").write_text("{}\n")
    r = op("check", "--git-path", TEMPLATE, str(root))
    assert r.returncode == 2
    assert "hosts/evil.json: a symlink pointing outside the repository" in r.stdout, r.stdout


def test_render_prints_the_merged_document(tmp_path: Path) -> None:
    root = repo(tmp_path / "fleet")
    r = op("render", "--git-path", TEMPLATE, "--host", "web-1", "--group", "web", str(root))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"version": 1, "plugins": {"systemd": {"units": {
        "nginx.service": {"active_state": "active", "enabled": True}}}}}
    r = op("render", "--git-path", TEMPLATE, "--host", "web-1", str(root))
    assert r.returncode == 2 and "no group" in r.stderr


def test_render_diff_shows_per_host_what_a_change_changes(tmp_path: Path) -> None:
    root = repo(tmp_path / "fleet")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    (root / "groups/web.yaml").write_text("plugins:\n  systemd:\n    units:\n      nginx.service:\n"
                                          "        active_state: inactive\n")
    git(root, "commit", "-q", "-am", "two")
    r = op("render", "--git-path", TEMPLATE, "--diff", "HEAD~1", "HEAD", cwd=root)
    assert r.returncode == 3, r.stderr
    assert r.stdout.splitlines() == [
        "web-1 (group web):",
        '  plugins.systemd.units["nginx.service"].active_state: "active" -> "inactive"',
        '  plugins.systemd.units["nginx.service"].enabled: true -> (absent)',
        "web-2 (group web):",
        '  plugins.systemd.units["nginx.service"].active_state: "active" -> "inactive"',
        '  plugins.systemd.units["nginx.service"].enabled: true -> (absent)',
    ]
    j: dict[str, Any] = json.loads(op("-o", "json", "render", "--git-path", TEMPLATE, "--diff", "HEAD~1", "HEAD",
                                      str(root)).stdout)
    assert [h["host"] for h in j["hosts"]] == ["web-1", "web-2"]
    assert op("render", "--git-path", TEMPLATE, "--diff", "HEAD", "HEAD", str(root)).returncode == 0


@pytest.mark.parametrize("hosts", [1000])
def test_a_repository_of_1000_hosts_is_checked_quickly(tmp_path: Path, hosts: int) -> None:
    root = repo(tmp_path / "fleet")
    for i in range(hosts):
        (root / f"hosts/host-{i}.json").write_text(json.dumps({"plugins": {"systemd": {"units": {
            f"app-{i}.service": {"active_state": "active", "enabled": True}}}}}))
    started = time.monotonic()
    findings, counts = check_paths([root], TEMPLATE)
    elapsed = time.monotonic() - started
    assert findings == [] and counts["hosts"] == hosts + 2
    assert elapsed < 20, elapsed  # the bar (< 2 s) is measured by benchmarks/gitops.py, not asserted here


def test_the_rollout_plan_is_checked_too(tmp_path: Path) -> None:
    root = repo(tmp_path / "fleet")
    (root / "rollout.yaml").write_text("waves:\n  - hosts: [canary-1]\n  - percent: 250\nwait: 120\n")
    r = op("check", "--git-path", TEMPLATE, str(root))
    assert r.returncode == 2
    assert r.stdout.splitlines() == [f"{root}/rollout.yaml:3: waves[1].percent: Input should be less than or "
                                     "equal to 100"], r.stdout


def test_run_refuses_bad_git_options_before_starting(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    r = op("--state-dir", state_dir, "run")
    assert r.returncode == 2 and "exactly one of --state-file FILE and --git URL" in r.stderr
    r = op("--state-dir", state_dir, "run", "--git", "ext::sh -c id")
    assert r.returncode == 2 and "the ext transport is not allowed" in r.stderr
    r = op("--state-dir", state_dir, "run", "--git", "file:///x.git", "--git-allowed-signers", str(tmp_path / "no"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = op("--state-dir", state_dir, "run", "--git", "file:///x.git", "--git-path", "../secrets/{hostname}.json")
    assert r.returncode == 2 and "inside the repository" in r.stderr
