"""A small D-Bus service for the tests, run on a lab's system bus: writable properties, a setter method, a
method that always fails, and a second name that never answers (to prove time-outs are reported, not fatal).

Run: `python dbus_test_service.py BUS_ADDRESS`; it prints "ready" once both names are owned and runs until
killed. `install_policy(lab)` lays the D-Bus policy that lets root own the names into the lab.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

NAME = "com.example.OpDbusTest1"
PATH = "/com/example/OpDbusTest1"
SILENT = "com.example.Silent1"

POLICY = f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="{NAME}"/>
    <allow own="{SILENT}"/>
    <allow send_destination="{NAME}"/>
  </policy>
  <!-- everyone may call the silent name (and wait forever); nobody but root may call the test service -->
  <policy context="default">
    <allow send_destination="{SILENT}"/>
  </policy>
</busconfig>
"""


def install_policy(lab: Any) -> None:
    (lab.root / f"etc/dbus-1/system.d/{NAME}.conf").write_text(POLICY)
    lab.run(["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ReloadConfig"])


def start(python: str, bus_address: str) -> subprocess.Popen[str]:
    """Start the service as a child of the test; returns once it owns its names."""
    proc = subprocess.Popen([python, __file__, bus_address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"test service did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc


async def main(address: str) -> None:
    from dbus_fast import BusType, DBusError, MessageType, NameFlag, PropertyAccess, RequestNameReply
    from dbus_fast.aio import MessageBus
    from dbus_fast.service import ServiceInterface, dbus_property, method

    class Settings(ServiceInterface):
        def __init__(self) -> None:
            super().__init__(NAME)
            self._mode, self._level, self._ratio = "eco", 3, 0.5
            self._tags: list[str] = ["a"]
            self._limits: dict[str, int] = {"cpu": 1}
            self._colour, self._shade = "blue", "light"

        @dbus_property()
        def Mode(self) -> s:  # type: ignore[name-defined]  # noqa: F821
            return self._mode

        @Mode.setter
        def Mode(self, value: s) -> None:  # type: ignore[name-defined]  # noqa: F821
            self._mode = value

        @dbus_property()
        def Level(self) -> i:  # type: ignore[name-defined]  # noqa: F821
            return self._level

        @Level.setter
        def Level(self, value: i) -> None:  # type: ignore[name-defined]  # noqa: F821
            self._level = value

        @dbus_property()
        def Ratio(self) -> d:  # type: ignore[name-defined]  # noqa: F821
            return self._ratio

        @Ratio.setter
        def Ratio(self, value: d) -> None:  # type: ignore[name-defined]  # noqa: F821
            self._ratio = value

        @dbus_property()
        def Tags(self) -> "as":  # type: ignore[name-defined]  # noqa: F722
            return self._tags

        @Tags.setter
        def Tags(self, value: "as") -> None:  # type: ignore[name-defined]  # noqa: F722
            self._tags = value

        @dbus_property()
        def Limits(self) -> "a{su}":  # type: ignore[name-defined]  # noqa: F722
            return self._limits

        @Limits.setter
        def Limits(self, value: "a{su}") -> None:  # type: ignore[name-defined]  # noqa: F722
            self._limits = value

        @dbus_property(access=PropertyAccess.READ)
        def Colour(self) -> s:  # type: ignore[name-defined]  # noqa: F821
            return self._colour

        @dbus_property(access=PropertyAccess.READ)
        def Shade(self) -> s:  # type: ignore[name-defined]  # noqa: F821
            return self._shade

        @method()
        def SetColour(self, colour: s, interactive: b):  # type: ignore[name-defined]  # noqa: F821
            if colour not in ("blue", "green", "red"):
                raise DBusError("com.example.OpDbusTest1.Error.BadColour", f"no such colour: {colour}")
            self._colour = colour
            self.emit_properties_changed({"Colour": colour})

        @method()
        def SetShade(self, shade: s):  # type: ignore[name-defined]  # noqa: F821
            raise DBusError("com.example.OpDbusTest1.Error.Broken", "shades cannot be changed")

    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    bus.export(PATH, Settings())
    # The silent name lives on a connection of its own: the bus applies a send_destination rule to every
    # name the receiving connection owns, so sharing one would open the test service to everyone too.
    silent = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()

    def swallow(msg: Any) -> bool:
        # never answer anything addressed to the silent name
        return bool(msg.message_type == MessageType.METHOD_CALL and msg.destination == SILENT)

    silent.add_message_handler(swallow)
    for connection, name in ((bus, NAME), (silent, SILENT)):
        reply = await connection.request_name(name, NameFlag.DO_NOT_QUEUE)
        if reply != RequestNameReply.PRIMARY_OWNER:
            print(f"could not own {name}: {reply}", flush=True)
            return
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
