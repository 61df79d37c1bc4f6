"""Every error op-dbus raises on purpose is under OpDbusError and drawn in errors.py's tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import op_dbus
from op_dbus import errors

# Control flow that never leaves its module, and the auditors' standalone verifier (no op_dbus imports by design).
INTERNAL = {"op_dbus.agent.core._Restart", "op_dbus.state._DuplicateKey", "op_dbus.fleet.app.BodyTooLarge",
            "op_dbus.audit_verify.Unreadable", "op_dbus.fleet.users.RateLimited"}


def _error_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(op_dbus.__path__, "op_dbus."):
        if info.name.endswith("__main__"):
            continue  # running it is the command
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (ml, collector) that is not installed
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return found


ERRORS = _error_classes()


def test_the_walk_finds_the_errors_outside_errors_py() -> None:
    assert "op_dbus.backends.netlink.NetlinkError" in ERRORS
    assert "op_dbus.ledger.store.LedgerCorrupt" in ERRORS


@pytest.mark.parametrize("name", sorted(set(ERRORS) - INTERNAL))
def test_every_error_is_under_the_root_and_in_the_tree(name: str) -> None:
    cls = ERRORS[name]
    assert issubclass(cls, errors.OpDbusError), f"{name} is not an OpDbusError"
    assert f" {cls.__name__} " in errors.__doc__ or f" {cls.__name__}\n" in (errors.__doc__ or ""), \
        f"{cls.__name__} is missing from the tree drawn in errors.py"
    assert isinstance(cls.exit_code, int)
