"""The Docker backend against a real Docker Engine API server: podman's compatible API on a private service."""

from __future__ import annotations

import pytest

from tests.containers.conftest import OpDbus, Podman, Templates
from tests.containers.lifecycle import Lifecycle
from tests.containers.test_podman import SLEEP, PodmanOracle


@pytest.fixture(scope="module")
def oracle(podman: Podman) -> PodmanOracle:
    return PodmanOracle(podman)


@pytest.fixture(scope="module")
def op(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    # only DOCKER_HOST: the docker backend must not need podman's own API
    return OpDbus(tmp_path_factory.mktemp("state"), {"DOCKER_HOST": f"unix://{podman.socket}",
                                                      "CONTAINER_HOST": "unix:///nonexistent/podman.sock"},
                  tmp_path_factory.mktemp("files"))


class TestDocker(Lifecycle):
    backend = "docker"
    extra = {"command": SLEEP, "env": {"TZ": "UTC"}, "limits": {"memory": "64M", "cpus": 0.5}, "autostart": True}


def test_settings_reach_the_container(op: OpDbus, templates: Templates, podman: Podman,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_text("hello\n")
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"web-d": {"backend": "docker", "image": "one", "command": SLEEP,
                                        "env": {"MODE": "test"},
                                        "mounts": [{"source": str(www), "target": "/var/www", "read_only": True}],
                                        "limits": {"memory": "32M"}}}}
    r = op("apply", str(op.state("web", section)))
    assert r.code == 0, r.err
    data = podman.inspect("web-d")
    assert data is not None
    assert data["HostConfig"]["Memory"] == 32 << 20
    assert data["HostConfig"]["NetworkMode"] == "none"
    assert "MODE=test" in data["Config"]["Env"]
    assert podman.cli("exec", "web-d", "/bin/cat", "/var/www/index.html").stdout == "hello\n"
    section["containers"]["web-d"]["state"] = "absent"
    assert op("apply", str(op.state("web3", section))).code == 0
    assert podman.inspect("web-d") is None


def test_a_docker_engine_that_is_not_running_is_a_clear_error(templates: Templates,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    op = OpDbus(tmp_path_factory.mktemp("state"), {"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                tmp_path_factory.mktemp("files"))
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"x-1": {"backend": "docker", "image": "one", "command": SLEEP}}}
    r = op("apply", str(op.state("down", section)))
    assert r.code == 2, r.err
    assert "docker is not running" in r.err
