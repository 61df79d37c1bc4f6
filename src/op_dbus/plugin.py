"""The plugin contract every state section implements: check, query, diff (pure), apply (recording undo).

A plugin owns one key under `plugins` in the state document. The engine calls it in this order:

    check(desired)        semantic pre-flight against the live system (e.g. a named unit must exist);
                          returns problems, and nothing is applied if any plugin reports one
    query(scope)          read the live state; `scope=None` means everything (introspect), otherwise
                          only the objects and fields the desired state names, canonicalised so that
                          its dump is itself a valid desired state (what the log snapshots)
    diff(desired, cur)    pure: the ordered changes that turn `cur` into `desired`; objects the desired
                          state does not name are never in it
    apply(changes, undo)  the only writer; before each change takes effect it records in `undo` the
                          inverse change, so the engine can roll back whatever part was applied

Verification is `diff(desired, query(scope=desired))`: an empty diff means converged. Because
canonicalisation lives in `query`, there is one comparison and no separate verify code to drift from it.

One optional verb serves the agent (`op-dbus run`):

    watch(scope)          an async iterator of `WatchEvent`s: the system's own change notifications for
                          what `scope` names (signals, netlink multicast, OVSDB monitor), as soon as they
                          arrive. Its first event is `WatchEvent(name, source=SUBSCRIBED)` once its
                          subscriptions are in place (the agent reconciles only then, so nothing falls
                          between). It ends when the plugin has nothing to watch (the default), and raises
                          ServiceUnavailable when its source goes away. It only says *that* something may
                          have changed; the agent then recomputes `diff(desired, query(scope))`, so a
                          spurious event costs one query and a plugin without `watch` is covered by the
                          agent's periodic full reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from op_dbus.errors import OpDbusError, Problem
from op_dbus.statedir import DEFAULT_STATE_DIR


class Section(BaseModel):
    """Base of every plugin's state model: strict types, unknown keys rejected, JSON names as declared."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


S = TypeVar("S", bound=Section)


@dataclass
class Change:
    """One step of a plan: `action` on `object`, moving its managed fields from `before` to `after`.

    `payload` is private to the plugin that made the change (what apply needs); it is kept out of
    the audit log. `before`/`after` are JSON values and are what the log records.
    """

    plugin: str
    object: str
    action: str
    before: Any = None
    after: Any = None
    payload: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return f"{self.plugin}: {self.action} {self.object}"

    def to_record(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "object": self.object,
            "action": self.action,
            "before": self.before,
            "after": self.after,
        }


SUBSCRIBED = "subscribed"  # the source of a watch's first event: from here on, no change goes unseen


@dataclass
class WatchEvent:
    """A change notification from a plugin's `watch`: which objects may have changed, and what said so.

    `objects` are names as the state file spells them (empty: anything in the section); `origin` is who
    made the change, where the source tells (e.g. the D-Bus sender's pid, uid and command line).
    """

    plugin: str
    objects: tuple[str, ...] = ()
    source: str = ""
    origin: dict[str, Any] = field(default_factory=dict)


class UndoLog:
    """Inverse changes, recorded by plugins as they apply; the engine replays them newest first.

    A step that nothing can undo (terminating a session kills its processes) is declared with
    `irreversible(change)` as it is taken, so a failed apply says exactly what it could not roll back.
    """

    def __init__(self) -> None:
        self.entries: list[Change] = []
        self.irreversible_steps: list[Change] = []

    def record(self, inverse: Change) -> None:
        self.entries.append(inverse)

    def irreversible(self, change: Change) -> None:
        self.irreversible_steps.append(change)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class Settings:
    """Where op-dbus talks to and keeps its data; set by global CLI options or the environment."""

    bus_address: str | None = None  # None: DBUS_SYSTEM_BUS_ADDRESS or the default system bus
    state_dir: Path = DEFAULT_STATE_DIR
    job_timeout: float = 90.0  # seconds to wait for one systemd job / one backend operation
    netns: str | None = None
    ovsdb: str | None = None
    read_only_facts: bool = False  # `op-dbus query`: plugins add their read-only facts under a `status` key
    extra: dict[str, Any] = field(default_factory=dict)  # a backend's endpoints (e.g. "containers")


class Context:
    """What plugins share during one command: settings, and connections opened once and closed at the end.

    Plugins ask for a connection with `await ctx.resource(key, opener)`; the first caller opens it, the
    rest reuse it, and `aclose()` closes them all. The core stays free of any protocol library.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self._resources: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()

    async def resource(self, key: str, opener: Callable[[], Awaitable[Any]],
                       closer: Callable[[Any], Awaitable[None] | None] | None = None) -> Any:
        # One future per key: callers that ask at the same time (check and query run together) share one
        # connection instead of each opening its own. A failed open is forgotten, so a later caller retries.
        future = self._resources.get(key)
        if future is None:
            future = asyncio.ensure_future(self._open(key, opener, closer))
            self._resources[key] = future
        try:
            return await asyncio.shield(future)
        except BaseException:
            if future.done() and (future.cancelled() or future.exception() is not None):
                self._resources.pop(key, None)
            raise

    async def _open(self, key: str, opener: Callable[[], Awaitable[Any]],
                    closer: Callable[[Any], Awaitable[None] | None] | None) -> Any:
        value = await opener()
        if closer is not None:
            async def _close(v: Any = value) -> None:
                result = closer(v)
                if result is not None:
                    await result
            self._stack.push_async_callback(_close)
        return value

    async def aclose(self) -> None:
        self._resources.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Plugin(ABC, Generic[S]):
    """One state section. Subclasses set `name`, `model` and `order`, and implement the verbs."""

    name: ClassVar[str]
    model: ClassVar[type[Section]]
    # Apply order across plugins (lower first): the network comes up before the units that use it.
    order: ClassVar[int] = 50

    async def check(self, desired: S, ctx: Context) -> list[Problem]:
        return []

    @abstractmethod
    async def query(self, ctx: Context, scope: S | None = None) -> S: ...

    @abstractmethod
    def diff(self, desired: S, current: S) -> list[Change]: ...

    @abstractmethod
    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None: ...

    def claims(self, desired: S) -> dict[str, str]:
        """What this section takes charge of on the machine, for the engine's cross-plugin check.

        Keys name a resource the same way in every plugin (e.g. `interface eth0`); values say where and how
        the section claims it. A document in which two plugins claim the same resource is refused before
        anything changes: both would manage it and undo each other's work. By default nothing is claimed.
        """
        return {}

    def settle_time(self, changes: list[Change]) -> float:
        """Seconds the result of `changes` must keep verifying before it counts (0: verify once).

        A unit that crashes right after starting looks active to a first read; a second read after this
        delay catches it.
        """
        return 0.0

    async def watch(self, scope: S, ctx: Context) -> AsyncIterator[WatchEvent]:
        """Change notifications for what `scope` names (see the module docstring); by default none."""
        return
        yield  # an async generator that ends at once

    def dump(self, state: S) -> dict[str, Any]:
        """The section as it appears in a state file (and in the log): JSON, no unset fields."""
        return state.model_dump(mode="json", by_alias=True, exclude_none=True)


# Plugins that ship with op-dbus; used when the package metadata (entry points) is not installed,
# e.g. when running from a source tree.
BUILTIN_PLUGINS: dict[str, str] = {
    "systemd": "op_dbus.plugins.systemd:SystemdPlugin",
    "net": "op_dbus.plugins.net:NetPlugin",
    "login1": "op_dbus.plugins.login1:Login1Plugin",
    "dbus": "op_dbus.plugins.dbus:DbusPropertiesPlugin",
    "containers": "op_dbus.plugins.containers:ContainersPlugin",
    "networkmanager": "op_dbus.plugins.networkmanager:NetworkManagerPlugin",
    "power": "op_dbus.plugins.power:PowerPlugin",
    "storage": "op_dbus.plugins.storage:StoragePlugin",
}

ENTRY_POINT_GROUP = "op_dbus.plugins"


def _load(spec: str) -> type[Plugin[Any]]:
    import importlib

    module_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise OpDbusError(f"{spec} is not an op-dbus plugin class")
    return cls


@functools.cache
def _entry_point_specs() -> tuple[tuple[str, str], ...]:
    # scanning every installed distribution's metadata costs ~20 ms: once per process (checking a fleet of 1,000
    # hosts validates 1,000 documents), and only when plugins are looked up
    from importlib.metadata import entry_points

    return tuple((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP))


def plugin_specs() -> dict[str, str]:
    """name -> "module:Class" for every installed plugin (entry points win over the built-in table)."""
    specs = dict(BUILTIN_PLUGINS)
    specs.update(_entry_point_specs())
    return specs


def load_plugins(names: list[str] | None = None) -> dict[str, Plugin[Any]]:
    """Instantiate the named plugins (all installed ones when `names` is None), in apply order."""
    specs = plugin_specs()
    wanted = sorted(specs) if names is None else names
    plugins: dict[str, Plugin[Any]] = {}
    for name in wanted:
        if name not in specs:
            raise OpDbusError(f"unknown plugin {name!r}; installed: {', '.join(sorted(specs))}")
        plugins[name] = _load(specs[name])()
    return dict(sorted(plugins.items(), key=lambda kv: (kv[1].order, kv[0])))
