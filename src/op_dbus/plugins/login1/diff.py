"""The pure diff of the `login1` section: linger changes first, then terminations (not reversible), named by the facts."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import Change

from .model import Login1State, SessionsState, UserState

PLUGIN = "login1"


def diff(desired: Login1State, current: Login1State) -> list[Change]:
    changes: list[Change] = []
    for name, want in desired.users.items():
        have = current.users.get(name)
        linger = bool(have.linger) if have is not None else False
        if want.linger is not None and linger != want.linger:
            uid = current._users.get(name, (None, False))[0]
            changes.append(Change(PLUGIN, f"user {name}", "linger" if want.linger else "unlinger",
                                  {"linger": linger}, {"linger": want.linger},
                                  payload={"user": name, "uid": uid, "linger": want.linger}))
    if desired.sessions is None:
        return changes
    have_s = current.sessions or SessionsState.model_construct(absent=[], absent_for_users=[], absent_remote=None)
    doomed: set[str] = set()
    for name in desired.sessions.absent_for_users:
        if name in have_s.absent_for_users:
            continue
        ids = [s.id for s in current._sessions if s.user == name]
        if not ids:
            continue
        doomed.update(ids)
        uid, lingers = current._users.get(name, (None, False))
        stays = lingers or bool(desired.users.get(name, UserState()).linger)
        changes.append(_terminate(f"user {name}", ids, {"user": name, "uid": uid, "ids": ids,
                                                        "whole_user": not stays}))
    for sid in desired.sessions.absent:
        if sid in have_s.absent or sid in doomed:
            continue
        if any(s.id == sid for s in current._sessions):
            doomed.add(sid)
            changes.append(_terminate(f"session {sid}", [sid], {"ids": [sid], "whole_user": False}))
    if desired.sessions.absent_remote and not have_s.absent_remote:
        for s in current._sessions:
            if s.remote and s.id not in doomed:
                doomed.add(s.id)
                changes.append(_terminate(f"session {s.id}", [s.id], {"ids": [s.id], "whole_user": False}))
    return changes

def _terminate(obj: str, ids: list[str], payload: dict[str, Any]) -> Change:
    return Change(PLUGIN, obj, "terminate", {"sessions": ids}, {"sessions": [], "reversible": False},
                  payload=payload)
