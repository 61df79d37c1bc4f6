"""Runs inside the lab (see benchmarks/drift.py): changes made behind op-dbus's back, timed to the agent's block.

    /opt/op-dbus/bin/python drift_inside.py MODE ROUNDS

For each round, the kinds of change are made in turn (interleaved): a unit stopped with systemctl, an address
removed with ip, an OVS port deleted with ovs-vsctl, the static hostname set with hostnamectl, linger enabled with
loginctl, and a PAM session opened for a user declared sessionless. The latency is from just before the command
starts to the time recorded in the block the agent commits (a `drift` block in shadow mode, the repair's `apply`
block in enforce mode); both clocks are this machine's. Prints one JSON line: samples per kind, the commands' own
durations, and the agent's idle CPU and memory.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

STATE_DIR = Path("/var/lib/op-dbus")
CHANGES = {
    "unit stopped": (["systemctl", "stop", "nginx.service"], ["systemctl", "start", "nginx.service"]),
    "address removed": (["ip", "addr", "del", "198.18.9.1/24", "dev", "bnbr0"],
                        ["ip", "addr", "add", "198.18.9.1/24", "dev", "bnbr0"]),
    "OVS port deleted": (["ovs-vsctl", "del-port", "bnovs0", "bnv2"], ["ovs-vsctl", "add-port", "bnovs0", "bnv2"]),
    "hostname set": (["hostnamectl", "set-hostname", "bench-other"], ["hostnamectl", "set-hostname", "bench-host"]),
    "linger enabled": (["loginctl", "enable-linger", "labuser"], ["loginctl", "disable-linger", "labuser"]),
    # a unit name of its own each time: in enforce mode the previous one may still be on its way out
    "session opened": (["sh", "-c", "exec systemd-run -q --unit=bench-pam-$$ -p CollectMode=inactive-or-failed "
                        "-p PAMName=login -p User=mallory /bin/sleep 600"],
                       ["systemctl", "stop", "bench-pam-*.service"]),
}


def head(db: sqlite3.Connection) -> tuple[int, str, float]:
    idx, leaf = db.execute("SELECT idx, leaf FROM blocks ORDER BY idx DESC LIMIT 1").fetchone()
    header = json.loads(leaf)
    when = datetime.strptime(header["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=None)
    epoch = (when - datetime(1970, 1, 1)).total_seconds()
    return idx, header["kind"], epoch


def wait_block(db: sqlite3.Connection, after: int, kind: str, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for idx, leaf in db.execute("SELECT idx, leaf FROM blocks WHERE idx > ? ORDER BY idx", (after,)):
            header = json.loads(leaf)
            if header["kind"] == kind:
                when = datetime.strptime(header["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
                return (when - datetime(1970, 1, 1)).total_seconds()
            after = idx
        time.sleep(0.001)
    raise TimeoutError(f"no {kind} block within {timeout} s")


def settled() -> bool:
    try:
        status = json.loads((STATE_DIR / "agent.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("open_drift") == 0


def wait_settled(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not settled():
        if time.monotonic() > deadline:
            raise TimeoutError("the agent still reports open drift")
        time.sleep(0.005)
    time.sleep(0.4)  # let the last repair's settle time and events pass


def agent_pid() -> int:
    return int(subprocess.run(["systemctl", "show", "-P", "MainPID", "op-dbus.service"], capture_output=True,
                              text=True, check=True).stdout)


def idle(seconds: float = 30.0) -> dict[str, float]:
    pid = agent_pid()
    tick = 100.0  # USER_HZ

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    before, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu() - before, time.monotonic() - t0
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return {"cpu_percent": 100 * used / wall, "rss_mb": rss / 1024}


def main() -> None:
    mode, rounds = sys.argv[1], int(sys.argv[2])
    kind = "drift" if mode == "shadow" else "apply"
    db = sqlite3.connect(f"file:{STATE_DIR / 'ledger.db'}?mode=ro", uri=True, isolation_level=None)
    samples: dict[str, list[float]] = {k: [] for k in CHANGES}
    commands: dict[str, list[float]] = {k: [] for k in CHANGES}
    wait_settled()
    for _ in range(rounds):
        for label, (change, restore) in CHANGES.items():
            last, _kind, _when = head(db)
            t0 = time.time()
            done = subprocess.run(change, capture_output=True, text=True)
            if done.returncode != 0:
                journal = subprocess.run(["journalctl", "-u", "op-dbus.service", "-n", "8", "-o", "cat"],
                                         capture_output=True, text=True).stdout
                raise SystemExit(f"{' '.join(change)} failed ({done.returncode}): {done.stderr.strip()}\n{journal}")
            commands[label].append(time.time() - t0)
            committed = wait_block(db, last, kind)
            samples[label].append(committed - t0)
            if mode == "shadow":
                subprocess.run(restore, check=True, capture_output=True)
            wait_settled()
    print(json.dumps({"mode": mode, "samples": samples, "commands": commands, "idle": idle()}))


if __name__ == "__main__":
    main()
