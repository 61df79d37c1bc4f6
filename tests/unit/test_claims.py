"""The engine's cross-plugin check: an interface declared in both `net` and `networkmanager` is refused."""

from __future__ import annotations

from op_dbus.engine import claim_conflicts
from op_dbus.plugins.net import NetPlugin, NetSection
from op_dbus.plugins.networkmanager import NetworkManagerPlugin, NetworkManagerSection


def _claims(net: dict[str, object], nm: dict[str, object]) -> dict[str, dict[str, str]]:
    return {"net": NetPlugin().claims(NetSection.model_validate(net)),
            "networkmanager": NetworkManagerPlugin().claims(NetworkManagerSection.model_validate(nm))}


LAN = {"connections": {"lan0": {"connection": {"type": "802-3-ethernet", "interface-name": "eth1"}}}}


def test_same_interface_in_both_is_a_problem_naming_the_device_and_profile() -> None:
    (problem,) = claim_conflicts(_claims({"interfaces": [{"name": "eth1", "mtu": 1400}]}, LAN))
    text = str(problem)
    assert "interface eth1 is declared by 2 plugins" in text
    assert "plugins.net.interfaces[0]" in text
    assert "NetworkManager manages device 'eth1' through profile 'lan0'" in text


def test_different_interfaces_absent_entries_and_other_namespaces_do_not_conflict() -> None:
    assert claim_conflicts(_claims({"interfaces": [{"name": "eth2"}]}, LAN)) == []
    assert claim_conflicts(_claims({"interfaces": [{"name": "eth1", "state": "absent"}]}, LAN)) == []
    assert claim_conflicts(_claims({"interfaces": [{"name": "eth1"}], "netns": "ns1"}, LAN)) == []
    gone = {"connections": {"lan0": {"state": "absent", "connection": {"interface-name": "eth1"}}}}
    assert claim_conflicts(_claims({"interfaces": [{"name": "eth1"}]}, gone)) == []
