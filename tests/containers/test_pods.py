"""Pods from Kubernetes manifests through podman's libpod API (play kube, the pods endpoints), on a private podman."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.containers.conftest import OpDbus, Podman, Templates

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
IMAGE = "localhost/pod-test:latest"


def pod_manifest(env_value: str = "one") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ignored", "labels": {"app": "web"}},
            "spec": {"restartPolicy": "Always",
                     "containers": [{"name": "main", "image": IMAGE, "command": SLEEP,
                                     "env": [{"name": "WHICH", "value": env_value}]}]}}


def deployment(replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}},
                                  "spec": {"containers": [{"name": "main", "image": IMAGE, "command": SLEEP}]}}}}


@pytest.fixture(scope="module")
def op(podman: Podman, templates: Templates, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    podman.cli("import", str(templates.one), IMAGE)
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"CONTAINER_HOST": f"unix://{podman.socket}", "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                  tmp_path_factory.mktemp("files"))


def pod(podman: Podman, name: str) -> dict[str, Any] | None:
    r = podman.cli("pod", "inspect", name, check=False)
    if r.returncode != 0:
        return None
    data = json.loads(r.stdout)
    return data[0] if isinstance(data, list) else data


def section(**pods: Any) -> dict[str, Any]:
    return {"pods": pods}


def test_pod_is_created_running_and_a_second_apply_is_a_noop(op: OpDbus, podman: Podman) -> None:
    doc = section(web={"manifest": pod_manifest()})
    plan = op("-o", "json", "diff", str(op.state("p1", {"pods": doc["pods"]})))
    assert plan.code == 3, plan.err
    assert [(c["object"], c["action"]) for c in plan.json()["changes"]] == [("pod:web", "create")]
    r = op("apply", str(op.state("p1", doc)))
    assert r.code == 0, r.err
    data = pod(podman, "web")
    assert data is not None and data["State"] == "Running", data
    assert data["Labels"]["op-dbus.managed"] == "true" and data["Labels"]["app"] == "web"
    ps = podman.cli("ps", "--filter", "pod=web", "--format", "{{.Names}}").stdout
    assert "web-main" in ps
    env = podman.cli("exec", "web-main", "/bin/sh", "-c", "echo $WHICH").stdout.strip()
    assert env == "one"
    again = op("-o", "json", "diff", str(op.state("p1", doc)))
    assert again.code == 0 and again.json()["changes"] == [], again.out


def test_changed_manifest_recreates_the_pod(op: OpDbus, podman: Podman) -> None:
    before = pod(podman, "web")
    assert before is not None
    doc = section(web={"manifest": pod_manifest("two")})
    plan = op("-o", "json", "diff", str(op.state("p2", doc)))
    assert [(c["object"], c["action"]) for c in plan.json()["changes"]] == [("pod:web", "recreate")]
    assert op("apply", str(op.state("p2", doc))).code == 0
    after = pod(podman, "web")
    assert after is not None and after["Id"] != before["Id"]
    assert podman.cli("exec", "web-main", "/bin/sh", "-c", "echo $WHICH").stdout.strip() == "two"


def test_stop_start_and_introspect_round_trip(op: OpDbus, podman: Podman) -> None:
    doc = section(web={"manifest": pod_manifest("two"), "state": "stopped"})
    assert op("apply", str(op.state("p3", doc))).code == 0
    data = pod(podman, "web")
    assert data is not None and data["State"] in ("Exited", "Stopped"), data["State"]
    doc["pods"]["web"]["state"] = "running"
    assert op("apply", str(op.state("p3", doc))).code == 0
    intro = op("-o", "json", "introspect", "containers")
    assert intro.code == 0, intro.err
    pods = intro.json()["plugins"]["containers"]["pods"]
    assert pods["web"]["manifest"] == pod_manifest("two") and pods["web"]["state"] == "running"
    path = op.files / "intro.json"
    path.write_text(intro.out)
    path.chmod(0o600)
    d = op("-o", "json", "diff", str(path))
    assert d.code == 0 and d.json()["changes"] == [], d.out


def test_deployment_with_one_replica_runs_as_a_pod_and_absent_removes_it(op: OpDbus, podman: Podman) -> None:
    assert op("apply", str(op.state("d1", section(dep={"manifest": deployment()})))).code == 0
    data = pod(podman, "dep")
    assert data is not None and data["State"] == "Running"
    r = op("apply", str(op.state("d2", section(dep={"manifest": deployment(), "state": "absent"}))))
    assert r.code == 0, r.err
    assert pod(podman, "dep") is None
    assert pod(podman, "web") is not None  # only the named pod


@pytest.mark.parametrize(("manifest", "message"), [
    ({**pod_manifest(), "spec": {**pod_manifest()["spec"], "hostNetwork": True}}, "manifest.spec.hostNetwork: unsupported"),
    (deployment(3), "manifest.spec.replicas: only 1 replica"),
    ({"apiVersion": "batch/v1", "kind": "Job", "spec": {}}, "manifest.kind: a Pod or a Deployment"),
])
def test_unsupported_manifest_is_refused_and_nothing_changes(op: OpDbus, podman: Podman, manifest: dict[str, Any],
                                                               message: str) -> None:
    pods_before = podman.cli("pod", "ps", "-q").stdout
    r = op("apply", str(op.state("bad", section(bad={"manifest": manifest}))))
    assert r.code == 2, r.err
    assert message in r.err and "pods" in r.err, r.err
    assert podman.cli("pod", "ps", "-q").stdout == pods_before
