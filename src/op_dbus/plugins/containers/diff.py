"""The pure diff of the `containers` section: import templates, then remove, recreate, create, stop, start."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import Change
from op_dbus.secret import split_env

from . import pods
from .model import ACTION_ORDER, FIXED, ContainersState, _dump, canonical, spec_of, template_backends

PLUGIN = "containers"


def diff(desired: ContainersState, current: ContainersState) -> list[Change]:
    changes: list[Change] = []
    needed = template_backends(desired)
    for tname, want_t in desired.templates.items():
        have_t = current.templates.get(tname)
        if have_t is None or (want_t.sha256 is not None and have_t.sha256 != want_t.sha256):
            before = None if have_t is None else _dump(have_t)
            changes.append(Change(PLUGIN, f"template:{tname}", "import", before, _dump(want_t),
                                  {"template": tname, "source": want_t.source, "sha256": want_t.sha256,
                                   "backends": needed.get(tname, [])}))
    for name, want in desired.containers.items():
        have = current.containers.get(name)
        spec = spec_of(name, want, desired.templates) if want.state != "absent" else None
        payload: dict[str, Any] = {"backend": want.backend, "spec": spec}
        if want.state == "absent":
            if have is not None:
                changes.append(Change(PLUGIN, name, "remove", {"state": have.state}, {"state": "absent"},
                                      payload))
            continue
        if have is None:
            after = want.model_dump(mode="json", exclude_none=True)
            changes.append(Change(PLUGIN, name, "create", {"state": "absent"}, after,
                                  {**payload, "secrets": split_env(want.env)[1], "start": want.state == "running"}))
            continue
        differ = [f for f in FIXED if getattr(want, f) is not None
                  and canonical(f, getattr(want, f)) != canonical(f, getattr(have, f))]
        if differ:
            before = {f: _dump(getattr(have, f)) for f in differ} | {"state": have.state}
            after = {f: _dump(getattr(want, f)) for f in differ} | {"state": want.state}
            changes.append(Change(PLUGIN, name, "recreate", before, after,
                                  {**payload, "secrets": split_env(want.env)[1], "start": want.state == "running"}))
        elif have.state != want.state:
            action = "start" if want.state == "running" else "stop"
            changes.append(Change(PLUGIN, name, action, {"state": have.state}, {"state": want.state}, payload))
    changes += pods.diff(desired, current)
    changes.sort(key=lambda c: ACTION_ORDER[c.action])
    return changes
