"""Hundreds of units in one apply: the calls fanned out over them stay within what dbus-daemon accepts at once."""

from __future__ import annotations

import json
from typing import Any

UNIT = "[Service]\nType=simple\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
N = 150  # more than dbus-daemon's 128 replies pending per connection, for check and query each


def test_hundreds_of_units_converge_and_reapply_as_a_no_op(lab: Any) -> None:
    exe = lab.install_op_dbus()
    names = [f"many-{i}.service" for i in range(N)]
    for name in names:
        (lab.root / f"etc/systemd/system/{name}").write_text(UNIT)
    lab.run(["systemctl", "daemon-reload"])
    state = lab.root / "root/many.json"
    state.write_text(json.dumps({"version": 1, "plugins": {"systemd": {"units": {
        n: {"active_state": "active", "enabled": True} for n in names}}}}))
    state.chmod(0o600)
    try:
        first = lab.run([exe, "--state-dir", "/root/many-state", "apply", "/root/many.json"], check=False, timeout=600)
        assert first.returncode == 0, first.stderr
        assert f"applied {2 * N} change(s)" in first.stdout
        active = str(lab.run(["systemctl", "is-active", *names], check=False).stdout).split()
        assert active == ["active"] * N
        again = lab.run([exe, "--state-dir", "/root/many-state", "apply", "/root/many.json"], check=False, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "applied 0 change(s)" in again.stdout
    finally:
        lab.run(["systemctl", "disable", "--now", *names], check=False, timeout=600)
