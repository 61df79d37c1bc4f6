"""A thin D-Bus client over dbus-fast: connect, call, read properties, collect signals; errors translated here."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, DBusError

from op_dbus.errors import BackendError, OperationTimeout, PermissionDenied, ServiceUnavailable
from op_dbus.plugin import Context

if TYPE_CHECKING:
    from op_dbus.plugin import Context

PROPERTIES = "org.freedesktop.DBus.Properties"
DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"

POLICY_HINT = (
    "run op-dbus as root, or install a D-Bus policy file for its user, e.g. /etc/dbus-1/system.d/op-dbus.conf: "
    '<busconfig><policy user="opdbus"><allow send_destination="org.freedesktop.systemd1"/></policy></busconfig>'
)


def system_bus_address(explicit: str | None = None) -> str:
    """The address op-dbus uses for "the system bus": --bus, then DBUS_SYSTEM_BUS_ADDRESS, then the standard socket."""
    return explicit or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS


async def connect(address: str | None = None, *, timeout: float = 10.0, unix_fds: bool = False) -> MessageBus:
    """Open and authenticate a connection to the system bus (or the bus at `address`); `unix_fds`: one that may
    carry file descriptors (importd's ImportTar takes the tarball's)."""
    addr = system_bus_address(address)
    try:
        bus = MessageBus(bus_address=addr, bus_type=BusType.SYSTEM, negotiate_unix_fd=unix_fds)
        return await asyncio.wait_for(bus.connect(), timeout)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise ServiceUnavailable(
            f"cannot connect to the D-Bus system bus at {addr}: {e.strerror or e}",
            hint="is dbus running on this machine? use --bus ADDRESS or DBUS_SYSTEM_BUS_ADDRESS to name another bus",
        ) from None
    except PermissionError:
        raise PermissionDenied(f"permission denied opening the D-Bus socket at {addr}", hint=POLICY_HINT) from None
    except AuthError as e:
        raise PermissionDenied(f"the bus at {addr} refused authentication: {e}", hint=POLICY_HINT) from None
    except TimeoutError:
        raise OperationTimeout(f"timed out connecting to the D-Bus system bus at {addr}") from None
    except (OSError, ValueError) as e:
        raise ServiceUnavailable(f"cannot connect to the D-Bus bus at {addr}: {e}") from None


def error_from_reply(reply: Message, what: str) -> BackendError:
    """Turn a D-Bus error reply into the project's error tree, keeping the D-Bus error name."""
    name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
    text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
    if name in ("org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"):
        return PermissionDenied(f"{what}: access denied: {text}", hint=POLICY_HINT, code=name)
    if name in ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return ServiceUnavailable(f"{what}: service not available: {text}", code=name)
    if name in ("org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Timeout"):
        return OperationTimeout(f"{what}: no reply: {text}", code=name)
    return BackendError(f"{what}: {text}", code=name)


MAX_IN_FLIGHT = 64


class Client:
    """Method calls and property reads on one connection, with a timeout and translated errors."""

    def __init__(self, bus: MessageBus, *, timeout: float = 30.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self.flags: set[str] = set()  # per-connection one-time setup done (e.g. a service's Subscribe)
        # dbus-daemon refuses calls beyond its max_replies_per_connection (128 by default) awaiting a reply at once;
        # callers that fan out over hundreds of objects queue here instead.
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def call(self, destination: str, path: str, interface: str, member: str,
                   signature: str = "", body: list[Any] | None = None, *, timeout: float | None = None) -> list[Any]:
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
        what = f"{interface}.{member} on {destination}"
        try:
            async with self._in_flight:
                reply = await asyncio.wait_for(self.bus.call(msg), timeout or self.timeout)
        except TimeoutError:
            raise OperationTimeout(f"{what}: no reply within {timeout or self.timeout:.0f} s") from None
        except (EOFError, ConnectionError, BrokenPipeError) as e:
            # dbus-fast reports a dropped connection as a bare EOFError
            raise ServiceUnavailable(f"{what}: the D-Bus connection was lost ({type(e).__name__})") from None
        except DBusError as e:
            raise BackendError(f"{what}: {e.text}", code=e.type) from None
        if reply.message_type == MessageType.ERROR:
            raise error_from_reply(reply, what)
        return list(reply.body)

    async def get_property(self, destination: str, path: str, interface: str, name: str) -> Any:
        (variant,) = await self.call(destination, path, PROPERTIES, "Get", "ss", [interface, name])
        return variant.value

    async def get_all(self, destination: str, path: str, interface: str) -> dict[str, Any]:
        (props,) = await self.call(destination, path, PROPERTIES, "GetAll", "s", [interface])
        return {k: v.value for k, v in props.items()}

    async def has_owner(self, name: str) -> bool:
        """Whether a service owns `name` on the bus now (asking does not start a bus-activatable service)."""
        (owned,) = await self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                   "NameHasOwner", "s", [name])
        return bool(owned)

    async def add_match(self, rule: str) -> None:
        await self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule])

    def on_signal(self, handler: Callable[[Message], None], *, interface: str,
                  member: str | None = None) -> Callable[[], None]:
        """Deliver matching signals to `handler`; returns a function that stops the delivery."""

        def _filter(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.interface == interface and (
                member is None or msg.member == member
            ):
                handler(msg)

        self.bus.add_message_handler(_filter)
        return lambda: self.bus.remove_message_handler(_filter)


    async def signals(self, rules: list[str], accept: Callable[[Message], bool],
                      ready: bool = False) -> AsyncIterator[Message | None]:
        """Signals matching `rules` (bus match rules) that `accept` keeps, as they arrive.

        With `ready`, None comes first, once the match rules are in place. Raises ServiceUnavailable when
        the connection drops, so a watcher can reconnect and catch up.
        """
        queue: asyncio.Queue[Message] = asyncio.Queue()

        def handler(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and accept(msg):
                queue.put_nowait(msg)

        self.bus.add_message_handler(handler)
        lost = asyncio.ensure_future(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        try:
            for rule in rules:
                await self.add_match(rule)
            if ready:
                yield None
            while True:
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({get, lost}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    yield get.result()
                    continue
                get.cancel()
                raise ServiceUnavailable("the D-Bus connection was lost (the bus stopped or restarted)")
        finally:
            self.bus.remove_message_handler(handler)
            lost.cancel()
            with contextlib.suppress(BaseException):
                await lost

    async def property_changes(self, destination: str, watched: dict[str, set[str] | None],
                               interface: str | None = None) -> AsyncIterator[tuple[str, str, set[str]] | None]:
        """PropertiesChanged of `destination`'s objects: (path, interface, names of the watched properties that
        changed or were invalidated), for `watched` = {object path: property names, or None for any}.

        None comes first, once subscribed. For any D-Bus service's declared properties (login1, hostname1, ...).
        """
        rules = [f"type='signal',sender='{destination}',interface='{PROPERTIES}',member='PropertiesChanged',"
                 f"path='{path}'" for path in watched]

        def accept(msg: Message) -> bool:
            return msg.member == "PropertiesChanged" and msg.path in watched and (
                interface is None or msg.body[0] == interface)

        async for msg in self.signals(rules, accept, ready=True):
            if msg is None:
                yield None
                continue
            names: set[str] = set(msg.body[1]) | set(msg.body[2])
            path = str(msg.path)  # accept() let through only the watched paths
            wanted = watched[path]
            hit = names if wanted is None else names & wanted
            if hit:
                yield path, str(msg.body[0]), hit

    async def credentials(self, sender: str) -> dict[str, Any]:
        """Who a bus peer is: pid, uid and command line (as far as the bus and /proc still tell)."""
        try:
            (creds,) = await self.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                       "GetConnectionCredentials", "s", [sender], timeout=2.0)
        except BackendError:
            return {"sender": sender}
        who: dict[str, Any] = {"sender": sender}
        if "ProcessID" in creds:
            who["pid"] = creds["ProcessID"].value
            with contextlib.suppress(OSError), open(f"/proc/{who['pid']}/cmdline", "rb") as f:
                who["command"] = f.read(1000).replace(b"\0", b" ").decode(errors="replace").strip()
        if "UnixUserID" in creds:
            who["uid"] = creds["UnixUserID"].value
        return who


async def monitor(address: str | None, rules: list[str], handler: Callable[[Message], None]) -> MessageBus:
    """A second connection turned into a bus monitor (org.freedesktop.DBus.Monitoring.BecomeMonitor).

    It sees copies of the method calls `rules` match (e.g. who asked systemd to stop a unit); the bus
    allows this to root only. A monitor may not send anything, so every message is marked handled here
    (otherwise the library would answer method calls meant for others).
    """
    bus = await connect(address)

    def observe(msg: Message) -> bool:
        if msg.message_type == MessageType.METHOD_CALL:
            handler(msg)
        return True

    reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus.Monitoring", member="BecomeMonitor",
                                   signature="asu", body=[rules, 0]))
    if reply.message_type == MessageType.ERROR:
        bus.disconnect()
        raise error_from_reply(reply, "BecomeMonitor on the system bus")
    bus.add_message_handler(observe)
    return bus


async def open_client(ctx_settings_bus: str | None, timeout: float) -> Client:
    return Client(await connect(ctx_settings_bus), timeout=timeout)


def close_client(client: Client) -> None:
    client.bus.disconnect()


SYSTEM_CLIENT = "dbus.system"  # the context resource key of the command's one system-bus client


async def system_client(ctx: Context) -> Client:
    """The command's one system-bus client: opened on first use, shared, and closed with the context."""
    client: Client = await ctx.resource(
        SYSTEM_CLIENT, lambda: open_client(ctx.settings.bus_address, ctx.settings.job_timeout), close_client)
    return client


async def name_has_owner(client: Client, name: str) -> bool:
    (owned,) = await client.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                 "NameHasOwner", "s", [name])
    return bool(owned)


async def unit_active_state(client: Client, unit: str) -> str:
    """systemd's ActiveState of `unit` (active, inactive, failed ...), loaded or not."""
    (rows,) = await client.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                "org.freedesktop.systemd1.Manager", "ListUnitsByNames", "as", [[unit]])
    return str(rows[0][3])


class Callers:
    """Who recently called a service's methods, noted by a bus monitor: key -> (when, sender/method/pid/uid/command).

    `keys` names what a method call is about (e.g. the user a SetUserLinger call names); calls from `client`'s
    own connection are not noted. Only root may monitor the bus; without it, nothing is noted. A sender's
    credentials are looked up at its first call: a tool that makes several calls and exits at once (hostnamectl)
    may be gone by its last one.
    """

    MAX_SENDERS = 256

    def __init__(self, client: Client, keys: Callable[[Message], list[str]]) -> None:
        self.client = client
        self.keys = keys
        self.seen: dict[str, tuple[float, str, str]] = {}  # key -> (when, sender, method)
        self._senders: dict[str, tuple[asyncio.Task[None], dict[str, Any]]] = {}
        self._bus: MessageBus | None = None

    async def start(self, address: str | None, rules: list[str]) -> bool:
        own = self.client.bus.unique_name

        def note(msg: Message) -> None:
            if msg.sender == own or msg.sender is None:
                return
            keys = self.keys(msg)
            if not keys:
                return
            now = asyncio.get_running_loop().time()
            for key in keys:
                self.seen[key] = (now, msg.sender, msg.member or "")
            self._resolve(msg.sender)

        try:
            self._bus = await monitor(address, rules, note)
        except (BackendError, PermissionDenied, ServiceUnavailable, OperationTimeout):
            # not root, or a bus without monitoring: changes are still seen, only not who made them
            return False
        return True

    def _resolve(self, sender: str) -> None:
        if sender in self._senders:
            return
        if len(self._senders) >= self.MAX_SENDERS:
            self._senders.pop(next(iter(self._senders)))
        details: dict[str, Any] = {}

        async def look_up() -> None:
            details.update(await self.client.credentials(sender))

        self._senders[sender] = (asyncio.ensure_future(look_up()), details)

    async def recent(self, keys: list[str] | tuple[str, ...], within: float = 30.0, wait: float = 0.2) -> dict[str, Any]:
        """The latest caller about any of `keys` in the last `within` seconds ({} if none), its details looked up
        (waiting up to `wait` seconds for them: a record written without them would never get them)."""
        now = asyncio.get_running_loop().time()
        latest = max((self.seen[k] for k in keys if k in self.seen), key=lambda seen: seen[0], default=None)
        if latest is None or now - latest[0] >= within:
            return {}
        _when, sender, method = latest
        task, details = self._senders.get(sender, (None, {}))
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), wait)
        return {**details, "sender": sender, "method": method}

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None
        for task, _ in self._senders.values():
            task.cancel()
