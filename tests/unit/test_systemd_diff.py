"""The systemd plugin's diff beyond the data cases (tests/cases/systemd): scope and inverses."""

from __future__ import annotations

from op_dbus.plugins.systemd import SystemdPlugin, SystemdState, UnitState
from op_dbus.plugins.systemd import diff as systemd_diff


def test_diff_never_touches_undeclared_units() -> None:
    current = SystemdState(units={"a.service": UnitState(active_state="inactive", enabled=False, masked=False),
                                  "b.service": UnitState(active_state="inactive", enabled=False, masked=False)})
    desired = SystemdState(units={"a.service": UnitState(active_state="active")})
    assert {c.object for c in SystemdPlugin().diff(desired, current)} == {"a.service"}


def test_inverse_of_each_change_restores_before() -> None:
    plugin = SystemdPlugin()
    current = SystemdState(units={"a.service": UnitState(active_state="inactive", enabled=False, masked=False)})
    desired = SystemdState(units={"a.service": UnitState(active_state="active", enabled=True)})
    for change in plugin.diff(desired, current):
        inverse = systemd_diff.inverse(change)
        assert inverse.after == change.before and inverse.before == change.after
