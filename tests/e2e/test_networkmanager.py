"""The networkmanager plugin against the real NetworkManager in the lab: profiles on a veth, activation, drift."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

PSK = "correct-horse-battery"
VPN_KEY = "vpn-key-staple-42"
NO_AUTO = "[main]\nno-auto-default=*\n"  # no "Wired connection N" profiles for the test's veths


@pytest.fixture(scope="module")
def op_dbus(lab: Any) -> str:
    lab.run(["sh", "-c", f"printf '{NO_AUTO}' > /etc/NetworkManager/conf.d/90-test.conf"])
    lab.run(["ip", "link", "add", "nm0", "type", "veth", "peer", "name", "nm0p"])
    lab.run(["ip", "link", "set", "nm0p", "up"])
    lab.run(["systemctl", "start", "NetworkManager.service"])
    return str(lab.install_op_dbus())


def write_state(lab: Any, name: str, plugins: dict[str, Any]) -> str:
    path = lab.root / "root" / name
    path.write_text(json.dumps({"version": 1, "plugins": plugins}))
    path.chmod(0o600)
    return f"/root/{name}"


def nm(connections: dict[str, Any]) -> dict[str, Any]:
    return {"networkmanager": {"connections": connections}}


LAN = {"connection": {"type": "802-3-ethernet", "interface-name": "nm0", "autoconnect": False},
       "ipv4": {"method": "manual", "addresses": ["198.18.60.1/24"], "dns": ["198.18.60.53"]},
       "ipv6": {"method": "disabled"}}


def nmcli(lab: Any, *args: str) -> str:
    return str(lab.run(["nmcli", "-t", *args]).stdout)


def addresses(lab: Any) -> list[str]:
    out = lab.run(["ip", "-j", "addr", "show", "dev", "nm0"]).stdout
    return [f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"] if a["family"] == "inet"]


def test_profile_create_activate_update_deactivate_delete(lab: Any, op_dbus: str) -> None:
    state = write_state(lab, "lan.json", nm({"lan0": {**LAN, "active": True}}))
    r = lab.run([op_dbus, "apply", state], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lan0:802-3-ethernet:nm0" in nmcli(lab, "-f", "NAME,TYPE,DEVICE", "connection", "show", "--active")
    assert addresses(lab) == ["198.18.60.1/24"]
    assert nmcli(lab, "-g", "ipv4.dns", "connection", "show", "lan0").strip() == "198.18.60.53"
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 0

    # An update of an active profile is applied to the device (activated again).
    changed = {**LAN, "ipv4": {"method": "manual", "addresses": ["198.18.61.1/24"], "dns": []}, "active": True}
    r = lab.run([op_dbus, "-o", "json", "apply", write_state(lab, "lan2.json", nm({"lan0": changed}))], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["action"] for c in json.loads(r.stdout)["changes"]] == ["update"]
    assert addresses(lab) == ["198.18.61.1/24"]
    assert nmcli(lab, "-g", "ipv4.dns", "connection", "show", "lan0").strip() == ""

    r = lab.run([op_dbus, "apply", write_state(lab, "off.json", nm({"lan0": {"active": False}}))], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lan0" not in nmcli(lab, "-f", "NAME", "connection", "show", "--active")

    r = lab.run([op_dbus, "apply", write_state(lab, "gone.json", nm({"lan0": {"state": "absent"}}))], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lan0" not in nmcli(lab, "-f", "NAME", "connection", "show")


def test_drift_made_with_nmcli_is_seen_and_repaired(lab: Any, op_dbus: str) -> None:
    state = write_state(lab, "lan.json", nm({"lan0": LAN}))
    assert lab.run([op_dbus, "apply", state], check=False).returncode == 0
    lab.run(["nmcli", "connection", "modify", "lan0", "ipv4.addresses", "198.18.62.1/24"])
    r = lab.run([op_dbus, "-o", "json", "diff", state], check=False)
    assert r.returncode == 3, r.stdout + r.stderr
    (change,) = json.loads(r.stdout)["changes"]
    assert change["before"]["ipv4"]["addresses"] == ["198.18.62.1/24"]
    assert lab.run([op_dbus, "apply", state], check=False).returncode == 0
    assert nmcli(lab, "-g", "ipv4.addresses", "connection", "show", "lan0").strip() == "198.18.60.1/24"
    lab.run([op_dbus, "apply", write_state(lab, "gone.json", nm({"lan0": {"state": "absent"}}))])


def test_wifi_and_wireguard_are_stored_secrets_hidden_but_not_activated(lab: Any, op_dbus: str) -> None:
    profiles = {
        "home": {"connection": {"type": "802-11-wireless"}, "802-11-wireless": {"ssid": "home"},
                 "802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": {"secret": PSK}}},
        "wg0": {"connection": {"type": "wireguard", "interface-name": "wg0"},
                "wireguard": {"private-key": {"secret": "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="},
                              "listen-port": 51820,
                              "peers": [{"public-key": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                                         "endpoint": "198.18.70.2:51820", "allowed-ips": ["198.18.71.0/24"],
                                         "persistent-keepalive": 25}]},
                "ipv4": {"method": "disabled"}, "ipv6": {"method": "disabled"}},
        "vpn1": {"connection": {"type": "vpn"},
                 "vpn": {"service-type": "org.freedesktop.NetworkManager.openvpn",
                         "data": {"remote": "198.18.70.1", "connection-type": "password"},
                         "secrets": {"password": {"secret": VPN_KEY}}}},
    }
    state = write_state(lab, "wifi.json", nm(profiles))
    r = lab.run([op_dbus, "apply", state], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert PSK not in r.stdout + r.stderr and VPN_KEY not in r.stdout + r.stderr
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 0
    # nmcli asks NetworkManager for the secrets with a short timeout of its own: under load it can answer empty
    deadline = time.monotonic() + 20
    while (shown := nmcli(lab, "-s", "-g", "vpn.secrets", "connection", "show", "vpn1").strip()) != \
            f"password = {VPN_KEY}" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shown == f"password = {VPN_KEY}"
    peers = lab.run(["sh", "-c", "cat /etc/NetworkManager/system-connections/wg0.nmconnection"]).stdout
    assert "endpoint=198.18.70.2:51820" in peers and "198.18.71.0/24" in peers
    # Read back: the profile and its secret are NetworkManager's, op-dbus shows only an HMAC.
    assert nmcli(lab, "-s", "-g", "802-11-wireless-security.psk", "connection", "show", "home").strip() == PSK
    out = lab.run([op_dbus, "-o", "json", "introspect", "networkmanager"]).stdout
    assert PSK not in out and VPN_KEY not in out
    home = json.loads(out)["plugins"]["networkmanager"]["connections"]["home"]
    assert set(home["802-11-wireless-security"]["psk"]) == {"secret_hmac"}
    log = lab.run(["sh", "-c", "cat /var/lib/op-dbus/*.db* | strings"], check=False).stdout
    assert PSK not in log and VPN_KEY not in log
    # A changed secret is a difference, shown without its value.
    changed = dict(profiles, vpn1={"vpn": {"secrets": {"password": {"secret": "another-key"}}}})
    r = lab.run([op_dbus, "diff", write_state(lab, "vpn2.json", nm(changed))], check=False)
    assert r.returncode == 3 and "update connection vpn1" in r.stdout, r.stdout + r.stderr
    assert VPN_KEY not in r.stdout and "another-key" not in r.stdout
    # The introspected document re-applies as a no-op.
    lab.run(["sh", "-c", f"{op_dbus} introspect networkmanager > /root/intro.json"])
    assert lab.run([op_dbus, "diff", "/root/intro.json"], check=False).returncode == 0

    for pid, why in (("home", "no Wi-Fi device"), ("wg0", "lacks WireGuard")):
        r = lab.run([op_dbus, "apply", write_state(lab, "act.json", nm({pid: {"active": True}}))], check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"plugins.networkmanager.connections.{pid}.active" in r.stderr and why in r.stderr
    assert "home" not in nmcli(lab, "-f", "NAME", "connection", "show", "--active")


def test_bad_input_is_refused_and_nothing_changes(lab: Any, op_dbus: str) -> None:
    lab.run(["nmcli", "connection", "add", "type", "ethernet", "ifname", "nm0", "con-name", "eth-old"])
    before = nmcli(lab, "-f", "NAME,UUID", "connection", "show")
    cases = [
        ({"eth-old": {"connection": {"type": "bridge"}}}, "cannot change its type to bridge"),
        ({"x1": {**LAN, "ipv4": {"method": "manual", "colour": "blue"}}}, "colour"),
        ({"x2": {"ipv4": {"method": "auto"}}}, "needs `connection.type`"),
        ({"x3": {**LAN, "connection": {"type": "802-3-ethernet", "interface-name": "nosuch0"}, "active": True}},
         "knows no device 'nosuch0'"),
    ]
    for connections, message in cases:
        r = lab.run([op_dbus, "apply", write_state(lab, "bad.json", nm(connections))], check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert message in r.stderr
    assert nmcli(lab, "-f", "NAME,UUID", "connection", "show") == before
    lab.run(["nmcli", "connection", "delete", "eth-old"])


def test_an_interface_in_both_net_and_networkmanager_is_refused(lab: Any, op_dbus: str) -> None:
    doc = {**nm({"lan0": LAN}), "net": {"interfaces": [{"name": "nm0", "type": "veth", "mtu": 1400}]}}
    r = lab.run([op_dbus, "apply", write_state(lab, "both.json", doc)], check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "interface nm0 is declared by 2 plugins" in r.stderr
    assert "NetworkManager manages device 'nm0' through profile 'lan0'" in r.stderr
    assert "lan0" not in nmcli(lab, "-f", "NAME", "connection", "show")


def test_without_networkmanager_the_message_says_what_to_start(lab: Any, op_dbus: str) -> None:
    lab.run(["systemctl", "stop", "NetworkManager.service"])
    try:
        r = lab.run([op_dbus, "apply", write_state(lab, "lan.json", nm({"lan0": LAN}))], check=False)
        assert r.returncode != 0 and "NetworkManager is not running" in r.stderr, r.stdout + r.stderr
        assert "systemctl start NetworkManager" in r.stderr
    finally:
        lab.run(["systemctl", "start", "NetworkManager.service"])


def test_failed_apply_rolls_back_deletion_with_its_secret_and_update(lab: Any, op_dbus: str) -> None:
    wifi = {"connection": {"type": "802-11-wireless"}, "802-11-wireless": {"ssid": "rb"},
            "802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": {"secret": PSK}}}
    setup = write_state(lab, "rb.json", nm({"rbwifi": wifi, "rblan": LAN}))
    assert lab.run([op_dbus, "apply", setup], check=False).returncode == 0
    uuid = nmcli(lab, "-g", "connection.uuid", "connection", "show", "rbwifi").strip()
    # NetworkManager itself refuses the last step (manual method without an address) halfway through the apply.
    bad = {"rbwifi": {"state": "absent"},
           "rblan": {"ipv4": {"addresses": ["198.18.63.1/24"]}},
           "rbbad": {"connection": {"type": "802-3-ethernet", "interface-name": "nm0"}, "ipv4": {"method": "manual"}}}
    r = lab.run([op_dbus, "-o", "json", "apply", write_state(lab, "rb2.json", nm(bad))], check=False)
    assert r.returncode == 4, r.stdout + r.stderr
    assert PSK not in r.stdout + r.stderr
    assert nmcli(lab, "-g", "connection.uuid", "connection", "show", "rbwifi").strip() == uuid
    assert nmcli(lab, "-s", "-g", "802-11-wireless-security.psk", "connection", "show", "rbwifi").strip() == PSK
    assert nmcli(lab, "-g", "ipv4.addresses", "connection", "show", "rblan").strip() == "198.18.60.1/24"
    assert "rbbad" not in nmcli(lab, "-f", "NAME", "connection", "show")
    assert lab.run([op_dbus, "diff", setup], check=False).returncode == 0
    lab.run([op_dbus, "apply", write_state(lab, "rb3.json", nm({"rbwifi": {"state": "absent"},
                                                                   "rblan": {"state": "absent"}}))])


def test_watch_reports_profiles_changed_behind_its_back(lab: Any, op_dbus: str) -> None:
    from op_dbus.plugin import SUBSCRIBED, Context, Settings
    from op_dbus.plugins.networkmanager import NetworkManagerPlugin, NetworkManagerSection

    async def first_events() -> list[str]:
        scope = NetworkManagerSection.model_validate({"connections": {"w0": LAN}})
        seen: list[str] = []
        async with Context(Settings(bus_address=lab.bus_address)) as ctx:
            events = NetworkManagerPlugin().watch(scope, ctx)
            async for event in events:
                seen.append(event.source)
                if event.source == SUBSCRIBED:
                    lab.run(["nmcli", "connection", "add", "type", "ethernet", "ifname", "nm0", "con-name", "w0"])
                elif "NewConnection" in seen[-1]:
                    lab.run(["nmcli", "connection", "delete", "w0"])
                elif "ConnectionRemoved" in seen[-1]:
                    break
            await events.aclose()  # type: ignore[attr-defined]
        return seen

    seen = asyncio.run(asyncio.wait_for(first_events(), 60))
    assert seen[0] == SUBSCRIBED
    assert any(s.endswith("Settings.NewConnection") for s in seen)
    assert seen[-1].endswith("Settings.ConnectionRemoved")


def test_bridge_with_a_veth_port(lab: Any, op_dbus: str) -> None:
    lab.run(["ip", "link", "add", "nm1", "type", "veth", "peer", "name", "nm1p"])
    lab.run(["ip", "link", "set", "nm1p", "up"])
    profiles = {
        "br-lab": {"connection": {"type": "bridge", "interface-name": "nmbr0", "autoconnect": False},
                   "bridge": {"stp": False, "forward-delay": 2},
                   "ipv4": {"method": "manual", "addresses": ["198.18.64.1/24"]}, "ipv6": {"method": "disabled"},
                   "active": True},
        "br-lab-port": {"connection": {"type": "802-3-ethernet", "interface-name": "nm1", "master": "nmbr0",
                                       "slave-type": "bridge", "autoconnect": False},
                        "active": True},
    }
    state = write_state(lab, "br.json", nm(profiles))
    r = lab.run([op_dbus, "apply", state], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    link = json.loads(lab.run(["ip", "-j", "-d", "link", "show", "nm1"]).stdout)[0]
    assert link["master"] == "nmbr0"
    assert json.loads(lab.run(["ip", "-j", "-d", "link", "show", "nmbr0"]).stdout)[0]["linkinfo"]["info_kind"] == "bridge"
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 0
    r = lab.run([op_dbus, "apply", write_state(lab, "br-gone.json", nm({"br-lab-port": {"state": "absent"},
                                                                         "br-lab": {"state": "absent"}}))],
                check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "br-lab" not in nmcli(lab, "-f", "NAME", "connection", "show")
