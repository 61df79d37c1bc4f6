"""Running the real `op-dbus` command against a lab machine, and reading the machine with its own tools."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STACK = {
    "version": 1,
    "plugins": {"systemd": {"units": {
        "postgresql.service": {"active_state": "active", "enabled": True},
        "redis.service": {"active_state": "active", "enabled": True},
        "nginx.service": {"active_state": "active", "enabled": True},
        "app-backend.service": {"active_state": "active", "enabled": True},
        "app-worker.service": {"active_state": "active", "enabled": True},
    }}},
}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class OpDbus:
    """The `op-dbus` command on the host, aimed at a lab machine's system bus, with its own state dir."""

    def __init__(self, bus_address: str, state_dir: Path) -> None:
        self.bus_address = bus_address
        self.state_dir = state_dir

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> Result:
        argv = [sys.executable, "-m", "op_dbus", "--bus", self.bus_address, "--state-dir", str(self.state_dir), *args]
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        return Result(p.returncode, p.stdout, p.stderr)

    def blocks(self) -> list[dict[str, Any]]:
        r = self("-o", "json", "blockchain", "list")
        assert r.code == 0, r.err
        return r.json()  # type: ignore[no-any-return]


def write_state(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


def systemctl(lab: Any, verb: str, *units: str) -> list[str]:
    """Ask the container's own systemctl (the oracle), one answer per unit."""
    return str(lab.run(["systemctl", verb, *units], check=False).stdout).split()


def install_unit(lab: Any, name: str, body: str) -> None:
    (lab.root / "etc/systemd/system" / name).write_text(body)
    lab.run(["systemctl", "daemon-reload"])


# What systemctl calls the stack's units: `redis.service` is an alias, and `systemctl is-enabled` reports an
# alias as "alias", so the oracle asks about the unit it names.
STACK_UNITS = [u.replace("redis.service", "redis-server.service") for u in STACK["plugins"]["systemd"]["units"]]
