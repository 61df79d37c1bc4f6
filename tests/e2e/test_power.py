"""The power plugin against the real power-profiles-daemon and UPower in the lab (placeholder drivers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest


@pytest.fixture(scope="module")
def op_dbus(lab: Any) -> str:
    lab.run(["systemctl", "start", "upower.service", "power-profiles-daemon.service"])
    return str(lab.install_op_dbus())


def write_state(lab: Any, name: str, power: dict[str, Any]) -> str:
    path = lab.root / "root" / name
    path.write_text(json.dumps({"version": 1, "plugins": {"power": power}}))
    path.chmod(0o600)
    return f"/root/{name}"


def active(lab: Any) -> str:
    return str(lab.run(["busctl", "get-property", "net.hadess.PowerProfiles", "/net/hadess/PowerProfiles",
                        "net.hadess.PowerProfiles", "ActiveProfile"]).stdout.split()[1].strip('"'))


def test_profile_is_set_verified_and_rolled_back(lab: Any, op_dbus: str) -> None:
    assert active(lab) == "balanced"
    state = write_state(lab, "saver.json", {"profile": "power-saver"})
    r = lab.run([op_dbus, "apply", state], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert active(lab) == "power-saver"
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 0
    # Changed behind op-dbus's back: drift.
    lab.run(["busctl", "set-property", "net.hadess.PowerProfiles", "/net/hadess/PowerProfiles",
             "net.hadess.PowerProfiles", "ActiveProfile", "s", "balanced"])
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 3
    assert lab.run([op_dbus, "apply", state], check=False).returncode == 0
    lab.run(["sh", "-c", f"{op_dbus} introspect power > /root/intro.json"])
    assert json.loads((lab.root / "root" / "intro.json").read_text())["plugins"]["power"] == {"profile": "power-saver"}
    assert lab.run([op_dbus, "diff", "/root/intro.json"], check=False).returncode == 0
    lab.run([op_dbus, "apply", write_state(lab, "bal.json", {"profile": "balanced"})])


def test_a_profile_this_machine_lacks_is_refused(lab: Any, op_dbus: str) -> None:
    r = lab.run([op_dbus, "apply", write_state(lab, "perf.json", {"profile": "performance"})], check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "plugins.power.profile" in r.stderr and "'performance' does not exist on this machine" in r.stderr
    assert active(lab) == "balanced"
    r = lab.run([op_dbus, "apply", write_state(lab, "bad.json", {"profile": "turbo"})], check=False)
    assert r.returncode == 2 and "profile" in r.stderr, r.stdout + r.stderr


def test_query_reports_upower_facts_under_status(lab: Any, op_dbus: str) -> None:
    out = json.loads(lab.run([op_dbus, "-o", "json", "query", "power"]).stdout)
    status = out["power"]["status"] if "power" in out else out["plugins"]["power"]["status"]
    assert status["on-battery"] is False
    assert sorted(status["profiles"]) == ["balanced", "power-saver"]
    assert isinstance(status["devices"], list)


def test_without_the_daemon_reads_start_nothing_and_a_profile_is_refused(lab: Any, op_dbus: str) -> None:
    lab.run(["systemctl", "stop", "upower.service", "power-profiles-daemon.service"])
    try:
        out = json.loads(lab.run([op_dbus, "-o", "json", "introspect", "power"]).stdout)
        assert out["plugins"]["power"] == {}
        query = json.loads(lab.run([op_dbus, "-o", "json", "query", "power"]).stdout)
        assert "UPower is not running" in json.dumps(query)
        # Reading did not start either daemon through bus activation.
        for unit in ("power-profiles-daemon.service", "upower.service"):
            assert lab.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "inactive"
        r = lab.run([op_dbus, "apply", write_state(lab, "saver.json", {"profile": "power-saver"})], check=False)
        assert r.returncode != 0 and "power-profiles-daemon is not running" in r.stderr, r.stdout + r.stderr
        assert "systemctl start power-profiles-daemon" in r.stderr
    finally:
        lab.run(["systemctl", "start", "upower.service", "power-profiles-daemon.service"])


def test_watch_reports_a_profile_changed_behind_its_back(lab: Any, op_dbus: str) -> None:
    from op_dbus.plugin import SUBSCRIBED, Context, Settings
    from op_dbus.plugins.power import PowerPlugin, PowerSection

    async def events() -> list[str]:
        seen: list[str] = []
        async with Context(Settings(bus_address=lab.bus_address)) as ctx:
            stream = PowerPlugin().watch(PowerSection(profile="balanced"), ctx)
            async for event in stream:
                seen.append(event.source)
                if event.source == SUBSCRIBED:
                    lab.run(["busctl", "set-property", "net.hadess.PowerProfiles", "/net/hadess/PowerProfiles",
                             "net.hadess.PowerProfiles", "ActiveProfile", "s", "power-saver"])
                else:
                    assert event.objects == ("profile",)
                    break
            await stream.aclose()  # type: ignore[attr-defined]
        return seen

    assert asyncio.run(asyncio.wait_for(events(), 60)) == [SUBSCRIBED, "PropertiesChanged"]
    lab.run(["busctl", "set-property", "net.hadess.PowerProfiles", "/net/hadess/PowerProfiles",
             "net.hadess.PowerProfiles", "ActiveProfile", "s", "balanced"])
