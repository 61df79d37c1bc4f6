"""Drift detection and repair latency of `op-dbus run`, against the polling intervals of the incumbents.

    python benchmarks/drift.py [ROUNDS | --smoke]

Boots a fresh lab machine, installs op-dbus there with install.sh (offline, from the lab's wheelhouse) as a
systemd service, declares a unit, a bridge with an address and an OVS bridge with a port, and runs
benchmarks/drift_inside.py in it: first in shadow mode (time to the drift block), then in enforce mode (time
to the repair's block). Also declares the static hostname (hostname1), a user's linger and a user without
sessions (login1). Changes are made with the system's own tools (systemctl, ip, ovs-vsctl, hostnamectl,
loginctl, a PAM session), the kinds interleaved in every round. Also measures the agent's idle CPU and
resident memory. Prints medians.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab import rootfs, wheels  # noqa: E402
from lab.machine import LabMachine  # noqa: E402

STATE = {"version": 1, "plugins": {
    "systemd": {"units": {"nginx.service": {"active_state": "active", "enabled": True}}},
    "net": {"interfaces": [
        {"name": "bnbr0", "type": "linux-bridge", "state": "up",
         "ipv4": {"enabled": True, "address": [{"ip": "198.18.9.1", "prefix": 24}]}},
        {"name": "bnv2", "type": "veth", "state": "up", "veth": {"peer": "bnv3"}},
        {"name": "bnovs0", "type": "ovs-bridge", "ports": ["bnv2"]},
    ]},
    "dbus": {"org.freedesktop.hostname1": {"/org/freedesktop/hostname1": {
        "org.freedesktop.hostname1": {"StaticHostname": "bench-host"}}}},
    "login1": {"users": {"labuser": {"linger": False}}, "sessions": {"absent_for_users": ["mallory"]}},
}}
INCUMBENTS = {"Puppet (runinterval 30 min)": 1800, "Chef (interval 30 min)": 1800, "CFEngine / Rudder (5 min)": 300}
BARS = {"shadow": 0.100, "enforce": 0.500}  # seconds: detection, repair
IDLE_BARS = {"cpu_percent": 1.0, "rss_mb": 80.0}


def install(lab: LabMachine, *args: str) -> None:
    r = lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/wheels", "--no-proxmox", *args],
                check=False, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"install.sh failed:\n{r.stdout}{r.stderr}")


def main() -> int:
    # --smoke: one round (a test runs this to prove the benchmark still runs)
    rounds = "1" if "--smoke" in sys.argv[1:] else sys.argv[1] if len(sys.argv) > 1 else "30"
    results = {}
    with LabMachine(rootfs.ensure(), wheels.build()) as lab:
        dest = lab.root / "root/op-dbus-install"
        dest.mkdir(parents=True)
        shutil.copy(ROOT / "install.sh", dest)
        shutil.copytree(ROOT / "packaging", dest / "packaging")
        shutil.copy(ROOT / "benchmarks/drift_inside.py", lab.root / "root/drift_inside.py")
        # many stops and starts in a row: lift systemd's start rate limit for the unit under test
        dropin = lab.root / "etc/systemd/system/nginx.service.d"
        dropin.mkdir(parents=True)
        (dropin / "bench.conf").write_text("[Unit]\nStartLimitIntervalSec=0\n")
        lab.run(["systemctl", "daemon-reload"])
        lab.run(["sh", "-c", "id mallory || useradd -m mallory"])
        (lab.root / "etc/op-dbus").mkdir()
        state = lab.root / "etc/op-dbus/state.json"
        state.write_text(json.dumps(STATE))
        state.chmod(0o600)
        started = time.monotonic()
        for mode in ("shadow", "enforce"):
            install(lab, "--mode", mode)
            if mode == "shadow":  # converge once, so shadow starts from a matching system
                lab.run(["/opt/op-dbus/bin/op-dbus", "apply", "/etc/op-dbus/state.json"])
                lab.run(["systemctl", "restart", "op-dbus.service"])
            out = lab.run(["/opt/op-dbus/bin/python", "/root/drift_inside.py", mode, rounds], timeout=3600).stdout
            results[mode] = json.loads(str(out).strip().splitlines()[-1])
        elapsed = time.monotonic() - started

    print(f"op-dbus run: change behind its back -> block committed; {rounds} rounds per kind, interleaved "
          f"({elapsed:.0f} s); medians (p90)\n")
    print(f"{'change':<20}{'detect (shadow)':>18}{'repair (enforce)':>19}{'command itself':>16}")
    worst = {"shadow": 0.0, "enforce": 0.0}
    for label in results["shadow"]["samples"]:
        cells = []
        for mode in ("shadow", "enforce"):
            s = sorted(results[mode]["samples"][label])
            med, p90 = statistics.median(s), s[int(0.9 * (len(s) - 1))]
            worst[mode] = max(worst[mode], med)
            cells.append(f"{med * 1e3:>8.1f} ms ({p90 * 1e3:.0f})")
        cmd = statistics.median(results["shadow"]["commands"][label])
        print(f"{label:<20}{cells[0]:>18}{cells[1]:>19}{cmd * 1e3:>13.1f} ms")
    print()
    for mode, what in (("shadow", "detection"), ("enforce", "repair")):
        verdict = "ok" if worst[mode] < BARS[mode] else "MISSED"
        print(f"bar: {what} median under {BARS[mode] * 1e3:.0f} ms: worst kind {worst[mode] * 1e3:.1f} ms -> {verdict}")
    for mode in ("shadow", "enforce"):
        idle = results[mode]["idle"]
        verdicts = ", ".join(f"{k} {idle[k]:.2f} ({'ok' if idle[k] < bar else 'MISSED'} < {bar:g})"
                             for k, bar in IDLE_BARS.items())
        print(f"idle agent ({mode}, 30 s): {verdicts}")
    print("\nagainst polling (expected detection = half the interval; a change reverted within the interval is never seen):")
    detect = worst["shadow"]
    for name, interval in INCUMBENTS.items():
        print(f"  {name:<28} ~{interval / 2:>6.0f} s   op-dbus is ~{interval / 2 / detect:,.0f}x sooner")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
