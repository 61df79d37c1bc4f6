"""The `login1` section's model: declarable linger and absent sessions, and the read-only facts logind reports."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, model_validator

from op_dbus.plugin import Section

LOGIN1 = "org.freedesktop.login1"
LOGIN1_PATH = "/org/freedesktop/login1"
MANAGER = "org.freedesktop.login1.Manager"
SESSION = "org.freedesktop.login1.Session"
USER = "org.freedesktop.login1.User"
SEAT = "org.freedesktop.login1.Seat"

LINGER_DIR = "/var/lib/systemd/linger"  # logind's flag files, one per lingering user

_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}\$?")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _pattern(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"not a {what}: {value!r}")
        return value

    return AfterValidator(check)


UserName = Annotated[str, _pattern(_USER_NAME, "user name")]
SessionId = Annotated[str, _pattern(_SESSION_ID, "session id")]


class UserState(Section):
    linger: bool | None = None


class SessionsState(Section):
    absent: list[SessionId] = []
    absent_for_users: list[UserName] = []
    absent_remote: bool | None = None


class SessionFact(Section):
    id: str
    user: str
    uid: int
    seat: str = ""
    class_: str = Field("", alias="class")
    type: str = ""
    state: str = ""
    remote: bool = False
    remote_host: str = ""
    remote_user: str = ""
    service: str = ""
    tty: str = ""
    since: str = ""


class UserFact(Section):
    uid: int
    name: str
    state: str
    linger: bool
    sessions: list[str] = []


class SeatFact(Section):
    id: str
    active_session: str = ""
    sessions: list[str] = []


class Status(Section):
    """What logind reports; output of `op-dbus query` only, ignored when a state file carries it."""

    seats: list[SeatFact] = []
    sessions: list[SessionFact] = []
    users: list[UserFact] = []


class Login1State(Section):
    users: dict[UserName, UserState] = {}
    sessions: SessionsState | None = None
    status: Status | None = Field(None, description="Output only (what `op-dbus query` reports); ignored here.")

    # The live facts a scoped query saw, for diff (which must not do I/O) to name what it terminates.
    _sessions: list[SessionFact] = PrivateAttr(default_factory=list)
    _users: dict[str, tuple[int, bool]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _facts_from_status(self) -> Login1State:
        # A query's output names the live facts under `status`; read back, they are what diff needs to name
        # what it terminates (a declared state ignores them: diff reads only the current state's facts).
        if self.status is not None:
            self._sessions = list(self.status.sessions)
            self._users = {u.name: (u.uid, u.linger) for u in self.status.users}
        return self
