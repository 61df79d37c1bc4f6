"""Converge N stopped and disabled units to active + enabled, end to end: op-dbus next to what a user would run.

    python benchmarks/converge.py [--sizes 20,100] [--rounds 5]
    python benchmarks/converge.py --smoke            (N = 3, one round: proves the benchmark runs)
    python benchmarks/converge.py --peer-wheels DIR  (also pyinfra and Ansible, installed offline from DIR)

DIR is a wheelhouse made on the host with the lab's Python (Debian 12's python3), for example
`/usr/bin/python3 -m pip download --only-binary=:all: -d DIR pyinfra ansible-core`.

Boots a fresh lab machine, installs op-dbus in it from the offline wheelhouse, writes N Type=simple units, and
times inside the lab, each tool as a whole process (interpreter start, reading, verifying and recording
included, as a user would run it):

    op-dbus apply          one state file declaring the N units active and enabled
    systemctl (one call)   `systemctl enable --now U1..UN`
    shell loop             `for u in U1..UN; do systemctl enable --now $u; done`
    pyinfra, Ansible       `systemd.service` / `systemd_service`, when installed in the lab (skipped otherwise)

Every round resets the units (`systemctl disable --now`, untimed), then times each tool's converge and its no-op
re-run; the tools take turns in a rotating order. Medians and ratios to one batch systemctl are printed.
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
UNIT = "[Service]\nType=simple\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
OP_DBUS = "/opt/op-dbus/bin/op-dbus"
INSIDE = "/root/converge.py"
PEERS = "/opt/peers"


def unit_names(n: int) -> list[str]:
    return [f"conv-{i}.service" for i in range(n)]


# --- inside the lab ---------------------------------------------------------------------------------------------

def _timed(argv: list[str] | str) -> float:
    t = time.perf_counter()
    done = subprocess.run(argv, shell=isinstance(argv, str), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{argv!r} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - t


def _tools(n: int, work: Path) -> dict[str, list[str] | str]:
    names = unit_names(n)
    state = work / f"state-{n}.json"
    state.write_text(json.dumps({"version": 1, "plugins": {"systemd": {"units": {
        u: {"active_state": "active", "enabled": True} for u in names}}}}))
    state.chmod(0o600)
    tools: dict[str, list[str] | str] = {
        "op-dbus apply": [OP_DBUS, "--state-dir", str(work / f"state-dir-{n}"), "apply", str(state)],
        "systemctl (one call)": ["systemctl", "enable", "--now", *names],
        "shell loop": "for u in " + " ".join(names) + "; do systemctl enable --now $u; done",
    }
    if shutil.which("pyinfra"):
        tools["pyinfra"] = ["pyinfra", "-y", "@local", str(_pyinfra_deploy(names, work))]
    if shutil.which("ansible-playbook"):
        tools["Ansible"] = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(_ansible_playbook(names, work))]
    return tools


def _pyinfra_deploy(names: list[str], work: Path) -> Path:
    path = work / f"deploy-{len(names)}.py"
    path.write_text("from pyinfra.operations import systemd\n" + "".join(
        f"systemd.service(name={u!r}, service={u!r}, running=True, enabled=True)\n" for u in names))
    return path


def _ansible_playbook(names: list[str], work: Path) -> Path:
    path = work / f"play-{len(names)}.json"
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"ansible.builtin.systemd_service": {"name": "{{ item }}", "state": "started", "enabled": True},
         "loop": names}]}]))
    return path


def inside(sizes: list[int], rounds: int) -> dict[str, Any]:
    """Runs in the lab: every round resets the units, then times each tool's converge and no-op re-run."""
    work = Path("/root/converge-work")
    work.mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    for n in sizes:
        names = unit_names(n)
        tools = _tools(n, work)
        samples: dict[str, list[float]] = {}
        order = list(tools)
        for r in range(rounds):
            for tool in order[r % len(order):] + order[:r % len(order)]:
                subprocess.run(["systemctl", "disable", "--now", *names], check=True, capture_output=True)
                samples.setdefault(f"{tool}:converge", []).append(_timed(tools[tool]))
                samples.setdefault(f"{tool}:no-op", []).append(_timed(tools[tool]))
                active = subprocess.run(["systemctl", "is-active", *names], capture_output=True, text=True).stdout.split()
                if active != ["active"] * n:
                    raise SystemExit(f"{tool} left units not active: {active}")
        out[str(n)] = {k: statistics.median(v) for k, v in samples.items()} | {"tools": order}
    subprocess.run(["systemctl", "disable", "--now", *unit_names(max(sizes))], check=False, capture_output=True)
    return out


# --- on the host ------------------------------------------------------------------------------------------------

def run_in(lab: Any, sizes: list[int], rounds: int, peer_wheels: Path | None = None) -> dict[str, Any]:
    """Install op-dbus and the units in a booted lab machine, run the rounds there, return the medians."""
    lab.install_op_dbus()
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    if peer_wheels is not None:
        # the peers get their own venv so their dependencies cannot change op-dbus's
        shutil.copytree(peer_wheels, lab.root / "root/peer-wheels", dirs_exist_ok=True)
        lab.run(["python3", "-m", "venv", PEERS], timeout=300)
        lab.run([f"{PEERS}/bin/pip", "install", "-q", "--disable-pip-version-check", "--root-user-action=ignore",
                 "--no-index", "--find-links", "/root/peer-wheels", "pyinfra", "ansible-core"], timeout=900)
        path = f"{PEERS}/bin:{path}"
    for u in unit_names(max(sizes)):
        (lab.root / f"etc/systemd/system/{u}").write_text(UNIT)
    lab.run(["systemctl", "daemon-reload"])
    shutil.copy(Path(__file__), lab.root / INSIDE.lstrip("/"))
    res = lab.run(["/opt/op-dbus/bin/python", INSIDE, "--inside", "--sizes", ",".join(map(str, sizes)),
                   "--rounds", str(rounds)], timeout=3600, env={"PATH": path})
    return json.loads(str(res.stdout).strip().splitlines()[-1])  # type: ignore[no-any-return]


def report(results: dict[str, Any], rounds: int) -> str:
    lines = [f"converge N stopped+disabled Type=simple units to active+enabled, whole processes inside the lab; "
             f"medians of {rounds} interleaved round(s), seconds"]
    for n, m in results.items():
        base_c, base_n = m["systemctl (one call):converge"], m["systemctl (one call):no-op"]
        lines.append(f"\nN = {n}")
        lines.append(f"  {'tool':<22}{'converge':>10}{'no-op':>9}{'converge/systemctl':>20}{'no-op/systemctl':>17}")
        for tool in m["tools"]:
            c, o = m[f"{tool}:converge"], m[f"{tool}:no-op"]
            lines.append(f"  {tool:<22}{c:>10.3f}{o:>9.3f}{c / base_c:>19.2f}x{o / base_n:>16.2f}x")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20,100", help="unit counts (comma-separated)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="N = 3, one round")
    ap.add_argument("--peer-wheels", type=Path, metavar="DIR",
                    help="wheelhouse holding pyinfra and ansible-core to install in the lab (offline)")
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
        results = run_in(lab, sizes, args.rounds, args.peer_wheels)
    print(report(results, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
