"""The podman backend against a private `podman system service` (runc, private storage, no network)."""

from __future__ import annotations

import pytest

from tests.containers.conftest import OpDbus, Podman, Templates
from tests.containers.lifecycle import Lifecycle

# PID 1 ignores signals it has no handler for: trap TERM so that a stop takes a second, not the stop timeout
SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


class PodmanOracle:
    """podman's own CLI on the same storage: what really exists and runs."""

    def __init__(self, podman: Podman) -> None:
        self.podman = podman

    def exists(self, name: str) -> bool:
        return self.podman.inspect(name) is not None

    def running(self, name: str) -> bool:
        data = self.podman.inspect(name)
        return bool(data and data["State"]["Running"])

    def managed(self, name: str) -> bool:
        data = self.podman.inspect(name)
        return bool(data and (data["Config"]["Labels"] or {}).get("op-dbus.managed") == "true")

    def exec(self, name: str, argv: list[str]) -> str:
        return self.podman.cli("exec", name, *argv).stdout

    def make_unmanaged(self, name: str, templates: Templates) -> None:
        self.podman.cli("import", str(templates.one), "localhost/someone-else:latest")
        self.podman.cli("create", "--name", name, "--network", "none", "localhost/someone-else:latest", *SLEEP)


@pytest.fixture(scope="module")
def oracle(podman: Podman) -> PodmanOracle:
    return PodmanOracle(podman)


@pytest.fixture(scope="module")
def op(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"), {"CONTAINER_HOST": f"unix://{podman.socket}"},
                  tmp_path_factory.mktemp("files"))


class TestPodman(Lifecycle):
    backend = "podman"
    extra = {"command": SLEEP, "env": {"TZ": "UTC"}, "limits": {"memory": "64M", "cpus": 0.5}, "autostart": True}


def test_settings_reach_the_container(op: OpDbus, templates: Templates, podman: Podman, tmp_path_factory) -> None:
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_text("hello\n")
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"web-1": {"backend": "podman", "image": "one", "command": SLEEP,
                                        "env": {"TZ": "UTC", "MODE": "test"}, "autostart": True,
                                        "mounts": [{"source": str(www), "target": "/var/www", "read_only": True}],
                                        "limits": {"memory": "64M", "cpus": 0.5}}}}
    r = op("apply", str(op.state("web", section)))
    assert r.code == 0, r.err
    data = podman.inspect("web-1")
    assert data is not None
    assert data["HostConfig"]["Memory"] == 64 << 20
    assert data["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert data["HostConfig"]["NetworkMode"] == "none"
    assert "MODE=test" in data["Config"]["Env"]
    assert podman.cli("exec", "web-1", "/bin/cat", "/var/www/index.html").stdout == "hello\n"
    assert podman.cli("exec", "web-1", "/bin/sh", "-c", "echo x > /var/www/y", check=False).returncode != 0
    # dropping an env key is a difference (the key was recorded at create), and it recreates
    section["containers"]["web-1"]["env"] = {"TZ": "UTC"}
    d = op("-o", "json", "diff", str(op.state("web2", section)))
    assert d.code == 3
    (change,) = d.json()["changes"]
    assert change["action"] == "recreate" and change["before"]["env"] == {"MODE": "test", "TZ": "UTC"}
    section["containers"]["web-1"]["state"] = "absent"
    assert op("apply", str(op.state("web3", section))).code == 0
    assert podman.inspect("web-1") is None


def test_a_podman_that_is_not_running_is_a_clear_error(templates: Templates, tmp_path_factory) -> None:
    op = OpDbus(tmp_path_factory.mktemp("state"), {"CONTAINER_HOST": "unix:///nonexistent/podman.sock"},
                tmp_path_factory.mktemp("files"))
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"x-1": {"backend": "podman", "image": "one", "command": SLEEP}}}
    r = op("apply", str(op.state("down", section)))
    assert r.code == 2, r.err
    assert "podman is not running" in r.err and "podman system service" in r.err


def test_an_unknown_backend_is_invalid_input(op: OpDbus, templates: Templates) -> None:
    section = {"containers": {"x-1": {"backend": "kubernetes", "image": "one"}}}
    r = op("apply", str(op.state("k8s", section)))
    assert r.code == 2, r.err
    assert "backend" in r.err


async def test_events_report_the_lifecycle(podman: Podman, templates: Templates) -> None:
    import time

    from op_dbus.backends.containers import ContainerSpec
    from op_dbus.backends.containers.podman import PodmanBackend

    backend = PodmanBackend(str(podman.socket))
    since = time.time() - 1
    try:
        await backend.import_template("ev", templates.one, None)
        await backend.create(ContainerSpec("ev-1", "ev", command=SLEEP))
        await backend.start("ev-1")
        await backend.remove("ev-1")
        seen = [(e["name"], e["action"]) for e in await backend.events(since) if e["name"] == "ev-1"]
        assert [a for _, a in seen if a in ("create", "start", "remove")] == ["create", "start", "remove"]
        await backend.remove_template("ev")
        assert "ev" not in await backend.templates()
    finally:
        await backend.close()


def test_a_failed_recreation_is_rolled_back_to_the_old_container(op: OpDbus, templates: Templates,
                                                                 podman: Podman) -> None:
    section: dict = {"templates": {"one": {"source": str(templates.one)}},
                     "containers": {"rb-1": {"backend": "podman", "image": "one", "command": SLEEP, "env": {"V": "1"}}}}
    assert op("apply", str(op.state("rb", section))).code == 0
    before = podman.inspect("rb-1")
    assert before is not None and before["State"]["Running"]
    # podman refuses a bind mount whose source does not exist: the old container is already removed by then
    section["containers"]["rb-1"]["mounts"] = [{"source": "/nonexistent/op-dbus-test", "target": "/data"}]
    r = op("apply", str(op.state("rb2", section)))
    assert r.code == 4, r.err
    assert "rolled back" in r.err
    after = podman.inspect("rb-1")
    assert after is not None and after["State"]["Running"]
    assert after["Id"] != before["Id"] and "V=1" in after["Config"]["Env"] and not after["Mounts"]
    section["containers"]["rb-1"]["state"] = "absent"
    assert op("apply", str(op.state("rb3", section))).code == 0
