"""`op-dbus query --discover-all` vs the busctl script a user would write, on a booted lab system's bus.

    python benchmarks/discover.py [ROUNDS | --smoke]

Boots a fresh lab machine (all its services running), installs op-dbus in it from wheels, and runs both
sides inside it as root, interleaved, ROUNDS times (default 5):

  op-dbus   `op-dbus -o json query --discover-all` (process start, connect, walk, JSON out)
  busctl    for every running service: `busctl tree --list SERVICE`, then `busctl introspect SERVICE PATH`
            for each object (introspect reads every interface's properties, as discovery does)

Both walk the same services (the ones with an owner; the bus itself excluded) and neither activates
anything. Prints medians, the ratio and objects per second. Not a test: it never asserts timing.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab import rootfs, wheels  # noqa: E402
from lab.machine import LabMachine  # noqa: E402

BUSCTL_SCRIPT = r"""
set -e
objects=0
for s in $(busctl list --acquired --no-legend | awk '{print $1}' | grep -v '^:' | grep -vx org.freedesktop.DBus); do
  for p in $(busctl tree --list "$s"); do
    busctl introspect "$s" "$p" > /dev/null
    objects=$((objects + 1))
  done
done
echo "$objects"
"""


def timed(lab: LabMachine, argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = str(lab.run(argv, timeout=600).stdout)
    return time.perf_counter() - started, out


def main() -> int:
    # --smoke: one round (a test runs this to prove the benchmark still runs)
    rounds = 1 if "--smoke" in sys.argv[1:] else int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with LabMachine(rootfs.ensure(), wheels.build()) as lab:
        exe = lab.install_op_dbus()
        (lab.root / "root/busctl-walk.sh").write_text(BUSCTL_SCRIPT)
        # nsenter + env cost the same for both sides; measure it to report it, not to subtract it
        spawn = [timed(lab, ["true"])[0] for _ in range(5)]
        ours: list[float] = []
        theirs: list[float] = []
        walk: list[float] = []
        counts: dict[str, int] = {}
        timed(lab, [exe, "-o", "json", "query", "--discover-all"])  # warm the page cache for both
        for _ in range(rounds):
            t, out = timed(lab, [exe, "-o", "json", "query", "--discover-all"])
            ours.append(t)
            summary = json.loads(out)["summary"]
            walk.append(summary["seconds"])
            counts["op-dbus"] = summary["objects"]
            t, out = timed(lab, ["sh", "/root/busctl-walk.sh"])
            theirs.append(t)
            counts["busctl"] = int(out.strip().splitlines()[-1])
    med_ours, med_theirs, med_walk = statistics.median(ours), statistics.median(theirs), statistics.median(walk)
    print(f"discovery of the lab's system bus, {rounds} interleaved rounds inside the lab; medians\n")
    print(f"{'variant':<44}{'wall':>10}{'objects':>9}{'objects/s':>11}")
    print(f"{'op-dbus query --discover-all (whole command)':<44}{med_ours:>9.3f}s{counts['op-dbus']:>9}"
          f"{counts['op-dbus'] / med_ours:>11.0f}")
    print(f"{'  of which the walk itself':<44}{med_walk:>9.3f}s{counts['op-dbus']:>9}"
          f"{counts['op-dbus'] / med_walk:>11.0f}")
    print(f"{'busctl tree + busctl introspect per object':<44}{med_theirs:>9.3f}s{counts['busctl']:>9}"
          f"{counts['busctl'] / med_theirs:>11.0f}")
    ratio = med_theirs / med_ours
    print(f"\nspeed-up: {ratio:.1f}x ({'faster' if ratio > 1 else 'SLOWER'} than the busctl script; bar: faster)")
    print(f"per-round wall times: op-dbus {[round(x, 3) for x in ours]}, busctl {[round(x, 3) for x in theirs]}")
    print(f"running a command in the lab (nsenter + env) costs {statistics.median(spawn) * 1e3:.1f} ms on both sides")
    return 0


if __name__ == "__main__":
    sys.exit(main())
