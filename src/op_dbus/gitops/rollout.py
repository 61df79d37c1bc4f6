"""Staged rollouts: a repository's `rollout.yaml` splits hosts into waves; a host applies a commit when its wave opens.

    waves: [{hosts: [canary-1]}, {percent: 25}, {percent: 100}]
    wait: 120

A host is in the first wave that lists it by name; otherwise in the first `percent` wave whose percent is above
its bucket (0-99, from a hash of its name: stable across commits and hosts, nothing to coordinate). Without a
collector, wave N opens `N * wait` seconds after the commit time (`TimeGate`). A collector opens waves from the
hosts' reports instead: it implements `RolloutGate` (and may answer "halted"); the agent asks the gate on every
poll, so a wave opened later is picked up at the next fetch.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from op_dbus.errors import StateFileError
from op_dbus.state import parse_text, problems_from_validation

ROLLOUT_FILES = ("rollout.yaml", "rollout.yml", "rollout.json")


class Wave(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    hosts: list[str] | None = Field(default=None, description="hosts of this wave, by name")
    percent: int | None = Field(default=None, ge=1, le=100, description="hosts whose bucket (0-99) is below this")

    @model_validator(mode="after")
    def _one(self) -> Wave:
        if (self.hosts is None) == (self.percent is None):
            raise ValueError("a wave names exactly one of hosts, percent")
        return self


class Rollout(BaseModel):
    """The repository's rollout plan."""

    model_config = ConfigDict(strict=True, extra="forbid")

    waves: list[Wave] = Field(min_length=1, max_length=100)
    wait: float = Field(default=600.0, ge=0, le=30 * 86400, description="seconds between waves")


def parse_rollout(data: bytes, source: str) -> Rollout:
    value = parse_text(data, source)
    try:
        return Rollout.model_validate(value)
    except ValidationError as e:
        raise StateFileError(source, problems_from_validation(e, ())) from None


def bucket(host: str) -> int:
    """The host's place (0-99) in percent waves: from its name alone, the same for every commit."""
    return int.from_bytes(hashlib.sha256(b"op-dbus rollout\0" + host.encode()).digest()[:8], "big") % 100


def wave_of(plan: Rollout, host: str) -> int:
    """Index of the host's wave; a host no wave covers comes after the last one."""
    for i, wave in enumerate(plan.waves):
        if wave.hosts is not None and host in wave.hosts:
            return i
    b = bucket(host)
    for i, wave in enumerate(plan.waves):
        if wave.percent is not None and b < wave.percent:
            return i
    return len(plan.waves)


@dataclass(frozen=True)
class Decision:
    open: bool
    wave: int | None = None
    opens_at: float | None = None  # epoch seconds, when known
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"open": self.open, "wave": self.wave, "reason": self.reason}
        if self.opens_at is not None:
            out["opens_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.opens_at))
        return out


class RolloutGate(Protocol):
    """Decides whether `host` may apply `commit` now. The agent calls it on every poll until it says open."""

    def decide(self, commit: str, commit_time: int, plan: Rollout | None, host: str) -> Decision: ...


class TimeGate:
    """Waves opened by the clock alone: wave N opens N * wait seconds after the commit time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def decide(self, commit: str, commit_time: int, plan: Rollout | None, host: str) -> Decision:
        if plan is None:
            return Decision(True, reason="no rollout plan")
        wave = wave_of(plan, host)
        opens = commit_time + wave * plan.wait
        if self.clock() >= opens:
            return Decision(True, wave, opens, f"wave {wave} is open")
        return Decision(False, wave, opens, f"wave {wave} opens {int(opens - self.clock())} s from now")


class CollectorGate:
    """Waves opened by the collectors (`op-dbus fleet rollout start|resume|halt`): each is asked in turn with a
    question signed by the host's log key, and the first that answers decides.

    A commit the collector runs no rollout of (state "unknown"), or no collector reachable: `fallback` (the time
    gate) decides, so a collector that is down delays nothing beyond the repository's own plan. A collector that
    answers but refuses (host unknown or revoked, a bad signature) holds the commit: that is a misconfiguration the
    operator must see, not a reason to bypass the collector.
    """

    def __init__(self, open_ledger: Callable[[], Any], collectors: list[Any], fallback: RolloutGate | None = None,
                 timeout: float = 3.0) -> None:
        self.open_ledger = open_ledger  # the log whose key signs the question (opened per question: poll thread)
        self.collectors = collectors  # op_dbus.fleet.client.Collector
        self.fallback: RolloutGate = fallback or TimeGate()
        self.timeout = timeout

    def decide(self, commit: str, commit_time: int, plan: Rollout | None, host: str) -> Decision:
        from op_dbus.fleet.client import gate_open

        unreachable: list[str] = []
        with self.open_ledger() as ledger:
            for target in self.collectors:
                try:
                    answer = gate_open(ledger, target, commit, timeout=self.timeout)
                except PermissionError as e:  # before OSError: it is one
                    return Decision(False, reason=f"collector {target.url} refused the gate question: {e}")
                except ValueError as e:
                    return Decision(False, reason=f"collector {target.url}: {e}")
                except OSError as e:
                    unreachable.append(f"{target.url}: {getattr(e, 'reason', e)}")
                    continue
                if answer.get("state") == "unknown":
                    break  # no rollout of this commit on the collector: the repository's plan decides
                wave = answer.get("wave") if isinstance(answer.get("wave"), int) else None
                state = answer.get("state")
                if answer["open"]:
                    return Decision(True, wave, reason=f"collector {target.url}: wave {wave} is open")
                return Decision(False, wave, reason=f"collector {target.url}: rollout {state}, wave {wave} is "
                                f"not open yet (opened: {answer.get('opened')})")
        decided = self.fallback.decide(commit, commit_time, plan, host)
        why = f"collector unreachable ({'; '.join(unreachable)}), time gate: " if unreachable else \
            "no collector rollout of this commit, time gate: "
        return Decision(decided.open, decided.wave, decided.opens_at, why + decided.reason)
