"""Auditors check witness quorums offline: `audit_verify --policy` (C2SP tlog-policy) on real exports, and a host
log cut and re-signed by an attacker holding the host key is refused by the witness, flagged, and fails the policy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from op_dbus import audit_verify
from op_dbus.fleet import db
from op_dbus.fleet.witness import Witness
from op_dbus.ledger import Ledger, cosignature
from op_dbus.ledger.cosignature import WitnessSigner
from tests.fleet.test_collector_http import grow, op_dbus, start_collector

GUARD = (
    "import sys, runpy\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'op_dbus' or name.startswith('op_dbus.'):\n"
    "            raise ImportError('the auditor must not import op_dbus: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "sys.argv = ['audit_verify.py'] + sys.argv[1:]\n"
    "runpy.run_path('audit_verify.py', run_name='__main__')\n"
)


def run_isolated(tmp_path: Path, export: Path, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The verifier as an auditor runs it: a copy of the one file under `python -I`, op_dbus unimportable."""
    lone = tmp_path / "auditor"
    lone.mkdir(exist_ok=True)
    shutil.copy(audit_verify.__file__, lone / "audit_verify.py")
    return subprocess.run([sys.executable, "-I", "-c", GUARD, str(export), "--key", str(key), *extra],
                          cwd=lone, capture_output=True, text=True, timeout=120)


def witness_vkey() -> str:
    return WitnessSigner("w.example/x", Ed25519PrivateKey.generate()).verifier.vkey


def test_policy_parses_the_spec_shapes(tmp_path: Path) -> None:
    keys = [witness_vkey() for _ in range(4)]
    with Ledger.open(tmp_path / "h") as log:
        log_vkey = log.verifier_key
    text = (f"# fleet policy\nlog {log_vkey} https://host.example/\n\n"
            f"witness A {keys[0]}\n\twitness B {keys[1]} http://c/\nwitness C {keys[2]}\n"
            "group AB 2 A B\ngroup top any AB C\nquorum top\n")
    policy = audit_verify.parse_policy(text)
    assert policy.quorum == "top" and policy.groups["AB"] == (2, ["A", "B"]) and len(policy.logs) == 1
    assert audit_verify._witnessed(policy, "top", {"C"})
    assert audit_verify._witnessed(policy, "top", {"A", "B"})
    assert not audit_verify._witnessed(policy, "top", {"A"})
    assert audit_verify.parse_policy("quorum none\n").quorum == "none"


@pytest.mark.parametrize("text,message", [
    ("witness A {k0}\n", "no quorum"),
    ("witness A {k0}\nquorum A\nquorum A\n", "second quorum"),
    ("witness A {k0}\nwitness B {k0}\nquorum A\n", "duplicate key"),
    ("witness A {k0}\ngroup G 2 A\nquorum G\n", "threshold"),
    ("witness A {k0}\ngroup G any A B\nquorum G\n", "'B' is not a witness"),
    ("witness A {k0}\ngroup G any A A\nquorum G\n", "listed twice"),
    ("quorum A\nwitness A {k0}\n", "not a witness or group defined above"),
    ("witness none {k0}\nquorum none\n", "reserved"),
    ("witness A {log}\nquorum A\n", "signature type 0x04"),
    ("witness A {k0}\nquorum A\x0b\n", "control characters"),
])
def test_bad_policies_are_refused_naming_the_line(text: str, message: str, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "h") as log:
        log_vkey = log.verifier_key
    with pytest.raises(audit_verify.Unreadable, match=message):
        audit_verify.parse_policy(text.format(k0=witness_vkey(), log=log_vkey))


def _collector(stack: ExitStack, tmp_path: Path, label: str) -> tuple[str, str, str]:
    d = tmp_path / label
    d.mkdir(mode=0o700)
    url_db = f"sqlite:///{d}/fleet.db"
    url = start_collector(stack, url_db, d / "witness.key")
    vkey = op_dbus("collector", "key", "--db", url_db, "--key-file", str(d / "witness.key")).stdout.strip()
    return url, vkey, url_db


def _export(state_dir: Path, out: Path) -> Path:
    r = op_dbus("export-blockchain", "--file", str(out), state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    return out


def test_quorum_of_two_collectors_then_a_cut_log_is_refused_and_fails_the_policy(tmp_path: Path) -> None:
    with ExitStack() as stack:
        (url1, vkey1, db1), (url2, vkey2, db2) = (_collector(stack, tmp_path, "c1"), _collector(stack, tmp_path, "c2"))
        with Ledger.open(tmp_path / "host") as log:
            grow(log, 6)
            key_path, origin, pub = log.key_path, log.origin, log.public_key_path
            for url_db in (db1, db2):
                assert op_dbus("collector", "enroll", "web1", "--key", str(pub), "--db", url_db).returncode == 0
            # Only the first collector is told about the host at first: a 2-of-2 quorum is not met, 1-of-2 is.
            assert op_dbus("report", "--collector", f"{url1}={vkey1}", state_dir=log.state_dir).returncode == 0
            policy_any = tmp_path / "any.policy"
            policy_all = tmp_path / "all.policy"
            head = f"log {log.verifier_key}\nwitness c1 {vkey1}\nwitness c2 {vkey2}\n"
            policy_any.write_text(head + "group g any c1 c2\nquorum g\n")
            policy_all.write_text(head + "group g all c1 c2\nquorum g\n")
            export = _export(log.state_dir, tmp_path / "one.json")
            assert run_isolated(tmp_path, export, pub, "--policy", str(policy_any)).returncode == 0
            failed = run_isolated(tmp_path, export, pub, "--policy", str(policy_all))
            assert failed.returncode == 3 and "not cosigned by the quorum" in failed.stdout, failed.stdout
            both = op_dbus("report", "--collector", f"{url1}={vkey1}", "--collector", f"{url2}={vkey2}",
                           state_dir=log.state_dir)
            assert both.returncode == 0, both.stdout
            export = _export(log.state_dir, tmp_path / "two.json")
            ok = run_isolated(tmp_path, export, pub, "--policy", str(policy_all))
            assert ok.returncode == 0, ok.stdout
            witnessed = log.checkpoint()

        # The attacker, root on the host with its key, cuts the log to 2 blocks and writes another history.
        # The forged log lives where the CLI finds it signed by that same key: state_dir/host.key.
        forged_dir = tmp_path / "forged"
        forged_dir.mkdir(mode=0o700)
        forged_key = forged_dir / "host.key"
        forged_key.write_bytes(key_path.read_bytes())
        forged_key.chmod(0o600)
        with Ledger.open(forged_dir, key_path=forged_key, origin=origin) as forged:
            grow(forged, 2)
            forged.append("apply", [{"plugin": "systemd", "action": "stop", "object": "auditd"}], {"n": "x"},
                          actor={"user": "attacker"}, summary="hidden")
            grow(forged, 5)
            assert len(forged) == 8 and forged.checkpoint(6) != witnessed
            refused = op_dbus("report", "--collector", f"{url1}={vkey1}", "--collector", f"{url2}={vkey2}",
                              state_dir=forged.state_dir)
            assert refused.returncode == 3, refused.stdout
            assert "consistency proof does not verify" in refused.stdout
            export = _export(forged.state_dir, tmp_path / "forged.json")
            # Plain verification passes (the attacker holds the key); the policy does not.
            assert run_isolated(tmp_path, export, pub).returncode == 0
            failed = run_isolated(tmp_path, export, pub, "--policy", str(policy_any))
            assert failed.returncode == 3 and "not cosigned by the quorum" in failed.stdout
            # Grafting the genuine cosignatures onto the forged export does not help either.
            import json

            doc = json.loads(export.read_text())
            doc["cosignatures"] = json.loads((tmp_path / "two.json").read_text())["cosignatures"]
            assert len(doc["cosignatures"]) == 2
            grafted = tmp_path / "grafted.json"
            grafted.write_text(json.dumps(doc))
            assert run_isolated(tmp_path, grafted, pub, "--policy", str(policy_any)).returncode == 3
        for url_db in (db1, db2):
            engine = db.make_engine(url_db)
            alerts = Witness(engine, None).alerts()
            assert [(a["host"], a["kind"]) for a in alerts] == [("web1", "equivocation")]
            engine.dispose()
    assert cosignature.last_cosigned(str(tmp_path / "forged" / "ledger.db"), vkey1) == 0


def test_audit_verify_stays_standalone() -> None:
    """The auditor's file imports the standard library and cryptography only (the isolated runs prove it works)."""
    src = Path(audit_verify.__file__).read_text()
    imports = {line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "argparse", "base64", "binascii", "codecs", "hashlib", "json", "sys",
                       "dataclasses", "typing", "cryptography"}, imports
