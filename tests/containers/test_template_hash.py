"""A template whose tarball does not match its declared sha256 is invalid input: `diff` and `apply` refuse it at
check time (exit 2), before anything is imported or recorded. Real LXC on a private lxcpath."""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import Lxc, OpDbus, Templates

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


@pytest.fixture(scope="module")
def op(lxc: Lxc, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_LXC_PATH": str(lxc.path), "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
                   "DOCKER_HOST": "unix:///nonexistent/docker.sock", "OP_DBUS_BUS": "unix:path=/nonexistent/bus"},
                  tmp_path_factory.mktemp("files"))


def test_a_template_with_the_wrong_sha256_is_refused_before_anything_changes(op: OpDbus, lxc: Lxc,
                                                                           templates: Templates) -> None:
    wrong = templates.sha(templates.two)  # the other tarball's hash
    section = {"templates": {"one": {"source": str(templates.one), "sha256": wrong}},
               "containers": {"hash-1": {"backend": "lxc", "image": "one", "command": SLEEP}}}
    state = op.state("wrong-sha", section)
    for command in ("diff", "apply"):
        r = op(command, str(state))
        assert r.code == 2, (command, r.out, r.err)
        assert 'plugins.containers.templates["one"].sha256' in r.err and f"expects {wrong}" in r.err, r.err
    assert not (lxc.path / ".op-dbus-templates").exists() and not (lxc.path / "hash-1").exists()
    blocks = op("-o", "json", "blockchain", "list")
    assert blocks.code == 0 and json.loads(blocks.out) == [], blocks  # no block, not even a `failed` one


def test_the_right_sha256_still_applies(op: OpDbus, lxc: Lxc, templates: Templates) -> None:
    section = {"templates": {"one": {"source": str(templates.one), "sha256": templates.sha(templates.one)}},
               "containers": {"hash-2": {"backend": "lxc", "image": "one", "command": SLEEP, "state": "stopped"}}}
    state = op.state("right-sha", section)
    r = op("apply", str(state))
    assert r.code == 0, r.err
    assert (lxc.path / "hash-2" / "config").exists()
    assert op("diff", str(state)).code == 0  # imported with that hash: not read again, no difference
