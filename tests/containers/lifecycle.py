"""The life of a container, the same for every backend: the real `op-dbus` command against a real manager.

A backend's test module subclasses `Lifecycle` and provides the fixtures `op` (an OpDbus with the backend's
endpoint), `oracle` (the manager's own tool, which tells the truth independently of op-dbus) and `templates`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from tests.containers.conftest import OpDbus, Templates


class Oracle(Protocol):
    def exists(self, name: str) -> bool: ...
    def running(self, name: str) -> bool: ...
    def exec(self, name: str, argv: list[str]) -> str: ...
    def managed(self, name: str) -> bool: ...
    def make_unmanaged(self, name: str, templates: Templates) -> None: ...


class Lifecycle:
    backend = ""
    #: what every container of this backend declares besides backend/image/state (e.g. a command)
    extra: dict[str, Any] = {}
    name = "life-1"

    def doc(self, templates: Templates, *, image: str = "one", state: str = "running", **fields: Any) -> dict[str, Any]:
        return {
            "templates": {"one": {"source": str(templates.one), "sha256": templates.sha(templates.one)},
                          "two": {"source": str(templates.two)}},
            "containers": {self.name: {"backend": self.backend, "image": image, "state": state,
                                       **self.extra, **fields}},
        }

    def test_diff_plans_the_import_and_the_create(self, op: OpDbus, templates: Templates, oracle: Oracle) -> None:
        r = op("-o", "json", "diff", str(op.state("create", self.doc(templates))))
        assert r.code == 3, r.err
        plan = [(c["object"], c["action"]) for c in r.json()["changes"]]
        assert plan == [("template:one", "import"), (self.name, "create")]
        assert not oracle.exists(self.name)

    def test_apply_creates_and_starts_a_container_that_runs_commands(self, op: OpDbus, templates: Templates,
                                                                     oracle: Oracle) -> None:
        r = op("apply", str(op.state("create", self.doc(templates))))
        assert r.code == 0, r.err
        assert oracle.running(self.name)
        assert oracle.managed(self.name)
        assert oracle.exec(self.name, ["/bin/cat", "/etc/variant"]).strip() == "one"

    def test_second_apply_is_a_noop(self, op: OpDbus, templates: Templates) -> None:
        r = op("-o", "json", "apply", str(op.state("create", self.doc(templates))))
        assert r.code == 0, r.err
        assert r.json()["changes"] == []

    def test_stop_then_start(self, op: OpDbus, templates: Templates, oracle: Oracle) -> None:
        r = op("-o", "json", "apply", str(op.state("stopped", self.doc(templates, state="stopped"))))
        assert r.code == 0, r.err
        assert [(c["object"], c["action"]) for c in r.json()["changes"]] == [(self.name, "stop")]
        assert oracle.exists(self.name) and not oracle.running(self.name)
        r = op("-o", "json", "apply", str(op.state("create", self.doc(templates))))
        assert r.code == 0, r.err
        assert oracle.running(self.name)

    def test_image_change_is_announced_then_recreates(self, op: OpDbus, templates: Templates, oracle: Oracle) -> None:
        f = op.state("two", self.doc(templates, image="two"))
        d = op("-o", "json", "diff", str(f))
        assert d.code == 3, d.err
        changes = d.json()["changes"]
        assert [(c["object"], c["action"]) for c in changes] == [("template:two", "import"), (self.name, "recreate")]
        assert changes[1]["before"]["image"] == "one" and changes[1]["after"]["image"] == "two"
        assert oracle.exec(self.name, ["/bin/cat", "/etc/variant"]).strip() == "one"  # diff changed nothing
        r = op("apply", str(f))
        assert r.code == 0, r.err
        assert oracle.running(self.name)
        assert oracle.exec(self.name, ["/bin/cat", "/etc/variant"]).strip() == "two"

    def test_new_template_content_recreates_its_containers(self, op: OpDbus, templates: Templates,
                                                            oracle: Oracle) -> None:
        doc = self.doc(templates, image="two")
        doc["templates"]["two"] = {"source": str(templates.one), "sha256": templates.sha(templates.one)}
        f = op.state("two-new", doc)
        d = op("-o", "json", "diff", str(f))
        assert d.code == 3, d.err
        changes = d.json()["changes"]
        assert [(c["object"], c["action"]) for c in changes] == [("template:two", "import"), (self.name, "recreate")]
        assert changes[1]["before"]["image"] == "two@unknown" and changes[1]["after"]["image"] == "two"
        r = op("apply", str(f))
        assert r.code == 0, r.err
        assert oracle.exec(self.name, ["/bin/cat", "/etc/variant"]).strip() == "one"
        assert op("-o", "json", "diff", str(f)).json()["changes"] == []

    def test_introspect_reapplies_as_a_noop(self, op: OpDbus) -> None:
        r = op("introspect", "containers")
        assert r.code == 0, r.err
        doc = json.loads(r.out)
        section = doc["plugins"]["containers"]
        assert section["containers"][self.name]["backend"] == self.backend
        assert section["containers"][self.name]["image"] == "two"
        f = op.files / "introspected.json"
        f.write_text(json.dumps({"version": 1, "plugins": {"containers": section}}))
        f.chmod(0o600)
        d = op("-o", "json", "diff", str(f))
        assert d.code == 0, d.out + d.err
        assert d.json()["changes"] == []

    def test_unknown_image_is_refused_and_nothing_changes(self, op: OpDbus, templates: Templates,
                                                          oracle: Oracle) -> None:
        doc = self.doc(templates, image="two")
        doc["containers"]["other-1"] = {"backend": self.backend, "image": "no-such-template", **self.extra}
        r = op("apply", str(op.state("unknown", doc)))
        assert r.code == 2, r.err
        assert "unknown image 'no-such-template'" in r.err
        assert not oracle.exists("other-1")

    def test_name_clash_with_an_unmanaged_container_is_refused(self, op: OpDbus, templates: Templates,
                                                               oracle: Oracle) -> None:
        oracle.make_unmanaged("foreign-1", templates)
        assert oracle.exists("foreign-1") and not oracle.managed("foreign-1")
        doc = self.doc(templates, image="two")
        doc["containers"]["foreign-1"] = {"backend": self.backend, "image": "one", "state": "absent"}
        r = op("apply", str(op.state("clash", doc)))
        assert r.code == 2, r.err
        assert "was not created by op-dbus" in r.err
        assert oracle.exists("foreign-1")

    def test_wrong_sha256_fails_before_importing_anything(self, op: OpDbus, templates: Templates,
                                                          oracle: Oracle) -> None:
        doc = self.doc(templates, image="two")
        doc["templates"]["three"] = {"source": str(templates.one), "sha256": "0" * 64}
        doc["containers"]["other-2"] = {"backend": self.backend, "image": "three", **self.extra}
        r = op("apply", str(op.state("badsha", doc)))
        assert r.code == 2, r.err  # invalid input, found by check: nothing changed, no block
        assert 'templates["three"].sha256' in r.err
        assert not oracle.exists("other-2")
        r = op("introspect", "containers")
        assert "three" not in json.loads(r.out)["plugins"]["containers"].get("templates", {})

    def test_absent_removes_only_the_named_container(self, op: OpDbus, templates: Templates, oracle: Oracle) -> None:
        r = op("-o", "json", "apply", str(op.state("absent", self.doc(templates, image="two", state="absent"))))
        assert r.code == 0, r.err
        assert [(c["object"], c["action"]) for c in r.json()["changes"]] == [(self.name, "remove")]
        assert not oracle.exists(self.name)
        assert oracle.exists("foreign-1")
