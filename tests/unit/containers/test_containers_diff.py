"""Pure tests of the containers plugin: validation, canonical forms, the plan; and the backends' config codecs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from op_dbus.backends.containers import ContainerInfo, ContainerSpec, Mount
from op_dbus.backends.containers import lxc as lxc_backend
from op_dbus.backends.containers import nspawn as nspawn_backend
from op_dbus.backends.containers.http import Response, query_string
from op_dbus.plugins.containers import (
    ContainersPlugin,
    ContainersState,
    config_of,
    format_size,
    parse_size,
    spec_of,
)

PLUGIN = ContainersPlugin()
SHA = "a" * 64


def state(**containers: dict[str, Any]) -> ContainersState:
    return ContainersState.model_validate({"templates": {"base": {"source": "/srv/base.tar", "sha256": SHA}},
                                           "containers": containers}, strict=False)


def current(desired: ContainersState, infos: dict[str, ContainerInfo], templates: bool = True) -> ContainersState:
    """What query(scope=desired) builds from what the backends report."""
    return ContainersState.model_construct(
        templates=dict(desired.templates) if templates else {},
        containers={n: config_of(desired.containers[n].backend, i, desired.containers[n]) for n, i in infos.items()})


def info(name: str = "web-1", **kw: Any) -> ContainerInfo:
    base: dict[str, Any] = {"managed": True, "running": True, "image": "base", "command": ["/bin/app"],
                            "env": {"PATH": "/bin", "TZ": "UTC"}, "env_keys": ["TZ"]}
    return ContainerInfo(name=name, **{**base, **kw})


WEB = {"backend": "podman", "image": "base", "command": ["/bin/app"], "env": {"TZ": "UTC"}}


def plan(desired: ContainersState, cur: ContainersState) -> list[tuple[str, str]]:
    return [(c.object, c.action) for c in PLUGIN.diff(desired, cur)]


def test_converged_is_empty() -> None:
    d = state(**{"web-1": WEB})
    assert plan(d, current(d, {"web-1": info()})) == []


def test_missing_template_and_container_plan_import_then_create() -> None:
    d = state(**{"web-1": WEB})
    changes = PLUGIN.diff(d, current(d, {}, templates=False))
    assert [(c.object, c.action) for c in changes] == [("template:base", "import"), ("web-1", "create")]
    assert changes[0].payload["backends"] == ["podman"]
    assert changes[1].payload["start"] is True


def test_a_template_with_another_hash_is_reimported() -> None:
    d = state(**{"web-1": WEB})
    cur = current(d, {"web-1": info()})
    cur.templates["base"] = cur.templates["base"].model_copy(update={"sha256": "b" * 64})
    assert plan(d, cur) == [("template:base", "import")]


def test_state_changes_only_start_or_stop() -> None:
    d = state(**{"web-1": {**WEB, "state": "stopped"}})
    (change,) = PLUGIN.diff(d, current(d, {"web-1": info()}))
    assert (change.action, change.before, change.after) == ("stop", {"state": "running"}, {"state": "stopped"})


@pytest.mark.parametrize(("field", "value", "live"), [
    ("image", "other", {}),
    ("command", ["/bin/other"], {}),
    ("env", {"TZ": "UTC", "MODE": "x"}, {}),
    ("mounts", [{"source": "/a", "target": "/b"}], {}),
    ("limits", {"memory": "1G"}, {"memory": 512 << 20}),
    ("network", {"bridge": "br0"}, {}),
    ("autostart", True, {}),
])
def test_a_fixed_setting_that_differs_recreates_and_says_which(field: str, value: Any, live: dict[str, Any]) -> None:
    d = state(**{"web-1": {**WEB, field: value}})
    (change,) = PLUGIN.diff(d, current(d, {"web-1": info(**live)}))
    assert change.action == "recreate"
    assert field in change.before and field in change.after
    assert change.after[field] != change.before[field]


def test_equal_in_another_spelling_is_no_difference() -> None:
    d = state(**{"web-1": {**WEB, "limits": {"memory": "512M", "cpus": 1},
                           "mounts": [{"source": "/b", "target": "/y"}, {"source": "/a", "target": "/x"}]}})
    live = info(memory=512 << 20, cpus=1.0, mounts=[Mount("/a", "/x"), Mount("/b", "/y")])
    assert plan(d, current(d, {"web-1": live})) == []


def test_a_dropped_env_key_is_seen_through_the_recorded_keys() -> None:
    d = state(**{"web-1": {**WEB, "env": {}}})
    (change,) = PLUGIN.diff(d, current(d, {"web-1": info()}))
    assert change.action == "recreate" and change.before["env"] == {"TZ": "UTC"}


def test_variables_the_image_adds_are_not_differences() -> None:
    d = state(**{"web-1": WEB})
    assert current(d, {"web-1": info()}).containers["web-1"].env == {"TZ": "UTC"}


def test_absent_removes_and_missing_absent_is_nothing() -> None:
    d = state(**{"web-1": {"backend": "podman", "state": "absent"}, "old-1": {"backend": "lxc", "state": "absent"}})
    cur = current(d, {"web-1": info()})
    assert plan(d, cur) == [("web-1", "remove")]


def test_plan_order_removes_before_creates_and_stops_before_starts() -> None:
    d = state(**{"a-1": {**WEB, "state": "running"}, "b-1": {**WEB, "state": "stopped"},
                 "c-1": {"backend": "podman", "state": "absent"}, "d-1": WEB, "e-1": {**WEB, "image": "x"}})
    cur = current(d, {"a-1": info("a-1", running=False), "b-1": info("b-1"), "c-1": info("c-1"), "e-1": info("e-1")})
    assert [a for _, a in plan(d, cur)] == ["remove", "recreate", "create", "stop", "start"]


@pytest.mark.parametrize(("doc", "where"), [
    ({"containers": {"bad name": {"backend": "podman", "image": "base"}}}, "containers"),
    ({"containers": {"x": {"backend": "kubernetes", "image": "base"}}}, "backend"),
    ({"containers": {"x": {"backend": "podman"}}}, "image is required"),
    ({"containers": {"x": {"backend": "podman", "image": "b", "limits": {"memory": "1.5G"}}}}, "not a size"),
    ({"templates": {"t": {"source": "relative.tar"}}}, "absolute"),
    ({"templates": {"t": {"source": "/x.tar", "sha256": "xyz"}}}, "sha256"),
    ({"containers": {"x": {"backend": "podman", "image": "b", "network": {"ipv4": {"address": [
        {"ip": "198.18.0.1", "prefix": 33}]}}}}}, "prefix"),
])
def test_invalid_documents_are_refused(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        ContainersState.model_validate(doc)
    assert where in str(e.value)


def test_sizes() -> None:
    assert parse_size("512M") == 512 << 20 and parse_size("1G") == 1 << 30 and parse_size("100") == 100
    assert format_size(512 << 20) == "512M" and format_size(1 << 30) == "1G" and format_size(1000) == "1000"


def test_spec_of_carries_every_setting() -> None:
    d = state(**{"w-1": {**WEB, "mounts": [{"source": "/s", "target": "/t", "read_only": True}], "autostart": True,
                         "limits": {"memory": "64M", "cpus": 0.5},
                         "network": {"bridge": "br0", "ipv4": {"address": [{"ip": "198.18.0.2", "prefix": 24}]}}}})
    spec = spec_of("w-1", d.containers["w-1"])
    assert spec == ContainerSpec("w-1", "base", ["/bin/app"], {"TZ": "UTC"}, [Mount("/s", "/t", True)], True, False,
                                 64 << 20, 0.5, "br0", ["198.18.0.2/24"])


SPEC = ContainerSpec("c-1", "base", ["/bin/sh", "-c", "echo 'a b'; sleep 1"], {"TZ": "UTC", "A": "x=y"},
                     [Mount("/srv/www", "/var/www", True), Mount("/data", "/data")], True, False, 64 << 20, 0.5,
                     "br0", ["198.18.0.2/24"])


@pytest.mark.parametrize("v1", [True, False])
def test_lxc_config_round_trip(tmp_path: Any, v1: bool) -> None:
    text = lxc_backend.render_config(SPEC, tmp_path, tmp_path / "tpl", v1)
    assert "lxc.net.0.type = veth" in text and "lxc.net.0.link = br0" in text
    got = lxc_backend.parse_config("c-1", text)
    assert got.managed and got.image == "base" and got.command == SPEC.command
    assert got.env == SPEC.env and got.mounts == sorted(SPEC.mounts, key=lambda m: m.target)
    assert (got.memory, got.cpus, got.autostart, got.bridge, got.addresses) == (64 << 20, 0.5, True, "br0",
                                                                                 ["198.18.0.2/24"])
    assert got.spec() == ContainerSpec(**{**SPEC.__dict__, "mounts": sorted(SPEC.mounts, key=lambda m: m.target)})


def test_lxc_without_bridge_has_no_network_at_all(tmp_path: Any) -> None:
    text = lxc_backend.render_config(ContainerSpec("c-2", "base", ["/bin/true"]), tmp_path, tmp_path, False)
    assert "lxc.net.0.type = empty" in text and "veth" not in text


def test_lxc_config_of_someone_else_is_not_managed() -> None:
    assert not lxc_backend.parse_config("x", "lxc.uts.name = x\nlxc.net.0.type = empty\n").managed


def test_nspawn_settings_round_trip() -> None:
    spec = ContainerSpec(**{**SPEC.__dict__, "addresses": []})
    text = nspawn_backend.render_settings(spec)
    assert "Bridge=br0" in text and "PrivateUsers=no" in text
    got = nspawn_backend.parse_settings("c-1", text)
    nspawn_backend.parse_limits(nspawn_backend.render_limits(spec) or "", got)
    assert got.managed and got.command == spec.command and got.env == spec.env and got.bridge == "br0"
    assert got.mounts == sorted(spec.mounts, key=lambda m: m.target)
    assert (got.memory, got.cpus) == (64 << 20, 0.5)
    private = nspawn_backend.render_settings(ContainerSpec("c-2", "base", ["/bin/true"]))
    assert "Private=yes" in private and "VirtualEthernet=no" in private


def test_query_strings() -> None:
    got = query_string({"all": True, "filters": {"label": ["a"]}, "changes": ["LABEL a=1", "LABEL b=2"], "skip": None})
    assert got == ("?all=true&filters=%7B%22label%22%3A%20%5B%22a%22%5D%7D"
                   "&changes=LABEL%20a%3D1&changes=LABEL%20b%3D2")
    assert query_string(None) == ""


def test_json_lines() -> None:
    assert Response(200, {}, b'{"a":1}\n{"b":2}{"c":3}\n').json_lines() == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_progress_is_drawn_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import sys

    from op_dbus.plugins.containers import tty_progress

    assert tty_progress("x") is None  # captured stderr is not a terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    report = tty_progress("importing base")
    assert report is not None
    for done in (0, 512, 1024):
        report(done, 1024)
    assert tty.getvalue() == ("\rimporting base:   0% of 0.0 MB\rimporting base:  50% of 0.0 MB"
                              "\rimporting base: 100% of 0.0 MB\n")
