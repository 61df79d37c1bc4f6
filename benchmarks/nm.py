"""Create and read N NetworkManager profiles: op-dbus next to `nmcli`, whole processes inside the lab.

    python benchmarks/nm.py [--sizes 20] [--rounds 5]
    python benchmarks/nm.py --smoke            (N = 3, one round: proves the benchmark runs)

Boots a fresh lab machine, starts NetworkManager in it, installs op-dbus from the offline wheelhouse, and times
inside the lab, each tool as a whole process (interpreter start, verifying and recording included):

    apply   op-dbus apply of one state file declaring N Ethernet profiles (manual IPv4 address, DNS)
            vs `nmcli connection add ...` once per profile (nmcli has no batch form)
    query   op-dbus diff of that file (reads the N profiles, compares, finds nothing to do)
            vs `nmcli -g ... connection show ID` once per profile

Every round deletes the profiles first (untimed); the tools take turns in a rotating order. Medians and the
ratio op-dbus / nmcli are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OP_DBUS = "/opt/op-dbus/bin/op-dbus"
INSIDE = "/root/nm-bench.py"
FIELDS = "connection.interface-name,ipv4.method,ipv4.addresses,ipv4.dns,connection.autoconnect"


def ids(n: int) -> list[str]:
    return [f"bench{i}" for i in range(n)]


def address(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}/16"


# --- inside the lab ---------------------------------------------------------------------------------------------

def _timed(argv: list[str] | str) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, shell=isinstance(argv, str), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def _reset(n: int) -> None:
    listed = subprocess.run(["nmcli", "-g", "NAME", "connection", "show"], check=True, capture_output=True,
                            text=True).stdout.split()
    gone = [i for i in ids(n) if i in listed]
    if gone:
        subprocess.run(["nmcli", "connection", "delete", *gone], check=True, capture_output=True)


def _state(n: int, work: Path) -> Path:
    path = work / f"nm-{n}.json"
    path.write_text(json.dumps({"version": 1, "plugins": {"networkmanager": {"connections": {
        pid: {"connection": {"type": "802-3-ethernet", "interface-name": f"nb{i}", "autoconnect": False},
              "ipv4": {"method": "manual", "addresses": [address(i)], "dns": ["198.18.255.53"]}}
        for i, pid in enumerate(ids(n))}}}}))
    path.chmod(0o600)
    return path


def _nmcli_add(n: int) -> str:
    return "; ".join(f"nmcli connection add type ethernet con-name {pid} ifname nb{i} autoconnect no "
                     f"ipv4.method manual ipv4.addresses {address(i)} ipv4.dns 198.18.255.53"
                     for i, pid in enumerate(ids(n))) + " >/dev/null"


def _nmcli_show(n: int) -> str:
    return "; ".join(f"nmcli -g {FIELDS} connection show {pid}" for pid in ids(n)) + " >/dev/null"


def inside(sizes: list[int], rounds: int) -> dict[str, Any]:
    work = Path("/root/nm-bench")
    work.mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    for n in sizes:
        state = _state(n, work)
        op = [OP_DBUS, "--state-dir", str(work / "state-dir")]
        tools = {"op-dbus": ([*op, "apply", str(state)], [*op, "diff", str(state)]),
                 "nmcli": (_nmcli_add(n), _nmcli_show(n))}
        samples: dict[str, list[float]] = {}
        order = list(tools)
        for r in range(rounds):
            for tool in order[r % len(order):] + order[:r % len(order)]:
                _reset(n)
                apply_cmd, query_cmd = tools[tool]
                samples.setdefault(f"{tool}:apply", []).append(_timed(apply_cmd))
                samples.setdefault(f"{tool}:query", []).append(_timed(query_cmd))
                listed = subprocess.run(["nmcli", "-g", "NAME", "connection", "show"], capture_output=True,
                                        text=True).stdout.split()
                if not set(ids(n)) <= set(listed):
                    raise SystemExit(f"{tool} did not create every profile")
        _reset(n)
        out[str(n)] = {k: statistics.median(v) for k, v in samples.items()}
    return out


# --- on the host ------------------------------------------------------------------------------------------------

def run_in(lab: Any, sizes: list[int], rounds: int) -> dict[str, Any]:
    lab.install_op_dbus()
    lab.run(["sh", "-c", "printf '[main]\\nno-auto-default=*\\n' > /etc/NetworkManager/conf.d/90-bench.conf"])
    lab.run(["systemctl", "start", "NetworkManager.service"])
    shutil.copy(Path(__file__), lab.root / INSIDE.lstrip("/"))
    res = lab.run(["/opt/op-dbus/bin/python", INSIDE, "--inside", "--sizes", ",".join(map(str, sizes)),
                   "--rounds", str(rounds)], timeout=3600)
    return json.loads(str(res.stdout).strip().splitlines()[-1])  # type: ignore[no-any-return]


def report(results: dict[str, Any], rounds: int) -> str:
    lines = [f"N NetworkManager profiles, whole processes inside the lab; medians of {rounds} interleaved "
             "round(s), seconds"]
    for n, m in results.items():
        lines.append(f"\nN = {n}")
        lines.append(f"  {'step':<8}{'op-dbus':>10}{'nmcli':>10}{'op-dbus/nmcli':>16}")
        for step in ("apply", "query"):
            a, b = m[f"op-dbus:{step}"], m[f"nmcli:{step}"]
            lines.append(f"  {step:<8}{a:>10.3f}{b:>10.3f}{a / b:>15.2f}x")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20", help="profile counts (comma-separated)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="N = 3, one round")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the part that runs in the lab
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.rounds = "3", 1
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.inside:
        print(json.dumps(inside(sizes, args.rounds)))
        return 0
    sys.path.insert(0, str(ROOT))
    from lab import rootfs, wheels
    from lab.machine import LabMachine

    with LabMachine(rootfs.ensure(), wheels.build()) as lab:
        results = run_in(lab, sizes, args.rounds)
    print(report(results, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
