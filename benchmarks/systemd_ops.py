"""op-dbus's native systemd path vs `systemctl`, side by side in one run on a booted lab system.

    python benchmarks/systemd_ops.py [ROUNDS | --smoke]

Boots a fresh lab machine, installs op-dbus in it from wheels, and runs benchmarks/systemd_inside.py
there as root, so both sides pay the same costs (no nsenter on either side). Prints medians and ratios.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab import rootfs, wheels  # noqa: E402
from lab.machine import LabMachine  # noqa: E402

BARS = {  # (native key, CLI key, minimum speed-up)
    "read the state of 50 units": ("read50.native", "read50.systemctl", 10.0),
    "  of which: active state only": ("active50.native", "active50.systemctl", None),
    "enable + disable a unit": ("enable_disable.native", "enable_disable.systemctl", 10.0),
    "start + stop a Type=simple unit": ("start_stop.native", "start_stop.systemctl", None),
}


def main() -> int:
    # --smoke: one round (a test runs this to prove the benchmark still runs)
    rounds = "1" if "--smoke" in sys.argv[1:] else sys.argv[1] if len(sys.argv) > 1 else "30"
    with LabMachine(rootfs.ensure(), wheels.build()) as lab:
        lab.install_op_dbus()
        for i in range(10):
            (lab.root / f"etc/systemd/system/bench-{i}.service").write_text(
                "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n")
        lab.run(["systemctl", "daemon-reload"])
        shutil.copy(ROOT / "benchmarks/systemd_inside.py", lab.root / "root/systemd_inside.py")
        started = time.monotonic()
        out = lab.run(["/opt/op-dbus/bin/python", "/root/systemd_inside.py", rounds], timeout=1800).stdout
        elapsed = time.monotonic() - started
    m = json.loads(str(out).strip().splitlines()[-1])
    host_help = []
    for _ in range(int(rounds)):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "op_dbus", "--help"], check=True, stdout=subprocess.DEVNULL)
        host_help.append(time.perf_counter() - t)
    host_help.sort()

    print(f"systemd operations, {rounds} interleaved rounds inside the lab system ({elapsed:.0f} s); medians\n")
    print(f"{'operation':<34}{'op-dbus':>11}{'systemctl':>12}{'speed-up':>10}  bar")
    for label, (native, cli, bar) in BARS.items():
        ratio = m[cli] / m[native]
        verdict = "" if bar is None else ("ok" if ratio >= bar else "MISSED") + f" (>= {bar:.0f}x)"
        print(f"{label:<34}{m[native] * 1e3:>9.2f}ms{m[cli] * 1e3:>10.2f}ms{ratio:>9.1f}x  {verdict}")
    print(f"{'read 50 units, new connection':<34}{m['read50.native_cold'] * 1e3:>9.2f}ms"
          f"{m['read50.systemctl'] * 1e3:>10.2f}ms{m['read50.systemctl'] / m['read50.native_cold']:>9.1f}x")
    print(f"\nreading enablement: systemd computes each unit's UnitFileState by scanning the unit directories; "
          f"for 50 units that costs {(m['read50.native'] - m['active50.native']) * 1e3:.0f} ms of op-dbus's "
          f"{m['read50.native'] * 1e3:.0f} ms, and systemctl pays it too")
    reload_share = m["reload_x2.native"] / m["enable_disable.native"]
    print(f"\nenable + disable: {m['reload_x2.native'] * 1e3:.0f} ms of it ({reload_share * 100:.0f}%) is systemd's own "
          "daemon reload (two of them), which `systemctl enable/disable` does too;\n  without it op-dbus spends "
          f"{(m['enable_disable.native'] - m['reload_x2.native']) * 1e3:.1f} ms and systemctl "
          f"{(m['enable_disable.systemctl'] - m['reload_x2.native']) * 1e3:.1f} ms")
    print(f"enable + disable 10 units in one apply: {m['enable_disable10.native'] * 1e3:.0f} ms; "
          f"`systemctl enable U1..U10` + `disable U1..U10`: {m['enable_disable10.systemctl_best'] * 1e3:.0f} ms "
          f"({m['enable_disable10.systemctl_best'] / m['enable_disable10.native']:.1f}x); one systemctl per unit: "
          f"{m['enable_disable10.systemctl_loop'] * 1e3:.0f} ms "
          f"({m['enable_disable10.systemctl_loop'] / m['enable_disable10.native']:.1f}x)")
    # start/stop: the unit's own start is the same work for both; the rest is each tool's overhead
    overhead_cli = m["start_stop.systemctl"] - m["start_stop.native"]
    print(f"\nstart+stop: systemctl spends {overhead_cli * 1e3:.1f} ms more per start+stop pair "
          f"({overhead_cli / m['start_stop.systemctl'] * 100:.0f}% of its time) than the native path;"
          f" a bare process spawn costs {m['true.process'] * 1e3:.2f} ms here")
    print(f"\n`op-dbus --help` wall time: {m['help.op-dbus'] * 1e3:.0f} ms in the lab, "
          f"{host_help[len(host_help) // 2] * 1e3:.0f} ms on the host (bar: < 150 ms); "
          f"`systemctl --help` {m['help.systemctl'] * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
