"""The agent's hardened unit in the lab: installed by install.sh, scored by the real `systemd-analyze security`, and
still doing its job under the sandbox (repairing a stopped unit and a removed address). install.sh itself refuses
arguments that would rewrite the files it writes, and an offline install refuses wheels that are not pinned."""

from __future__ import annotations

import json
import re
import stat
from typing import Any

import pytest

from tests.e2e.helpers import systemctl
from tests.e2e.test_agent import Box, document, wait_for

UNIT = "etc/systemd/system/op-dbus.service"
NET = {"interfaces": [{"name": "hdbr0", "type": "linux-bridge", "state": "up",
                       "ipv4": {"enabled": True, "address": [{"ip": "198.18.7.1", "prefix": 24}]}}]}
FULL_MODE_LIMIT = 5.0


@pytest.fixture(scope="module")
def box(lab: Any) -> Box:
    b = Box(lab)
    b.write_state(document(net=NET))
    return b


def exposure(box: Box) -> float:
    out = box.run("systemd-analyze", "security", "op-dbus.service", "--no-pager").stdout
    found = re.search(r"Overall exposure level for op-dbus\.service: ([0-9.]+)", out)
    assert found, out
    return float(found.group(1))


def install_sh(box: Box, *args: str) -> Any:
    return box.lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/wheels", *args], check=False,
                       timeout=300)


@pytest.mark.parametrize("args", [
    ["--watchdog", "30|;s|^User=.*|User=root"],
    ["--user", "opdbus\nUser=root"],
    ["--user", "opdbus/x"],
    ["--interval", "300\nExecStartPre=/bin/touch /tmp/pwned"],
    ["--interval", "0"],
    ["--metrics", "0.0.0.0:9469"],
    ["--metrics", "127.0.0.1:9469 --no-log"],
    ["--metrics", "127.0.0.1:99999"],
    ["--wheelhouse", "/wheels\n--index-url=http://example.invalid"],
])
def test_install_sh_refuses_arguments_that_would_rewrite_what_it_writes(box: Box, args: list[str]) -> None:
    r = install_sh(box, "--no-start", *args)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "install.sh: error:" in r.stderr and args[0] in r.stderr, r.stderr
    assert not (box.lab.root / UNIT).exists() and not (box.lab.root / "opt/op-dbus").exists()


def test_an_offline_install_takes_only_pinned_wheels(box: Box) -> None:
    box.run("sh", "-c", "rm -rf /root/wh && cp -r /wheels /root/wh")
    requirements = box.lab.root / "root/wh/requirements.txt"
    pins = requirements.read_text()
    assert "op_dbus==" in pins and "--hash=sha256:" in pins
    requirements.write_text(re.sub(r"(click==\S+ --hash=sha256:)[0-9a-f]{8}", r"\g<1>00000000", pins))
    r = box.lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/root/wh", "--no-start"], check=False,
                    timeout=300)
    assert r.returncode != 0 and "pinned requirements" in r.stderr, r.stdout + r.stderr
    assert "click" in r.stdout + r.stderr  # pip names the wheel whose hash does not match
    requirements.unlink()
    r = box.lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/root/wh", "--no-start"], check=False,
                    timeout=300)
    assert r.returncode != 0 and "no pinned requirements" in r.stderr, r.stdout + r.stderr
    box.install("--uninstall", "--purge")
    (box.lab.root / "etc/op-dbus").mkdir(mode=0o755)
    box.write_state(document(net=NET))


def test_the_full_mode_unit_scores_at_most_5_and_still_repairs_drift(box: Box) -> None:
    box.install("--mode", "enforce")
    assert systemctl(box.lab, "is-active", "op-dbus.service") == ["active"]
    score = exposure(box)
    assert score <= FULL_MODE_LIMIT, score
    unit = (box.lab.root / UNIT).read_text()
    assert "NoNewPrivileges=yes" in unit and "UMask=0077" in unit and "@SANDBOX@" not in unit
    # the files install.sh wrote: root's, and only the unit and the state file readable by others
    for path, mode in (("etc/op-dbus/agent.env", 0o600), ("etc/op-dbus/install.manifest", 0o600), (UNIT, 0o644)):
        assert stat.S_IMODE((box.lab.root / path).stat().st_mode) == mode, path
    wait_for("the bridge's address", lambda: "198.18.7.1/24" in box.addresses("hdbr0"), timeout=20)
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx repaired", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"], timeout=20)
    wait_for("the repair block of nginx", lambda: box.new_blocks(since, "apply", "nginx.service"), timeout=20)
    box.run("ip", "addr", "del", "198.18.7.1/24", "dev", "hdbr0")
    wait_for("the address repaired", lambda: "198.18.7.1/24" in box.addresses("hdbr0"), timeout=20)
    wait_for("the repair block of hdbr0", lambda: box.new_blocks(since, "apply", "hdbr0"), timeout=20)
    assert box.status()["running"]
    journal = box.journal()
    assert "Operation not permitted" not in journal and "Permission denied" not in journal, journal[-3000:]
    box.full_score = score  # type: ignore[attr-defined]


def test_the_standalone_and_read_only_units_score_lower(box: Box) -> None:
    full = getattr(box, "full_score", FULL_MODE_LIMIT)
    box.install("--no-proxmox", "--mode", "enforce")
    standalone = exposure(box)
    assert standalone < full, (standalone, full)
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx repaired", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"], timeout=20)
    wait_for("the repair block of nginx", lambda: box.new_blocks(since, "apply", "nginx.service"), timeout=20)

    box.install("--no-proxmox", "--read-only")
    read_only = exposure(box)
    assert read_only < standalone, (read_only, standalone)
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    (block,) = wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"),
                        timeout=20)
    assert block["meta"]["mode"] == "shadow"
    assert systemctl(box.lab, "is-active", "nginx.service") == ["inactive"]  # read-only: recorded, not repaired
    box.run("systemctl", "start", "nginx.service")
    print(json.dumps({"full": full, "standalone": standalone, "read_only": read_only}))


def test_the_policy_for_a_dedicated_user_names_the_services_op_dbus_calls(box: Box) -> None:
    box.install("--uninstall", "--purge")  # the log so far is root's; the user's agent starts its own
    box.install("--read-only", "--user", "opdbus")
    box.user = "opdbus"
    assert box.status()["running"], box.journal()[-3000:]
    box.user = "root"
    policy = box.lab.root / "etc/dbus-1/system.d/op-dbus.conf"
    text = policy.read_text()
    for service in ("systemd1", "login1", "hostname1", "timedate1", "locale1"):
        assert f'send_destination="org.freedesktop.{service}"' in text, service
    assert "NetworkManager" not in text
    assert stat.S_IMODE(policy.stat().st_mode) == 0o644
    # as that user, the dbus plugin reads hostname1 through the bus
    r = box.run("runuser", "-u", "opdbus", "--", "/opt/op-dbus/bin/op-dbus", "-o", "json", "introspect", "dbus",
                check=False)
    assert r.returncode == 0 and "org.freedesktop.hostname1" in r.stdout, r.stderr
    assert box.run("systemctl", "show", "-P", "User", "op-dbus.service").stdout.strip() == "opdbus"
    box.install("--uninstall", "--purge")
