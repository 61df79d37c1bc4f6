"""The lab's build recipes and caches (pure logic; no root, no container)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lab import cache, rootfs, wheels


def test_recipe_hash_is_stable_and_sensitive() -> None:
    base = rootfs.recipe()
    assert cache.recipe_hash(base) == cache.recipe_hash(rootfs.recipe())
    changed = {**base, "files": {**rootfs.FILES, "etc/extra": "x\n"}}
    assert cache.recipe_hash(changed) != cache.recipe_hash(base)
    assert rootfs.rootfs_path().name == f"rootfs-{cache.recipe_hash(base)}"


def test_recipe_follows_the_lab_notes() -> None:
    options = rootfs.mmdebstrap_options()
    assert "--variant=minbase" in options
    includes = next(o for o in options if o.startswith("--include=")).removeprefix("--include=").split(",")
    for package in ("systemd", "dbus", "postgresql", "openvswitch-switch", "python3-venv", "locales", "tzdata"):
        assert package in includes
    hooks = [o.removeprefix("--customize-hook=") for o in options if o.startswith("--customize-hook=")]
    assert any("useradd -m -u 1000" in hook and "labuser" in hook for hook in hooks)
    assert any("console-getty.service" in hook and "/dev/null" in hook for hook in hooks)
    # our units are laid in, but nothing enables them
    assert not any("systemctl enable" in hook for hook in hooks)
    for unit in ("app-backend.service", "app-worker.service", "bench-simple.service"):
        text = rootfs.FILES[f"etc/systemd/system/{unit}"]
        assert "Type=simple" in text
        assert "WantedBy=multi-user.target" in text


def test_stale_temps_of_dead_builders_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        stale = tmp_path / f"rootfs-abc{cache.TMP_MARK}{dead.pid}"
        busy = tmp_path / f"rootfs-abc{cache.TMP_MARK}{live.pid}"
        mine = tmp_path / f"rootfs-def{cache.TMP_MARK}{os.getpid()}"
        final = tmp_path / "rootfs-abc"
        for directory in (stale, busy, mine, final):
            (directory / "etc").mkdir(parents=True)
        cache.remove_stale_temps(tmp_path)
        assert not stale.exists()
        assert not mine.exists()
        assert busy.exists()
        assert final.exists()
    finally:
        live.kill()
        live.wait()


def test_wheelhouse_requirements_come_from_pyproject() -> None:
    requirements = wheels.runtime_dependencies()
    names = {requirement.split(">")[0].split("<")[0].split("=")[0].strip() for requirement in requirements}
    assert {"dbus-fast", "pydantic", "click", "cryptography"} <= names
    assert any(requirement.startswith("hatchling") for requirement in wheels.build_requirements())
    # the collector's wheelhouse (/wheels/collector) adds the extra's web and database stack to the same pins
    collector = wheels.collector_dependencies()
    assert set(requirements) < set(collector)
    assert any(r.startswith("starlette") for r in collector) and not any(r.startswith("starlette") for r in requirements)


def test_project_digest_tracks_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    module = tmp_path / "src" / "pkg" / "__init__.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(wheels, "PROJECT_ROOT", tmp_path)
    first = wheels.project_digest()
    (tmp_path / "src" / "pkg" / "__pycache__").mkdir()
    (tmp_path / "src" / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert wheels.project_digest() == first
    module.write_text("A = 2\n")
    assert wheels.project_digest() != first
