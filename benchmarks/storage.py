"""Mount and unmount of a loop-device filesystem: `op-dbus apply` (storage plugin) vs `udisksctl`, in the lab.

Both go through the same UDisks2 in a booted lab machine (see tests/storage/conftest.py for how udevd and udisksd
run there). One round: op-dbus mounts (apply `mounted: true`), then unmounts (`mounted: false`); then udisksctl
does the same; rounds interleave the two, and the medians and their ratio are printed. Each op-dbus apply is a
whole command: start-up, query, diff, apply, verification and the audit-log entry.

    python benchmarks/storage.py [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

from lab import rootfs as lab_rootfs  # noqa: E402
from lab import wheels as lab_wheels  # noqa: E402
from tests.storage.conftest import StorageLab, udisks_lab  # noqa: E402


def timed(lab: StorageLab, argv: list[str], state: dict[str, object] | None = None) -> float:
    started = time.perf_counter()
    r = lab.op(*argv, state=state) if argv[:1] == ["apply"] else lab.sh(" ".join(argv), check=False)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"{argv} failed: {r.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="one round: proves the benchmark runs")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    with tempfile.TemporaryDirectory() as tmp, \
            udisks_lab(lab_rootfs.ensure(), lab_wheels.build(), Path(tmp), size_mb=64) as lab:
        lab.sh("mkdir -p /srv/bench")
        base = {"type": "ext4", "mount_point": "/srv/bench"}
        timed(lab, ["apply"], {"filesystems": {lab.device: {**base, "mounted": False}}})
        ours: dict[str, list[float]] = {"mount": [], "unmount": []}
        theirs: dict[str, list[float]] = {"mount": [], "unmount": []}
        for _ in range(rounds):
            ours["mount"].append(timed(lab, ["apply"], {"filesystems": {lab.device: {**base, "mounted": True}}}))
            ours["unmount"].append(timed(lab, ["apply"], {"filesystems": {lab.device: {**base, "mounted": False}}}))
            theirs["mount"].append(timed(lab, ["udisksctl", "mount", "--no-user-interaction", "-b", lab.device]))
            theirs["unmount"].append(timed(lab, ["udisksctl", "unmount", "--no-user-interaction", "-b", lab.device]))
        print(f"storage: {rounds} round(s), loop device {lab.device} (ext4, fstab entry /srv/bench), medians")
        print(f"{'':<10} {'op-dbus apply':>14} {'udisksctl':>10} {'ratio':>7}")
        for what in ("mount", "unmount"):
            a, b = statistics.median(ours[what]), statistics.median(theirs[what])
            print(f"{what:<10} {a * 1000:>11.0f} ms {b * 1000:>7.0f} ms {a / b:>6.1f}x")


if __name__ == "__main__":
    main()
