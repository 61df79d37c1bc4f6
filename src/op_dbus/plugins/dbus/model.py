"""The `dbus` section's model: services -> objects -> interfaces -> properties, setters, and the well-known ones."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationError, model_validator

from op_dbus.plugin import Section

INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
BUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")

_BUS_NAME = re.compile(r"[A-Za-z_-][A-Za-z0-9_-]*(\.[A-Za-z_-][A-Za-z0-9_-]*)+")
_INTERFACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_OBJECT_PATH = re.compile(r"/([A-Za-z0-9_]+(/[A-Za-z0-9_]+)*)?")
_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _matching(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if len(value) > 255 or not pattern.fullmatch(value):
            raise ValueError(f"not a D-Bus {what}: {value!r}")
        return value

    return AfterValidator(check)


BusName = Annotated[str, _matching(_BUS_NAME, "well-known bus name")]
InterfaceName = Annotated[str, _matching(_INTERFACE, "interface name")]
ObjectPath = Annotated[str, _matching(_OBJECT_PATH, "object path")]
MemberName = Annotated[str, _matching(_MEMBER, "member name")]


class Setter(Section):
    """A method that sets a read-only property: `interface.method(*args)`, `"$Prop"` substituted in `args`."""

    method: MemberName
    args: list[Any] | None = None  # default: ["$<the property>"]
    interface: InterfaceName | None = None  # default: the property's own interface


Properties = dict[MemberName, Any]
Objects = dict[ObjectPath, dict[InterfaceName, Properties]]


class DbusState(Section):
    """`{SERVICE: {PATH: {INTERFACE: {PROPERTY: VALUE}}}, "setters": {INTERFACE: {PROPERTY: SETTER}}}`."""

    services: dict[BusName, Objects] = {}
    setters: dict[InterfaceName, dict[MemberName, Setter]] = {}

    @model_validator(mode="wrap")
    @classmethod
    def _split(cls, data: Any, handler: Any) -> Any:
        # In the file, services sit directly in the section next to the one reserved key "setters" (a bus name
        # always has a dot, so the two cannot clash); error paths are given as the file has them.
        if not isinstance(data, dict):
            return handler(data)
        rest = {k: v for k, v in data.items() if k != "setters"}
        try:
            return handler({"services": rest, **({"setters": data["setters"]} if "setters" in data else {})})
        except ValidationError as e:
            errors: list[Any] = []
            for err in e.errors(include_url=False):
                loc = err["loc"][1:] if err["loc"][:1] == ("services",) else err["loc"]
                errors.append({k: v for k, v in {**err, "loc": loc}.items() if k in ("type", "loc", "input", "ctx")})
            raise ValidationError.from_exception_data(e.title, errors) from None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inner = super().model_json_schema(*args, **kwargs)
        setters = inner["properties"]["setters"]
        return {
            "title": "dbus", "type": "object", "$defs": inner.get("$defs", {}),
            "description": "Properties of any D-Bus service: {SERVICE: {OBJECT_PATH: {INTERFACE: {PROPERTY: VALUE}}}}, "
                           "plus setter methods for read-only properties under \"setters\".",
            "properties": {"setters": setters},
            "patternProperties": {_BUS_NAME.pattern: {"type": "object", "patternProperties": {
                _OBJECT_PATH.pattern: {"type": "object", "patternProperties": {
                    _INTERFACE.pattern: {"type": "object", "additionalProperties": True}}}}}},
            "additionalProperties": False,
        }  # fmt: skip


def _s(method: str, *props: str, extra: tuple[Any, ...] = (False,)) -> dict[str, Setter]:
    spec = Setter.model_construct(method=method, args=[f"${p}" for p in props] + list(extra), interface=None)
    return {p: spec for p in props}


# Read-only properties of the well-known systemd services and the methods that set them. The trailing
# booleans are "interactive" (never ask polkit to prompt) and, where present, the methods' other flags:
# SetLocalRTC's fix_system (do not step the clock) and the keyboard methods' convert (leave the other
# keymap alone).
WELL_KNOWN_SETTERS: dict[str, dict[str, Setter]] = {
    "org.freedesktop.hostname1": {
        **_s("SetStaticHostname", "StaticHostname"), **_s("SetPrettyHostname", "PrettyHostname"),
        **_s("SetIconName", "IconName"), **_s("SetChassis", "Chassis"),
        **_s("SetDeployment", "Deployment"), **_s("SetLocation", "Location"),
    },
    "org.freedesktop.timedate1": {
        **_s("SetTimezone", "Timezone"), **_s("SetNTP", "NTP"),
        **_s("SetLocalRTC", "LocalRTC", extra=(False, False)),
    },
    "org.freedesktop.locale1": {
        **_s("SetLocale", "Locale"),
        **_s("SetVConsoleKeyboard", "VConsoleKeymap", "VConsoleKeymapToggle", extra=(False, False)),
        **_s("SetX11Keyboard", "X11Layout", "X11Model", "X11Variant", "X11Options", extra=(False, False)),
    },
}  # fmt: skip

# What `introspect` writes out: the declarable properties of the well-known services (service, path, interface).
WELL_KNOWN_OBJECTS = {
    "org.freedesktop.hostname1": ("/org/freedesktop/hostname1", "org.freedesktop.hostname1"),
    "org.freedesktop.timedate1": ("/org/freedesktop/timedate1", "org.freedesktop.timedate1"),
    "org.freedesktop.locale1": ("/org/freedesktop/locale1", "org.freedesktop.locale1"),
}


def substitute(args: list[Any], values: dict[str, Any]) -> list[Any]:
    """Replace `"$Name"` with `values[Name]` (and `"$$x"` with the literal `"$x"`)."""
    out = []
    for a in args:
        if isinstance(a, str) and a.startswith("$$"):
            out.append(a[1:])
        elif isinstance(a, str) and a.startswith("$"):
            out.append(values[a[1:]])
        else:
            out.append(a)
    return out


def referenced(args: list[Any]) -> list[str]:
    return [a[1:] for a in args if isinstance(a, str) and a.startswith("$") and not a.startswith("$$")]


def setter_for(setters: dict[str, dict[str, Setter]], interface: str, prop: str) -> Setter | None:
    spec = setters.get(interface, {}).get(prop) or WELL_KNOWN_SETTERS.get(interface, {}).get(prop)
    if spec is not None and spec.args is None:
        spec = Setter.model_construct(method=spec.method, args=[f"${prop}"], interface=spec.interface)
    return spec


def object_name(service: str, path: str, interface: str, prop: str) -> str:
    """`org.freedesktop.hostname1.StaticHostname` when object and interface are the service's own, else in full."""
    if interface == service and path == "/" + service.replace(".", "/"):
        return f"{interface}.{prop}"
    return f"{service} {path} {interface}.{prop}"
