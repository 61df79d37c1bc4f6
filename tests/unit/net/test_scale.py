"""The net diff at thousands of routes: a converged state is no change, and one changed route is one replacement."""

from __future__ import annotations

from op_dbus.plugins.net import NetPlugin, NetSection

N = 10_000


def _routes(n: int, via: str = "v0") -> list[dict]:
    return [{"destination": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", "next-hop-interface": via, "metric": 0}
            for i in range(n)]


def test_ten_thousand_converged_routes_diff_to_nothing_and_one_change_to_one_replacement() -> None:
    # Before routes were keyed, this diff compared every desired route with every current one (minutes at N=10,000).
    iface = [{"name": "v0", "type": "veth", "state": "up", "veth": {"peer": "v1"}},
             {"name": "v1", "type": "veth", "state": "up", "veth": {"peer": "v0"}}]
    current = NetSection.model_validate({"interfaces": iface, "routes": _routes(N)})
    desired = NetSection.model_validate({"interfaces": [{"name": "v0"}], "routes": _routes(N)})
    assert NetPlugin().diff(desired, current) == []
    moved = _routes(N)
    moved[N // 2]["next-hop-interface"] = "v1"
    changes = NetPlugin().diff(NetSection.model_validate({"routes": moved}), current)
    assert [c.action for c in changes] == ["remove-route", "add-route"]
    gone = NetPlugin().diff(NetSection.model_validate({"interfaces": [{"name": "v0", "state": "absent"}]}), current)
    assert sum(c.action == "remove-route" for c in gone) == N
