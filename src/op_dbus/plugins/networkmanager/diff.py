"""The pure diff of the `networkmanager` section: which profiles to create, update, delete, (de)activate."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import Change

from .model import NetworkManagerSection, Profile

PLUGIN = "networkmanager"
ABSENT = Profile.model_validate({"state": "absent"})


def _dump(profile: Profile) -> dict[str, Any]:
    return profile.model_dump(mode="json", by_alias=True, exclude_none=True)


def _differs(want: Profile, have: Profile) -> dict[str, list[str]]:
    """The declared keys whose live value differs, by group."""
    live = have.groups()
    out: dict[str, list[str]] = {}
    for group, values in want.groups().items():
        diffs = [k for k, v in values.items() if live.get(group, {}).get(k) != v]
        if diffs:
            out[group] = diffs
    return out


def diff(desired: NetworkManagerSection, current: NetworkManagerSection) -> list[Change]:
    """Deactivations and deletions first (they free devices), then creations and updates, then activations."""
    first: list[Change] = []
    middle: list[Change] = []
    last: list[Change] = []
    for pid, want in desired.connections.items():
        have = current.connections.get(pid, ABSENT)
        obj = f"connection {pid}"
        if want.state == "absent":
            if have.state != "absent":
                first.append(Change(PLUGIN, obj, "delete", before=_dump(have), after={"state": "absent"},
                                    payload={"id": pid}))
            continue
        if have.state == "absent":
            after = _dump(want)
            middle.append(Change(PLUGIN, obj, "create", before={"state": "absent"}, after=after,
                                 payload={"id": pid, "groups": want.groups()}))
            if want.active:
                last.append(Change(PLUGIN, obj, "activate", before={"active": False}, after={"active": True},
                                   payload={"id": pid}))
            continue
        changed = _differs(want, have)
        active_now = bool(have.active)
        if want.active is False and active_now:
            first.append(Change(PLUGIN, obj, "deactivate", before={"active": True}, after={"active": False},
                                payload={"id": pid}))
            active_now = False
        if changed:
            groups = want.groups()
            sub = {g: {k: groups[g][k] for k in keys} for g, keys in changed.items()}
            was = Profile.model_validate({g: {k: have.groups().get(g, {}).get(k) for k in keys}
                                          for g, keys in changed.items()})
            # An active profile takes new settings only when activated again.
            middle.append(Change(PLUGIN, obj, "update", before=_dump(was), after=_dump(Profile.model_validate(sub)),
                                 payload={"id": pid, "groups": sub, "reactivate": active_now}))
        if want.active and not active_now:
            last.append(Change(PLUGIN, obj, "activate", before={"active": False}, after={"active": True},
                               payload={"id": pid}))
    return first + middle + last
