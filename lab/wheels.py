"""An offline wheelhouse for installing op-dbus inside the lab container (it has no network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from lab import CACHE_DIR, PROJECT_ROOT, WORK_DIR, LabError, log
from lab.cache import locked, publish, recipe_hash, remove_stale_temps, remove_tree, temp_sibling

# The container runs Debian's own interpreter; using the same one on the host makes pip pick exactly the
# wheels (cp311, manylinux up to glibc 2.36) that will install inside.
DEBIAN_PYTHON = Path("/usr/bin/python3")

WHEELHOUSE = WORK_DIR / "wheels"
#: The collector's wheelhouse, a subdirectory (so /wheels/collector in the lab): the agent's own stays small.
COLLECTOR_WHEELHOUSE = WHEELHOUSE / "collector"
PROJECT_STAMP = WORK_DIR / "project-wheel.sha256"


def _pyproject() -> dict[str, object]:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def runtime_dependencies() -> list[str]:
    """The project's runtime requirements, as declared in pyproject.toml."""
    project = _pyproject().get("project", {})
    assert isinstance(project, dict)
    return sorted(str(requirement) for requirement in project.get("dependencies", []))


def collector_dependencies() -> list[str]:
    """The runtime requirements plus the `collector` extra's, as declared in pyproject.toml."""
    project = _pyproject().get("project", {})
    assert isinstance(project, dict)
    extras = project.get("optional-dependencies", {})
    assert isinstance(extras, dict)
    return sorted({*runtime_dependencies(), *(str(requirement) for requirement in extras.get("collector", []))})


def build_requirements() -> list[str]:
    """What the project's build backend needs (installed once into the helper venv)."""
    system = _pyproject().get("build-system", {})
    assert isinstance(system, dict)
    return sorted(str(requirement) for requirement in system.get("requires", []))


def target_interpreter() -> dict[str, str]:
    """Version, architecture and libc of Debian's python3: what decides which wheels fit."""
    if not DEBIAN_PYTHON.exists():
        raise LabError(f"{DEBIAN_PYTHON} is missing: run `make lab-host` (lab/setup-host.sh) first")
    probe = "import json, platform, sys; "
    probe += "print(json.dumps([sys.version.split()[0], platform.machine(), *platform.libc_ver()]))"
    out = subprocess.run([str(DEBIAN_PYTHON), "-c", probe], check=True, capture_output=True, text=True).stdout
    version, machine, libc, libc_version = json.loads(out)
    return {"python": version, "machine": machine, "libc": f"{libc}-{libc_version}"}


def helper_venv(interpreter: dict[str, str]) -> Path:
    """A venv of Debian's python3 holding the build backend, so the project wheel builds without downloads."""
    requirements = build_requirements()
    final = CACHE_DIR / f"helper-venv-{recipe_hash({'interpreter': interpreter, 'requires': requirements})}"
    ready = final / ".ready"
    if ready.exists():
        return final
    with locked(CACHE_DIR / ".helper-venv.lock"):
        if ready.exists():
            return final
        remove_stale_temps(CACHE_DIR)
        # The venv must be created at its final path (its scripts embed it), so it is marked ready last.
        remove_tree(final)
        log(f"creating helper venv {final.name} with {DEBIAN_PYTHON} ...")
        try:
            subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", str(final)], check=True)
            subprocess.run([str(final / "bin" / "python"), "-m", "pip", "install", "-q", *requirements], check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            remove_tree(final)
            raise LabError(f"could not create the helper venv ({exc}); is python3-venv installed? (make lab-host)") from exc
        ready.touch()
    return final


def dependency_wheels(venv: Path, interpreter: dict[str, str], requirements: list[str] | None = None) -> Path:
    """Binary wheels of the runtime dependencies (or ``requirements``) for the container's interpreter, cached by
    the dependency list."""
    requirements = runtime_dependencies() if requirements is None else requirements
    final = CACHE_DIR / f"wheels-deps-{recipe_hash({'interpreter': interpreter, 'dependencies': requirements})}"
    if final.is_dir():
        return final
    with locked(CACHE_DIR / ".wheels-deps.lock"):
        if final.is_dir():
            return final
        remove_stale_temps(CACHE_DIR)
        tmp = temp_sibling(final)
        remove_tree(tmp)
        started = time.monotonic()
        log(f"downloading dependency wheels ({len(requirements)} requirements) into {final.name} ...")
        argv = [str(venv / "bin" / "pip"), "download", "-q", "--only-binary=:all:", "-d", str(tmp), *requirements]
        try:
            subprocess.run(argv, check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            remove_tree(tmp)
            raise LabError(f"pip download of the runtime dependencies failed ({exc})") from exc
        publish(tmp, final)
        log(f"dependency wheels ready: {len(list(final.glob('*.whl')))} wheels in {time.monotonic() - started:.1f} s")
    return final


def project_digest() -> str:
    """A digest of everything that goes into the project wheel, to rebuild it exactly when it changed."""
    digest = hashlib.sha256()
    paths = [PROJECT_ROOT / "pyproject.toml", PROJECT_ROOT / "README.md"]
    paths += sorted(p for p in (PROJECT_ROOT / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def project_wheel(venv: Path, into: Path) -> Path:
    """Build this checkout's op-dbus wheel into ``into`` unless the one there was built from the same sources."""
    digest = project_digest()
    existing = sorted(into.glob("op_dbus-*.whl"))
    if len(existing) == 1 and PROJECT_STAMP.is_file() and PROJECT_STAMP.read_text().strip() == digest:
        return existing[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="op-dbus-wheel-") as out:
        argv = [str(venv / "bin" / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, str(PROJECT_ROOT)]
        try:
            subprocess.run(argv, check=True)
        except (subprocess.CalledProcessError, OSError) as exc:
            raise LabError(f"building the op-dbus wheel failed ({exc})") from exc
        built = sorted(Path(out).glob("op_dbus-*.whl"))
        if len(built) != 1:
            raise LabError(f"expected one op_dbus wheel from pip wheel, got {[p.name for p in built]}")
        for old in existing:
            old.unlink()
        target = into / built[0].name
        shutil.move(built[0], target)
    PROJECT_STAMP.write_text(digest + "\n")
    log(f"project wheel {target.name} built in {time.monotonic() - started:.1f} s")
    return target


def pin_requirements(wheelhouse: Path) -> Path:
    """`requirements.txt` beside the wheels: each as NAME==VERSION with its sha256, for `pip --require-hashes`."""
    lines = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}\n")
    target = wheelhouse / "requirements.txt"
    temp = target.with_name(".requirements.txt.tmp")
    temp.write_text("".join(lines))
    temp.replace(target)
    return target


def _fill(into: Path, deps: Path) -> None:
    """Make ``into`` hold exactly the wheels of ``deps`` (plus the op-dbus wheel, handled by the caller)."""
    into.mkdir(exist_ok=True)
    wanted = {path.name for path in deps.glob("*.whl")}
    for stale in into.glob("*.whl"):
        if stale.name not in wanted and not stale.name.startswith("op_dbus-"):
            stale.unlink()
    for name in wanted:
        source, target = deps / name, into / name
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            shutil.copy2(source, target)


def build() -> Path:
    """Make the wheelhouse (dependency wheels + this checkout's op-dbus wheel) and return its directory; its
    ``collector/`` subdirectory is the same with the `collector` extra's wheels, for `install.sh --collector`."""
    started = time.monotonic()
    interpreter = target_interpreter()
    venv = helper_venv(interpreter)
    deps = dependency_wheels(venv, interpreter)
    collector_deps = dependency_wheels(venv, interpreter, collector_dependencies())
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    with locked(WORK_DIR / ".wheels.lock"):
        _fill(WHEELHOUSE, deps)
        wheel = project_wheel(venv, WHEELHOUSE)
        pin_requirements(WHEELHOUSE)
        _fill(COLLECTOR_WHEELHOUSE, collector_deps)
        for old in COLLECTOR_WHEELHOUSE.glob("op_dbus-*.whl"):
            old.unlink()
        shutil.copy2(wheel, COLLECTOR_WHEELHOUSE / wheel.name)
        pin_requirements(COLLECTOR_WHEELHOUSE)
    log(f"wheelhouse ready: {WHEELHOUSE} ({len(list(WHEELHOUSE.glob('*.whl')))} wheels, {time.monotonic() - started:.1f} s)")
    return WHEELHOUSE
