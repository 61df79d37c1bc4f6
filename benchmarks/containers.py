"""Container backends: op-dbus (plugin in-process) vs the CLI a user would script, per backend, in one run.

    python benchmarks/containers.py [--rounds N] [--backends podman,docker,lxc,nspawn] [--smoke]

For each backend two operations, interleaved round by round (the order alternates) and summarised by medians:
  create+start 10 containers from an imported template, then
  query 50 existing containers (op-dbus: the plugin's scoped query on a fresh connection).
CLI baselines: `podman run -d` x10 and `podman ps -a --format json` (podman and docker: the engine here is
podman, and no docker CLI is installed); `lxc-start -d` x10 (after writing the same configs) and
`lxc-ls -f`; `machinectl clone`+`machinectl start` x10 and `machinectl list` + `list-images` (inside the lab,
one process entering it per variant run). Removal between rounds is not timed. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from op_dbus.plugin import Context, Settings, UndoLog  # noqa: E402
from op_dbus.plugins.containers import ContainerConfig, ContainersPlugin, ContainersState, Template  # noqa: E402
from tests.containers.conftest import make_rootfs, make_tarball, start_podman, stop_podman  # noqa: E402

IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
IDLE_SH = "trap 'exit 0' TERM; while :; do sleep 1; done"
PLUGIN = ContainersPlugin()


def desired(backend: str, names: list[str], tarball: Path) -> ContainersState:
    return ContainersState(templates={"bench": Template(source=str(tarball))},
                           containers={n: ContainerConfig(backend=backend, image="bench", command=IDLE)  # type: ignore[arg-type]
                                       for n in names})


async def converge(settings: Settings, state: ContainersState) -> None:
    async with Context(settings) as ctx:
        current = await PLUGIN.query(ctx, state)
        changes = PLUGIN.diff(state, current)
        await PLUGIN.apply(changes, ctx, UndoLog())


async def query(settings: Settings, state: ContainersState) -> None:
    async with Context(settings) as ctx:
        got = await PLUGIN.query(ctx, state)
    assert len(got.containers) == len(state.containers), (len(got.containers), len(state.containers))


class Timings:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str, str], list[float]] = {}

    async def measure(self, key: tuple[str, str, str], fn: Callable[[], Awaitable[Any] | Any]) -> None:
        t = time.perf_counter()
        result = fn()
        if asyncio.iscoroutine(result):
            await result
        self.data.setdefault(key, []).append(time.perf_counter() - t)

    def report(self) -> None:
        print(f"\n{'backend':<8} {'operation':<22} {'op-dbus ms':>11} {'CLI ms':>9} {'CLI/op-dbus':>12}  baseline")
        for backend, op in dict.fromkeys((b, o) for b, o, _ in self.data):
            ours = statistics.median(self.data[(backend, op, "op-dbus")]) * 1000
            (cli_key,) = [k for k in self.data if k[:2] == (backend, op) and k[2] != "op-dbus"]
            cli = statistics.median(self.data[cli_key]) * 1000
            print(f"{backend:<8} {op:<22} {ours:>11.1f} {cli:>9.1f} {cli / ours:>11.2f}x  {cli_key[2]}")


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout


async def engine_api(timings: Timings, rounds: int, tarball: Path, backends: list[str]) -> None:
    pod, proc = start_podman(Path(tempfile.mkdtemp(prefix="op-dbus-bench-podman-")))
    try:
        for backend in backends:
            await engine_backend(timings, rounds, tarball, backend, pod)
    finally:
        stop_podman(pod, proc)


async def engine_backend(timings: Timings, rounds: int, tarball: Path, backend: str, pod: Any) -> None:
    env = {**os.environ, **pod.env}
    base = ["podman", "--root", str(pod.dir / "root"), "--runroot", str(pod.dir / "run")]
    key = "podman_socket" if backend == "podman" else "docker_socket"
    settings = Settings(extra={"containers": {key: str(pod.socket)}})
    await converge(settings, desired(backend, [], tarball).model_copy(update={"containers": {
        "warm": ContainerConfig(backend=backend, image="bench", command=IDLE)}}))  # type: ignore[arg-type]
    image = "localhost/op-dbus-template/bench:latest"
    for r in range(rounds):
        names = [f"{backend}-b{r}-{i}" for i in range(10)]
        clinames = [f"{backend}-c{r}-{i}" for i in range(10)]

        async def ours(names: list[str] = names) -> None:
            await converge(settings, desired(backend, names, tarball))

        def cli(names: list[str] = clinames) -> None:
            for n in names:
                run(*base, "run", "-d", "--name", n, "--network", "none", image, *IDLE, env=env)

        variants = [("op-dbus", ours), ("podman run -d x10", cli)]
        for label, fn in variants if r % 2 == 0 else variants[::-1]:
            await timings.measure((backend, "create+start 10", label), fn)
        run(*base, "rm", "-f", "-t", "0", *names, *clinames, env=env)
    many = [f"{backend}-q{i}" for i in range(50)]
    for n in many:
        run(*base, "create", "--name", n, "--network", "none", "--label", "op-dbus.managed=true",
            "--label", "op-dbus.image=bench", image, *IDLE, env=env)
    state = desired(backend, many, tarball)

    async def ours_query() -> None:
        await query(settings, state)

    def cli_query() -> None:
        run(*base, "ps", "-a", "--format", "json", env=env)

    for r in range(rounds * 2):
        variants = [("op-dbus", ours_query), ("podman ps -a --format json", cli_query)]
        for label, fn in variants if r % 2 == 0 else variants[::-1]:
            await timings.measure((backend, "query 50", label), fn)
    run(*base, "rm", "-af", "-t", "0", env=env)


async def lxc(timings: Timings, rounds: int, tarball: Path) -> None:
    from op_dbus.backends.containers import ContainerSpec
    from op_dbus.backends.containers.lxc import LxcBackend

    path = Path(tempfile.mkdtemp(prefix="op-dbus-bench-lxc-"))
    path.chmod(0o755)
    settings = Settings(extra={"containers": {"lxc_path": str(path)}})
    backend = LxcBackend(path)
    try:
        await converge(settings, desired("lxc", [], tarball).model_copy(update={"containers": {
            "warm": ContainerConfig(backend="lxc", image="bench", command=IDLE)}}))
        for r in range(rounds):
            names = [f"lxc-b{r}-{i}" for i in range(10)]
            clinames = [f"lxc-c{r}-{i}" for i in range(10)]

            async def ours(names: list[str] = names) -> None:
                await converge(settings, desired("lxc", names, tarball))

            async def cli(names: list[str] = clinames) -> None:
                for n in names:  # the same config files, written beforehand would flatter the CLI: written here too
                    await backend.create(ContainerSpec(n, "bench", command=IDLE))
                for n in names:
                    run("lxc-start", "-P", str(path), "-n", n, "-d")

            variants = [("op-dbus", ours), ("lxc-start -d x10", cli)]
            for label, fn in variants if r % 2 == 0 else variants[::-1]:
                await timings.measure(("lxc", "create+start 10", label), fn)
            for n in names + clinames:
                await backend.remove(n)
        many = [f"lxc-q{i}" for i in range(50)]
        for n in many:
            await backend.create(ContainerSpec(n, "bench", command=IDLE))
        for n in many[:10]:
            await backend.start(n)
        state = desired("lxc", many, tarball)
        for r in range(rounds * 2):
            variants = [("op-dbus", lambda s=state: query(settings, s)),
                        ("lxc-ls -f", lambda: run("lxc-ls", "-P", str(path), "-f"))]
            for label, fn in variants if r % 2 == 0 else variants[::-1]:
                await timings.measure(("lxc", "query 50", label), fn)
    finally:
        for config in path.glob("*/config"):
            subprocess.run(["lxc-stop", "-P", str(path), "-n", config.parent.name, "-k"], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


async def nspawn(timings: Timings, rounds: int, tarball: Path) -> None:
    from lab.machine import LabMachine
    from op_dbus.backends.containers import ContainerSpec
    from op_dbus.backends.containers.nspawn import NspawnBackend, render_settings

    with LabMachine() as lab:
        settings = Settings(bus_address=lab.bus_address, extra={"containers": {"nspawn_root": str(lab.root)}})
        backend = NspawnBackend(lab.bus_address, lab.root)
        await converge(settings, desired("nspawn", [], tarball).model_copy(update={"containers": {
            "warm": ContainerConfig(backend="nspawn", image="bench", command=IDLE)}}))
        for r in range(rounds):
            names = [f"ns-b{r}-{i}" for i in range(10)]
            clinames = [f"ns-c{r}-{i}" for i in range(10)]

            async def ours(names: list[str] = names) -> None:
                await converge(settings, desired("nspawn", names, tarball))

            def cli(names: list[str] = clinames) -> None:
                for n in names:  # the same settings file a user would write
                    (lab.root / "etc/systemd/nspawn" / f"{n}.nspawn").write_text(
                        render_settings(ContainerSpec(n, "bench", command=IDLE)))
                script = "; ".join(f"machinectl clone op-dbus-template-bench {n} && machinectl start {n}" for n in names)
                lab.run(["sh", "-ec", script])
                # machinectl start returns once the unit's start job is queued: wait as op-dbus does
                lab.run(["sh", "-c", "for n in " + " ".join(names) + "; do until machinectl show $n >/dev/null 2>&1; "
                         "do sleep 0.01; done; done"])

            variants = [("op-dbus", ours), ("machinectl clone+start x10", cli)]
            for label, fn in variants if r % 2 == 0 else variants[::-1]:
                await timings.measure(("nspawn", "create+start 10", label), fn)
            for n in names + clinames:
                await backend.remove(n)
        many = [f"ns-q{i}" for i in range(50)]
        for n in many:
            await backend.create(ContainerSpec(n, "bench", command=IDLE))
        state = desired("nspawn", many, tarball)
        for r in range(rounds * 2):
            variants = [("op-dbus", lambda s=state: query(settings, s)),
                        ("machinectl list+list-images",
                         lambda: lab.run(["sh", "-c", "machinectl list -o json; machinectl list-images -o json"]))]
            for label, fn in variants if r % 2 == 0 else variants[::-1]:
                await timings.measure(("nspawn", "query 50", label), fn)
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="podman,docker,lxc,nspawn")
    parser.add_argument("--smoke", action="store_true", help="one round, tiny sizes (a test runs this)")
    args = parser.parse_args()
    if args.smoke:
        args.rounds = 1
    wanted = args.backends.split(",")
    work = Path(tempfile.mkdtemp(prefix="op-dbus-bench-"))
    tarball = make_tarball(make_rootfs(work / "rootfs", "bench"), work / "bench.tar")
    timings = Timings()
    try:
        engines = [b for b in ("podman", "docker") if b in wanted]
        if engines:
            await engine_api(timings, args.rounds, tarball, engines)
        if "lxc" in wanted:
            await lxc(timings, args.rounds, tarball)
        if "nspawn" in wanted:
            await nspawn(timings, args.rounds, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings.report()


if __name__ == "__main__":
    asyncio.run(main())
