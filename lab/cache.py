"""Cache directories published atomically: build into a temporary sibling, rename on success, serialise with a lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def recipe_hash(recipe: Any, length: int = 12) -> str:
    """A short, stable digest of a JSON-able recipe: the cache key of what the recipe produces."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` so two builders never race for the same artefact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_sibling(final: Path) -> Path:
    """A fresh temporary path next to ``final`` (same filesystem, so the final rename is atomic)."""
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")


def remove_stale_temps(directory: Path) -> None:
    """Remove half-built trees left by builders that died; only called with the cache lock held."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        name, sep, pid = entry.name.rpartition(TMP_MARK)
        if not sep or not name or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and Path(f"/proc/{pid}").exists():
            continue
        remove_tree(entry)


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree if it exists (symlinks are removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def publish(tmp: Path, final: Path) -> None:
    """Make a finished build visible under its final name in one rename."""
    os.rename(tmp, final)
