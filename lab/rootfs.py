"""The lab's root filesystem: a Debian 12 tree built by mmdebstrap, cached under a hash of its recipe."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lab import CACHE_DIR, LabError, log
from lab.cache import locked, publish, recipe_hash, remove_stale_temps, remove_tree, temp_sibling

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Raising this forces a rebuild when something outside the recipe below changes what a build produces.
RECIPE_VERSION = 1

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "systemd-container",
    "xdg-dbus-proxy",
    "openvswitch-switch",
    "nginx-light",
    "redis-server",
    "postgresql",
    "python3",
    "python3-venv",
    "iproute2",
    "systemd-resolved",
    "network-manager",
    "upower",
    "power-profiles-daemon",
    "udisks2",
    "ethtool",
    "procps",
    "git",  # the agent's git source (op-dbus run --git) fetches with the git command
    "openssh-client",  # ssh-keygen, which git runs to check SSH-signed commits
    "locales",
    "tzdata",
)

# Documentation and translations are a fifth of the tree and nothing in the lab reads them.
PATH_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
)

# locale-gen reads the alias table that the excludes above would drop.
PATH_INCLUDES = ("/usr/share/locale/locale.alias",)

# Locales that localed can be asked to switch to (it refuses a LANG that is not generated).
LOCALES = ("en_US.UTF-8", "de_DE.UTF-8")

# Files laid into the tree by customize hooks: units for the demo and benchmarks (installed, not enabled),
# and a drop-in that lets systemd follow PostgreSQL's own readiness notification instead of pg_ctlcluster's
# half-second polling (the unit becomes active in ~20 ms instead of ~2.2 s).
FILES: dict[str, str] = {
    "etc/systemd/system/app-backend.service": """\
[Unit]
Description=Demo application backend (HTTP on 127.0.0.1:8080)
After=network.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/app
Restart=on-failure

[Install]
WantedBy=multi-user.target
""",
    "etc/systemd/system/app-worker.service": """\
[Unit]
Description=Demo application worker
After=app-backend.service

[Service]
Type=simple
ExecStart=/bin/sh -c 'while :; do sleep 3600; done'
Restart=on-failure

[Install]
WantedBy=multi-user.target
""",
    "etc/systemd/system/bench-simple.service": """\
[Unit]
Description=Benchmark unit that only sleeps

[Service]
Type=simple
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
""",
    "etc/systemd/system/postgresql@15-main.service.d/notify.conf": """\
[Service]
Type=notify
User=postgres
Group=postgres
PIDFile=
ExecStart=
ExecStart=/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main \
-c config_file=/etc/postgresql/15/main/postgresql.conf
ExecStop=
ExecReload=
ExecReload=/bin/kill -HUP $MAINPID
KillMode=mixed
KillSignal=SIGINT
TimeoutStopSec=30
""",
    "srv/app/index.html": "<!doctype html><title>app-backend</title><p>app-backend is serving.</p>\n",
}

STAGE = "@STAGE@"


def mirror() -> str:
    """The Debian mirror the host itself uses (deb822 sources first, then sources.list), or deb.debian.org."""
    override = os.environ.get("OP_DBUS_LAB_MIRROR")
    if override:
        return override
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:") and line.split()[1:]:
                return line.split()[1]
    classic = Path("/etc/apt/sources.list")
    if classic.is_file():
        for line in classic.read_text().splitlines():
            match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def mmdebstrap_options() -> list[str]:
    """The mmdebstrap options of the recipe, with ``@STAGE@`` standing for the directory holding FILES."""
    options = ["--mode=root", "--variant=minbase", "--format=directory"]
    options += [f"--dpkgopt=path-exclude={pattern}" for pattern in PATH_EXCLUDES]
    options += [f"--dpkgopt=path-include={path}" for path in PATH_INCLUDES]
    options.append("--include=" + ",".join(PACKAGES))
    escaped = [name.replace(".", r"\.") for name in LOCALES]
    hooks = [
        'echo lab > "$1/etc/hostname"',
        'chroot "$1" useradd -m -u 1000 -s /bin/bash labuser',
        'ln -sf /dev/null "$1/etc/systemd/system/console-getty.service"',
        # Installed for the tests of DNS through its D-Bus API, which start it; off by default so other tests see
        # the same boot as before.
        'chroot "$1" systemctl disable systemd-resolved.service',
        # Installed for the tests of the networkmanager and power plugins, which start them.
        'chroot "$1" systemctl disable NetworkManager.service NetworkManager-wait-online.service '
        'power-profiles-daemon.service upower.service',
        # udisks2 likewise: started by the storage tests (with udevd, which a container does not run by itself)
        'chroot "$1" systemctl disable udisks2.service',
        "sed -i -E '"
        + "; ".join(f"s/^# ({name} )/\\1/" for name in escaped)
        + '\' "$1/etc/locale.gen" && chroot "$1" locale-gen',
    ]
    hooks += [f'install -D -m 0644 {STAGE}/{path} "$1/{path}"' for path in sorted(FILES)]
    options += [f"--customize-hook={hook}" for hook in hooks]
    return options


def recipe() -> dict[str, object]:
    """Everything that decides the tree's content; its hash names the cached rootfs."""
    return {"version": RECIPE_VERSION, "suite": SUITE, "options": mmdebstrap_options(), "files": FILES}


def rootfs_path() -> Path:
    """Where the rootfs of the current recipe lives (whether built yet or not)."""
    return CACHE_DIR / f"rootfs-{recipe_hash(recipe())}"


def tree_size(path: Path) -> int:
    """Bytes used by a tree on disk (``du``, one filesystem)."""
    out = subprocess.run(["du", "-sxb", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def ensure(force: bool = False) -> Path:
    """Return the cached rootfs for the current recipe, building it first when missing (or when ``force``)."""
    final = rootfs_path()
    if final.is_dir() and not force:
        return final
    if os.geteuid() != 0:
        raise LabError(f"building the lab rootfs {final} needs root")
    if shutil.which("mmdebstrap") is None:
        raise LabError("mmdebstrap is missing: run `make lab-host` (lab/setup-host.sh) first")
    with locked(CACHE_DIR / ".rootfs.lock"):
        if final.is_dir() and not force:
            return final
        remove_stale_temps(CACHE_DIR)
        if force:
            remove_tree(final)
        build(final)
    return final


def build(final: Path) -> None:
    """Run mmdebstrap into a temporary sibling of ``final`` and publish it by rename once it succeeded."""
    tmp = temp_sibling(final)
    remove_tree(tmp)
    source = mirror()
    started = time.monotonic()
    log(f"building rootfs {final.name} from {source} ({len(PACKAGES)} packages; about a minute) ...")
    with tempfile.TemporaryDirectory(prefix="op-dbus-lab-stage-") as stage:
        for relative, content in FILES.items():
            target = Path(stage, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        options = [option.replace(STAGE, shlex.quote(stage)) for option in mmdebstrap_options()]
        argv = ["mmdebstrap", *options, SUITE, str(tmp), source]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(argv, check=True, env=env)
        except (subprocess.CalledProcessError, OSError) as exc:
            remove_tree(tmp)
            raise LabError(f"mmdebstrap failed ({exc}); its output above says why") from exc
    elapsed = time.monotonic() - started
    size = tree_size(tmp)
    publish(tmp, final)
    info = {"recipe": recipe(), "mirror": source, "build_seconds": round(elapsed, 1), "size_bytes": size}
    final.with_name(final.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"rootfs ready: {final} in {elapsed:.1f} s, {size / 1e6:.0f} MB")
