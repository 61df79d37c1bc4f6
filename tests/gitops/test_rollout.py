"""Rollout waves: deterministic host -> wave assignment, the clock-driven gate, and the plan's validation."""

from __future__ import annotations

from collections import Counter

import pytest

from op_dbus.errors import StateFileError
from op_dbus.gitops.rollout import Rollout, TimeGate, bucket, parse_rollout, wave_of

PLAN = b"waves: [{hosts: [canary-1]}, {percent: 25}, {percent: 100}]\nwait: 120\n"


def test_hosts_land_in_waves_by_name_then_by_a_stable_bucket() -> None:
    plan = parse_rollout(PLAN, "rollout.yaml")
    assert wave_of(plan, "canary-1") == 0
    hosts = [f"web-{i}" for i in range(2000)]
    waves = Counter(wave_of(plan, h) for h in hosts)
    assert set(waves) == {1, 2}
    assert 0.20 < waves[1] / len(hosts) < 0.30  # about a quarter
    assert [wave_of(plan, h) for h in hosts] == [wave_of(plan, h) for h in hosts]  # the same every time
    assert all(0 <= bucket(h) < 100 for h in hosts)
    # a host no wave covers comes after the last one
    partial = Rollout.model_validate({"waves": [{"percent": 1}], "wait": 10})
    assert any(wave_of(partial, h) == 1 for h in hosts)


def test_the_time_gate_opens_wave_n_n_times_wait_after_the_commit() -> None:
    plan = parse_rollout(PLAN, "rollout.yaml")
    host = next(h for h in (f"web-{i}" for i in range(100)) if wave_of(plan, h) == 2)
    now = [1000.0]
    gate = TimeGate(clock=lambda: now[0])
    assert gate.decide("c", 1000, plan, "canary-1").open
    closed = gate.decide("c", 1000, plan, host)
    assert not closed.open and closed.wave == 2 and closed.opens_at == 1240 and "240 s" in closed.reason
    now[0] = 1240
    assert gate.decide("c", 1000, plan, host).open
    assert gate.decide("c", 1000, None, host).open  # no plan: every host at once


@pytest.mark.parametrize("text, where", [
    (b"waves: []\n", "waves"),
    (b"waves: [{hosts: [a], percent: 5}]\n", "waves[0]"),
    (b"waves: [{percent: 101}]\n", "waves[0].percent"),
    (b"waves: [{percent: 5}]\nwait: -1\n", "wait"),
    (b"waves: [{percent: 5}]\nspeed: 3\n", "speed"),
])
def test_bad_plans_are_refused_with_their_path(text: bytes, where: str) -> None:
    with pytest.raises(StateFileError) as e:
        parse_rollout(text, "rollout.yaml")
    assert any(p.path == where for p in e.value.problems), e.value.problems
