"""A thin D-Bus client over dbus-fast: connect, call, read properties, collect signals; errors translated here."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.errors import AuthError, DBusError

from op_dbus.errors import BackendError, OperationTimeout, PermissionDenied, ServiceUnavailable

PROPERTIES = "org.freedesktop.DBus.Properties"
DEFAULT_SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"

POLICY_HINT = (
    "run op-dbus as root, or install a D-Bus policy file for its user, e.g. /etc/dbus-1/system.d/op-dbus.conf: "
    '<busconfig><policy user="opdbus"><allow send_destination="org.freedesktop.systemd1"/></policy></busconfig>'
)


def system_bus_address(explicit: str | None = None) -> str:
    """The address op-dbus uses for "the system bus": --bus, then DBUS_SYSTEM_BUS_ADDRESS, then the standard socket."""
    return explicit or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS


async def connect(address: str | None = None, *, timeout: float = 10.0) -> MessageBus:
    """Open and authenticate a connection to the system bus (or the bus at `address`)."""
    addr = system_bus_address(address)
    try:
        bus = MessageBus(bus_address=addr, bus_type=BusType.SYSTEM)
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


class Client:
    """Method calls and property reads on one connection, with a timeout and translated errors."""

    def __init__(self, bus: MessageBus, *, timeout: float = 30.0) -> None:
        self.bus = bus
        self.timeout = timeout
        self.flags: set[str] = set()  # per-connection one-time setup done (e.g. a service's Subscribe)

    async def call(self, destination: str, path: str, interface: str, member: str,
                   signature: str = "", body: list[Any] | None = None, *, timeout: float | None = None) -> list[Any]:
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
        what = f"{interface}.{member} on {destination}"
        try:
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


async def open_client(ctx_settings_bus: str | None, timeout: float) -> Client:
    return Client(await connect(ctx_settings_bus), timeout=timeout)


def close_client(client: Client) -> None:
    client.bus.disconnect()
