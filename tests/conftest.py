"""Shared fixtures: the lab, a booted Debian 12 system container that tests manage as a real machine."""

from __future__ import annotations

import os
import shutil
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import LabError
from lab import rootfs as lab_rootfs
from lab import wheels as lab_wheels
from lab.machine import TIMINGS, LabMachine, reap_orphans
from tests.testing_switch import switch_on_testing

_TOOLS = ("systemd-nspawn", "unshare", "nsenter", "busctl")


@dataclass(frozen=True)
class LabAssets:
    """What a lab machine boots from: the cached rootfs and this checkout's wheelhouse."""

    rootfs: Path
    wheels: Path


def lab_unavailable() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (systemd-nspawn --boot, cgroups, nsenter)"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `make lab-host` (lab/setup-host.sh)"
    if not lab_rootfs.rootfs_path().is_dir() and shutil.which("mmdebstrap") is None:
        return "no cached lab rootfs and no mmdebstrap to build one: run `make lab`"
    return None


@pytest.fixture(scope="session")
def lab_assets() -> LabAssets:
    """Rootfs and wheelhouse, built once per run (both are cached: a warm run only rebuilds a changed op-dbus wheel)."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    reap_orphans()
    try:
        return LabAssets(rootfs=lab_rootfs.ensure(), wheels=lab_wheels.build())
    except LabError as exc:
        pytest.fail(f"could not prepare the lab: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def lab(lab_assets: LabAssets, request: pytest.FixtureRequest) -> Iterator[LabMachine]:
    """A freshly booted lab machine for this test module, powered off after its last test.

    A module may set ``LAB_KERNEL_ARGS`` (for example ``["systemd.mask=postgresql@15-main.service"]``) to boot with
    services turned off without touching the rootfs.
    """
    kernel_args = list(getattr(request.module, "LAB_KERNEL_ARGS", ()))
    machine = LabMachine(lab_assets.rootfs, lab_assets.wheels, kernel_args=kernel_args)
    try:
        machine.start()
    except LabError as exc:
        pytest.fail(f"lab machine did not boot: {exc}", pytrace=False)
    try:
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="session", autouse=True)
def testing_switch() -> None:
    """Every op-dbus the suite starts on this machine honours OP_DBUS_FAULTS / OP_DBUS_PCT (without root there is no
    root-owned marker, and the tests that need one say so)."""
    os.environ.update(switch_on_testing())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"lab", "lab_assets"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    boots = [boot for _, boot, _ in TIMINGS]
    stops = [stop for _, _, stop in TIMINGS]
    terminalreporter.write_line(
        f"lab: {len(TIMINGS)} machine(s); boot median {statistics.median(boots):.2f} s (max {max(boots):.2f}), "
        f"stop median {statistics.median(stops):.2f} s (max {max(stops):.2f})"
    )
