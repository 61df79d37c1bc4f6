"""Staged rollouts through the collector: waves open on reported success, a failed apply halts, operators resume."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from op_dbus.errors import InvalidInput
from op_dbus.fleet.client import Collector, gate_open
from op_dbus.fleet.rollout import gate_text, plan_waves
from op_dbus.ledger import Ledger, note
from tests.fleet.test_collector_http import grow, op_dbus, start_collector

COMMIT = "abc1234def"


def test_waves_are_planned_from_names_and_percentages() -> None:
    hosts = [f"h{i}" for i in range(10)]
    assert plan_waves(["h3", "20%", "100%"], hosts) == [["h3"], ["h0"], [h for h in hosts if h not in ("h3", "h0")]]
    assert plan_waves([], ["a", "b"]) == [["a", "b"]]
    assert plan_waves(["50%"], ["a", "b", "c"]) == [["a", "b", "c"]]  # left-overs join the last wave
    with pytest.raises(InvalidInput, match="not enrolled"):
        plan_waves(["zz"], hosts)
    with pytest.raises(InvalidInput):
        plan_waves(["150%"], hosts)


def _apply(log: Ledger, kind: str) -> None:
    log.append(kind, [{"plugin": "systemd", "action": "set", "object": "app"}], {"n": len(log)},
               actor={"user": "agent"}, summary=f"{kind} {COMMIT}", meta={"commit": COMMIT})


def test_a_rollout_opens_waves_halts_on_failure_and_resumes(tmp_path: Path) -> None:
    d = tmp_path / "collector"
    d.mkdir(mode=0o700)
    db_url = f"sqlite:///{d}/fleet.db"
    with ExitStack() as stack:
        logs = {name: stack.enter_context(Ledger.open(tmp_path / name)) for name in ("h1", "h2", "h3")}
        for name, log in logs.items():
            grow(log, 1)
            assert op_dbus("collector", "enroll", name, "--key", str(log.public_key_path), "--db", db_url).returncode == 0
        url = start_collector(stack, db_url, d / "witness.key")
        vkey = op_dbus("collector", "key", "--db", db_url, "--key-file", str(d / "witness.key")).stdout.strip()
        target = Collector.parse(url, vkey)
        viewer = op_dbus("collector", "api-token", "create", "--role", "viewer", "--db", db_url).stdout.strip()
        operator = op_dbus("collector", "api-token", "create", "--role", "operator", "--db", db_url).stdout.strip()

        def fleet(*args: str, token: str = operator) -> tuple[int, str, str]:
            r = op_dbus("-o", "json", "fleet", "rollout", *args, "--collector", url, "--token", token)
            return r.returncode, r.stdout, r.stderr

        def report(name: str) -> None:
            r = op_dbus("report", "--collector", f"{url}={vkey}", state_dir=logs[name].state_dir)
            assert r.returncode == 0, r.stdout + r.stderr

        code, _, err = fleet("start", COMMIT, "--wave", "h1", "--wave", "100%", token=viewer)
        assert code == 2 and "403" in err
        code, out, err = fleet("start", COMMIT, "--wave", "h1", "--wave", "100%")
        assert code == 0, err
        assert json.loads(out)["waves"] == [["h1"], ["h2", "h3"]] and json.loads(out)["opened"] == 1
        assert gate_open(logs["h1"], target, COMMIT)["open"] is True
        assert gate_open(logs["h2"], target, COMMIT)["open"] is False
        assert gate_open(logs["h2"], target, "0000000")["state"] == "unknown"

        _apply(logs["h1"], "apply")
        report("h1")
        assert gate_open(logs["h2"], target, COMMIT)["open"] is True

        _apply(logs["h2"], "failed")
        report("h2")
        halted = gate_open(logs["h3"], target, COMMIT)
        assert halted["open"] is False and halted["state"] == "halted"
        code, out, _ = fleet("status", token=viewer)
        assert code == 3 and "h2 failed to apply" in out
        alerts = json.loads(op_dbus("-o", "json", "fleet", "alerts", "--collector", url, "--token", viewer).stdout)
        assert {a["kind"] for a in alerts} >= {"rollout-halted", "apply-failed"}

        code, out, _ = fleet("resume", COMMIT)
        assert code == 0 and json.loads(out)["state"] == "running"
        assert gate_open(logs["h3"], target, COMMIT)["open"] is True
        assert fleet("halt", COMMIT)[0] == 0
        assert gate_open(logs["h3"], target, COMMIT)["open"] is False

        # The gate answers only the host's own key, and only a fresh question.
        forged = note.sign(gate_text(logs["h3"].origin, COMMIT, time.time()),
                           [note.Signer(logs["h3"].origin, Ed25519PrivateKey.generate())])
        assert _post(url, forged) == 403
        from op_dbus.ledger import keys

        own = note.Signer(logs["h3"].origin, keys.load_private_key(logs["h3"].key_path))
        assert _post(url, note.sign(gate_text(logs["h3"].origin, COMMIT, time.time() - 3600), [own])) == 400


def _post(url: str, body: str) -> int:
    req = urllib.request.Request(url + "/v1/rollout/gate", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
