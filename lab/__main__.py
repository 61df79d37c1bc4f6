"""Command line of the lab: ``python -m lab build|wheels|boot|shell``."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from lab import LabError, log


def _machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="machine name (default: lab<pid>n<number>)")
    parser.add_argument("--mask", action="append", default=[], metavar="UNIT", help="boot with UNIT masked (repeatable)")
    parser.add_argument(
        "--kernel-arg", action="append", default=[], metavar="WORD", help="extra word for the container's init"
    )


def _machine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from lab import rootfs, wheels
    from lab.machine import LabMachine

    kernel_args = [f"systemd.mask={unit}" for unit in args.mask] + args.kernel_arg
    wheelhouse = wheels.WHEELHOUSE if wheels.WHEELHOUSE.is_dir() else None
    return LabMachine(rootfs.ensure(), wheelhouse, name=args.name, kernel_args=kernel_args)


def _boot(args: argparse.Namespace) -> int:
    # Block the stop signals before booting so one that arrives mid-boot is handled by the same clean stop.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    with _machine(args) as machine:
        print(f"name        {machine.name}", flush=True)
        print(f"bus_address {machine.bus_address}", flush=True)
        print(f"leader      {machine.leader}", flush=True)
        print(f"root        {machine.root}", flush=True)
        enter = f"nsenter -t {machine.leader} -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root bash"
        print(f"enter       {enter}", flush=True)
        print("(Ctrl-C or SIGTERM powers it off)", flush=True)
        received = signal.sigwait({signal.SIGINT, signal.SIGTERM})
        log(f"{signal.Signals(received).name}: powering off {machine.name}")
    return 0


def _shell(args: argparse.Namespace) -> int:
    with _machine(args) as machine:
        variables = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", f"TERM={os.environ.get('TERM', 'xterm')}"]
        # the shell gets the terminal; the container is powered off when it exits
        return subprocess.run(["nsenter", "-t", str(machine.leader), "-a", "env", "-i", *variables, "bash", "-l"]).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab", description="The op-dbus lab: a booted Debian 12 system container."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or reuse) the cached lab rootfs; prints its path")
    build.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    commands.add_parser("wheels", help="build the offline wheelhouse (dependency wheels + this checkout's op-dbus)")
    boot = commands.add_parser("boot", help="boot a lab machine, print how to reach it, power it off on Ctrl-C/SIGTERM")
    _machine_options(boot)
    shell = commands.add_parser("shell", help="boot a lab machine and open a root shell in it; powered off on exit")
    _machine_options(shell)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            from lab import rootfs

            print(rootfs.ensure(force=args.force))
        elif args.command == "wheels":
            from lab import wheels

            print(wheels.build())
        elif args.command == "boot":
            return _boot(args)
        elif args.command == "shell":
            return _shell(args)
    except LabError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
