"""The `login1` plugin: logind over org.freedesktop.login1, which users linger, which sessions must not exist.

State section::

    {"users": {"labuser": {"linger": true}, "backup": {"linger": false}},
     "sessions": {"absent_for_users": ["mallory"], "absent": ["42"], "absent_remote": false}}

Declarable: a user's `linger` (their user manager runs without a login, `SetUserLinger`), and sessions that
must not exist: every session of the users in `absent_for_users`, the sessions with the ids in `absent`, and
with `absent_remote: true` every remote session (ssh and the like). Users are named by login name.

Terminating is not reversible: a session's processes are killed and nothing can bring them back, so a
termination records no undo step, its change says `"reversible": false`, and within this plugin it runs after
every reversible change. A user in `absent_for_users` whose user manager does not linger is ended whole
(`TerminateUser`: sessions and every process of the user); one that lingers keeps its user manager and loses
its sessions (`TerminateSession`).

Read-only facts (seats; sessions with user, seat, class, state, remote host and start time; users with uid,
state and linger) are reported under `status` by `op-dbus query` only. `status` is output, never input: a
state file may carry it (so a query's output is a valid state file) and it is ignored. `op-dbus introspect`
leaves it out and writes each known user's `linger`, which re-applies as a no-op.

Watching (the agent): logind's SessionNew/SessionRemoved/UserNew/UserRemoved signals, each mapped to the declared
user names and session ids it touches. logind sends no PropertiesChanged for `Linger` (systemd 252 checked):
`SetUserLinger` only shows on the bus as UserNew/UserRemoved when it starts or stops the user's manager, which it
does not for a user that is logged in. So when op-dbus runs on the machine it manages (the standard system bus),
the linger flag files in /var/lib/systemd/linger/ are watched with inotify as well; against another machine's bus
a linger change of a logged-in user is found by the periodic reconciliation. As root, a bus monitor notes who
called logind (loginctl, pam_systemd's CreateSession) to name them as the origin of the change.
"""

from __future__ import annotations

import pwd
from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus
from op_dbus.errors import Problem
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent
from op_dbus.state import format_path

from . import apply as applier
from . import query
from . import watch as watcher
from .diff import diff as compute_diff
from .model import Login1State, SessionFact, UserFact
from .query import scoped_state
from .watch import caller_keys, linger_objects, session_objects, user_objects

__all__ = ["Login1Plugin", "Login1State", "SessionFact", "UserFact", "caller_keys", "linger_objects",
           "scoped_state", "session_objects", "user_objects"]


class Login1Plugin(Plugin[Login1State]):
    name = "login1"
    model = Login1State
    # Last: terminating sessions cannot be undone, so it happens after every other plugin has succeeded.
    order = 90

    # -- reading -------------------------------------------------------------------------------------

    async def query(self, ctx: Context, scope: Login1State | None = None) -> Login1State:
        return await query.query(ctx, scope)

    def dump(self, state: Login1State) -> dict[str, Any]:
        out: dict[str, Any] = {"users": {n: u.model_dump(exclude_none=True) for n, u in state.users.items()}}
        if state.sessions is not None:
            s = state.sessions
            out["sessions"] = {"absent": list(s.absent), "absent_for_users": list(s.absent_for_users)}
            if s.absent_remote is not None:
                out["sessions"]["absent_remote"] = s.absent_remote
        if state.status is not None:
            out["status"] = state.status.model_dump(mode="json", by_alias=True)
        return out

    # -- watching ------------------------------------------------------------------------------------

    async def watch(self, scope: Login1State, ctx: Context) -> AsyncIterator[WatchEvent]:
        async for event in watcher.watch(scope, ctx):
            yield event

    # -- checking ------------------------------------------------------------------------------------

    async def check(self, desired: Login1State, ctx: Context) -> list[Problem]:
        client = await dbus.system_client(ctx)
        known = {u.name for u in await query.read_users(client)}
        problems = []
        names = [("users", n) for n in desired.users]
        if desired.sessions is not None:
            names += [(f"sessions.absent_for_users[{i}]", n) for i, n in enumerate(desired.sessions.absent_for_users)]
        for where, name in names:
            if name in known:
                continue
            try:
                pwd.getpwnam(name)
            except KeyError:
                path = format_path(("plugins", "login1", "users", name)) if where == "users" else f"plugins.login1.{where}"
                problems.append(Problem(path, f"no such user on this system: {name!r}"))
        return problems

    # -- planning ------------------------------------------------------------------------------------

    def diff(self, desired: Login1State, current: Login1State) -> list[Change]:
        return compute_diff(desired, current)

    # -- applying ------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        await applier.apply(changes, ctx, undo)
