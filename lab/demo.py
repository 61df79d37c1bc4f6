"""`make demo`: the deployment guide's "Enterprise Application Stack" on a freshly booted lab system.

op-dbus is installed inside the lab from wheels and run there as root, exactly as on a real server: the
state file, its diff, the apply, the audit log, a clean verify, then a unit stopped behind op-dbus's back
and the verify that catches it.
"""

from __future__ import annotations

import json
import shlex
import sys

from lab import rootfs, wheels
from lab.machine import LabMachine

STATE = {
    "version": 1,
    "plugins": {
        "systemd": {
            "units": {
                "postgresql.service": {"active_state": "active", "enabled": True},
                "redis.service": {"active_state": "active", "enabled": True},
                "nginx.service": {"active_state": "active", "enabled": True},
                "app-backend.service": {"active_state": "active", "enabled": True},
                "app-worker.service": {"active_state": "active", "enabled": True},
            }
        }
    },
}


def banner(text: str) -> None:
    print(f"\n\033[1;36m## {text}\033[0m" if sys.stdout.isatty() else f"\n## {text}", flush=True)


def step(lab: LabMachine, command: str, *, expect: tuple[int, ...] = (0,)) -> int:
    print(f"lab# {command}", flush=True)
    result = lab.run(["sh", "-c", command], check=False, env={"TERM": "dumb"})
    sys.stdout.write(str(result.stdout))
    sys.stdout.write(str(result.stderr))
    print(f"(exit {result.returncode})", flush=True)
    if result.returncode not in expect:
        raise SystemExit(f"demo: `{command}` exited {result.returncode}, expected {expect}")
    return result.returncode


def main() -> int:
    banner("Booting the lab: a Debian 12 system container with systemd, PostgreSQL, Redis and nginx")
    with LabMachine(rootfs.ensure(), wheels.build()) as lab:
        op = lab.install_op_dbus()
        (lab.root / "etc/op-dbus").mkdir(exist_ok=True)
        state = lab.root / "etc/op-dbus/state.json"
        state.write_text(json.dumps(STATE, indent=2) + "\n")
        state.chmod(0o600)
        q = shlex.quote

        banner("The desired state (the deployment guide's Enterprise Application Stack)")
        step(lab, "cat /etc/op-dbus/state.json")
        banner("Before: what systemd says")
        step(lab, "systemctl is-active postgresql redis nginx app-backend app-worker; "
                  "systemctl is-enabled app-backend app-worker", expect=(0, 1, 3))
        banner("Preview the changes (exit 3: there are differences)")
        step(lab, f"{q(op)} diff /etc/op-dbus/state.json", expect=(3,))
        banner("Apply: converge over D-Bus, verify, record a block")
        step(lab, f"{q(op)} apply /etc/op-dbus/state.json")
        step(lab, "systemctl is-active postgresql redis nginx app-backend app-worker")
        banner("Apply again: nothing to change, still recorded")
        step(lab, f"{q(op)} apply /etc/op-dbus/state.json")
        banner("The audit log")
        step(lab, f"COLUMNS=120 {q(op)} blockchain list")
        step(lab, f"{q(op)} verify --full")
        banner("Verify the live system against the last block")
        step(lab, f"{q(op)} verify --current")
        banner("Someone stops nginx behind op-dbus's back...")
        step(lab, "systemctl stop nginx.service")
        banner("...and verify catches it (exit 3: drift)")
        step(lab, f"{q(op)} verify --current", expect=(3,))
        banner("Re-apply to repair it")
        step(lab, f"{q(op)} apply /etc/op-dbus/state.json")
        step(lab, f"{q(op)} verify --current")
    banner("Done: the lab system was powered off; every boot starts from the pristine image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
