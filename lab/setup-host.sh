#!/usr/bin/env bash
# Host preparation for the lab on Debian 12 (root, no systemd as PID 1 needed): installs the packages the lab
# uses to build its rootfs and boot it. Idempotent: returns at once when everything is installed already.
set -euo pipefail

PACKAGES=(
  systemd-container   # systemd-nspawn (pulls systemd: busctl)
  mmdebstrap          # builds the rootfs
  openvswitch-switch  # OVS binaries for host-side tests (never started here)
  iproute2 ethtool    # test oracles
  git openssh-client  # GitOps tests: real repositories, git daemon, ssh-keygen signatures
  openssh-server      # GitOps tests: fetching over ssh:// from a throwaway sshd on loopback (never started here)
  util-linux          # unshare, nsenter
  dbus                # dbus-daemon for private-bus tests of discovery and the generic D-Bus plugin
  podman runc         # container backends: podman's REST API (also the Docker-compatible one); runc, not crun
  lxc busybox-static  # LXC backend; busybox is the test templates' whole userland
  postgresql          # PostgreSQL 15 for the collector tests (throwaway clusters; the packaged one is never started)
  chromium fonts-dejavu-core  # headless Chromium for the dashboard tests (driven by Playwright, no browser download)
  python3 python3-venv  # Debian's 3.11, the interpreter the container runs: the wheelhouse is built with it
  ca-certificates debian-archive-keyring
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: must run as root (apt-get, and the lab boots containers)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null || ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
  echo "setup-host.sh: expects a Debian 12 (bookworm) host" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "lab host: all packages present"
  exit 0
fi

# Services installed on the host (openvswitch-switch) must not start here: keep the image's policy-rc.d, and
# where there is none, hold one only for the duration of this install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

echo "lab host: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get install -y -q -o DPkg::Lock::Timeout=600 "${PACKAGES[@]}"
echo "lab host: ready"
