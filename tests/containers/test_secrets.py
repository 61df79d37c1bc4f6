"""Secrets in container environments, end to end against a real podman service and the real audit log.

One container's DB_PASSWORD goes through its life: created, left alone, changed, recorded, exported, searched,
rolled back and watched by the agent. At every step the clear value must reach the container and nothing else:
not the output (text or JSON), not ledger.db, not an export, not the search index, not an agent log line.
The tests run in file order and share the container.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.containers.conftest import SRC, OpDbus, Podman, Templates

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
NAME = "sec-1"
PW1 = "horse-battery-staple-1A"  # low entropy on purpose: a plain hash of it would be found by guessing
PW2 = "horse-battery-staple-2B"
PW3 = "horse-battery-staple-3C"
CONTEXT = b"op-dbus secret value v1\x00"  # the HMAC's domain separation prefix (op_dbus.secret)
BLOCKS: dict[str, int] = {}  # password -> the block whose apply set it


def section(templates: Templates, password: Any, **env: Any) -> dict[str, Any]:
    return {"templates": {"one": {"source": str(templates.one)}},
            "containers": {NAME: {"backend": "podman", "image": "one", "command": SLEEP,
                                  "env": {"DB_PASSWORD": password, "TZ": "UTC", **env}}}}


def live_env(podman: Podman, name: str = NAME) -> dict[str, str]:
    data = podman.inspect(name)
    assert data is not None, f"no container {name}"
    return dict(item.partition("=")[::2] for item in data["Config"]["Env"])


def hmac_of(op: OpDbus, value: str) -> str:
    key = (op.state_dir / "secret-hmac.key").read_bytes()
    return hmac.new(key, CONTEXT + value.encode(), hashlib.sha256).hexdigest()


def assert_hidden(text: str, *values: str) -> None:
    for value in values:
        assert value not in text, f"a secret value appears in: {text[:2000]}"


@pytest.fixture(scope="module")
def op(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"), {"CONTAINER_HOST": f"unix://{podman.socket}"},
                  tmp_path_factory.mktemp("files"))


def test_diff_shows_no_secret_in_text_or_json(op: OpDbus, templates: Templates) -> None:
    f = op.state("pw1", section(templates, PW1))
    text = op("diff", str(f))
    assert text.code == 3, text.err
    assert_hidden(text.out + text.err, PW1)
    assert "DB_PASSWORD: set" in text.out
    js = op("-o", "json", "diff", str(f))
    assert js.code == 3, js.err
    assert_hidden(js.out + js.err, PW1)
    create = js.json()["changes"][-1]
    assert create["action"] == "create"
    assert create["after"]["env"] == {"DB_PASSWORD": "<secret>", "TZ": "UTC"}
    assert create["secrets"] == {"DB_PASSWORD": "set"}


def test_apply_dry_run_shows_no_secret(op: OpDbus, templates: Templates, podman: Podman) -> None:
    f = op.state("pw1", section(templates, PW1))
    for args in (("apply", "--dry-run"), ("-o", "json", "apply", "--dry-run")):
        r = op(*args, str(f))
        assert r.code == 0, r.err
        assert_hidden(r.out + r.err, PW1)
        assert "DB_PASSWORD" in r.out
    assert podman.inspect(NAME) is None


def test_apply_gives_the_container_the_clear_value_and_shows_none(op: OpDbus, templates: Templates,
                                                                   podman: Podman) -> None:
    r = op("apply", str(op.state("pw1", section(templates, PW1))))
    assert r.code == 0, r.err
    BLOCKS[PW1] = int(re.search(r"recorded block (\d+)", r.out).group(1))  # type: ignore[union-attr]
    assert_hidden(r.out + r.err, PW1)
    assert live_env(podman)["DB_PASSWORD"] == PW1
    assert podman.cli("exec", NAME, "/bin/sh", "-c", "echo $DB_PASSWORD").stdout.strip() == PW1


def test_an_unchanged_secret_is_no_change(op: OpDbus, templates: Templates) -> None:
    r = op("-o", "json", "diff", str(op.state("pw1", section(templates, PW1))))
    assert r.code == 0, r.out + r.err
    assert r.json()["changes"] == []


def test_the_secret_key_is_0600_beside_host_key(op: OpDbus) -> None:
    key = op.state_dir / "secret-hmac.key"
    assert (op.state_dir / "host.key").exists()
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_bytes()) == 32


def ledger_bytes(op: OpDbus) -> bytes:
    return b"".join(p.read_bytes() for p in op.state_dir.glob("ledger.db*"))


def test_ledger_db_holds_a_keyed_hash_not_the_value_nor_its_sha256(op: OpDbus) -> None:
    data = ledger_bytes(op)
    assert data, "no ledger.db"
    assert PW1.encode() not in data
    assert hashlib.sha256(PW1.encode()).hexdigest().encode() not in data
    assert hmac_of(op, PW1).encode() in data


def test_a_changed_secret_shows_as_changed_and_records_two_hmacs(op: OpDbus, templates: Templates,
                                                                  podman: Podman) -> None:
    f = op.state("pw2", section(templates, PW2))
    text = op("diff", str(f))
    assert text.code == 3, text.err
    assert_hidden(text.out + text.err, PW1, PW2)
    assert "DB_PASSWORD: changed" in text.out
    js = op("-o", "json", "diff", str(f))
    (change,) = js.json()["changes"]
    assert change["action"] == "recreate" and change["secrets"] == {"DB_PASSWORD": "changed"}
    assert_hidden(js.out, PW1, PW2)
    r = op("-o", "json", "apply", str(f))
    assert r.code == 0, r.err
    assert_hidden(r.out + r.err, PW1, PW2)
    assert live_env(podman)["DB_PASSWORD"] == PW2
    index = r.json()["block"]["index"]
    shown = op("-o", "json", "blockchain", "show", str(index))
    assert shown.code == 0, shown.err
    assert_hidden(shown.out, PW1, PW2)
    (recorded,) = shown.json()["changes"]
    assert recorded["before"]["env"]["DB_PASSWORD"] == {"secret_hmac": hmac_of(op, PW1)}
    assert recorded["after"]["env"]["DB_PASSWORD"] == {"secret_hmac": hmac_of(op, PW2)}
    assert shown.json()["state"]["plugins"]["containers"]["containers"][NAME]["env"]["DB_PASSWORD"] == \
        {"secret_hmac": hmac_of(op, PW2)}


def test_blockchain_show_text_shows_no_secret(op: OpDbus) -> None:
    size = len(op("-o", "json", "blockchain", "list").json())
    for index in range(size):
        r = op("blockchain", "show", str(index))
        assert r.code == 0, r.err
        assert_hidden(r.out, PW1, PW2)
    assert "DB_PASSWORD: changed" in op("blockchain", "show", str(size - 1)).out


def test_export_holds_no_secret_and_still_verifies(op: OpDbus, tmp_path: Path) -> None:
    export = tmp_path / "audit.json"
    r = op("export-blockchain", "--file", str(export))
    assert r.code == 0, r.err
    assert_hidden(export.read_text(), PW1, PW2)
    check = subprocess.run([sys.executable, "-m", "op_dbus.audit_verify", str(export), "--key",
                            str(op.state_dir / "host.pub")], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(SRC)}, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_search_index_holds_no_secret(op: OpDbus) -> None:
    r = op("-o", "json", "blockchain", "search", "--reindex", "DB_PASSWORD", "changed")
    assert r.code == 0, r.err
    assert r.json(), "the change of DB_PASSWORD is found by name"
    index = b"".join(p.read_bytes() for p in op.state_dir.glob("search.db*"))
    assert index
    assert PW1.encode() not in index and PW2.encode() not in index


def test_query_shows_the_hmac_and_its_output_reapplies_as_no_change(op: OpDbus) -> None:
    r = op("-o", "json", "introspect", "containers")
    assert r.code == 0, r.err
    assert_hidden(r.out, PW1, PW2)
    doc = r.json()
    assert doc["plugins"]["containers"]["containers"][NAME]["env"]["DB_PASSWORD"] == {"secret_hmac": hmac_of(op, PW2)}
    f = op.files / "introspected.json"
    f.write_text(json.dumps(doc))
    f.chmod(0o600)
    again = op("-o", "json", "diff", str(f))
    assert again.code == 0, again.out + again.err


def test_verify_current_compares_the_recorded_hmac_with_the_live_value(op: OpDbus) -> None:
    r = op("verify", "--current")
    assert r.code == 0, r.out + r.err
    assert_hidden(r.out + r.err, PW1, PW2)


def test_rollback_to_another_secret_says_it_needs_the_value(op: OpDbus, podman: Podman) -> None:
    target = BLOCKS[PW1]
    size = len(op("-o", "json", "blockchain", "list").json())
    for args in ((), ("--dry-run",)):
        r = op("rollback", "--to-block", str(target), *args)
        assert r.code == 2, r.out + r.err
        assert "DB_PASSWORD" in r.err and "--secrets" in r.err
        assert_hidden(r.out + r.err, PW1, PW2)
    assert live_env(podman)["DB_PASSWORD"] == PW2  # nothing changed, no block
    assert len(op("-o", "json", "blockchain", "list").json()) == size


def test_rollback_takes_the_secret_from_a_state_file_only_if_its_hmac_matches(op: OpDbus, templates: Templates,
                                                                               podman: Podman) -> None:
    target = BLOCKS[PW1]
    wrong = op("rollback", "--to-block", str(target), "--secrets", str(op.state("pw3", section(templates, PW3))))
    assert wrong.code == 2, wrong.out + wrong.err
    assert live_env(podman)["DB_PASSWORD"] == PW2
    r = op("-o", "json", "rollback", "--to-block", str(target), "--secrets", str(op.state("pw1", section(templates, PW1))))
    assert r.code == 0, r.err
    assert_hidden(r.out + r.err, PW1, PW2)
    assert r.json()["changes"][0]["secrets"] == {"DB_PASSWORD": "changed"}
    assert live_env(podman)["DB_PASSWORD"] == PW1


def test_agent_drift_log_lines_say_changed_and_carry_no_value(op: OpDbus, templates: Templates,
                                                             podman: Podman) -> None:
    assert live_env(podman)["DB_PASSWORD"] == PW1
    state = op.state("agent", section(templates, PW3))
    argv = [sys.executable, "-m", "op_dbus", "--state-dir", str(op.state_dir), "run", "--state-file", str(state),
            "--mode", "shadow", "--interval", "3600"]
    env = {**os.environ, "PYTHONPATH": str(SRC), **op.env}
    env.pop("NOTIFY_SOCKET", None)
    agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert agent.stderr is not None
        deadline = time.monotonic() + 120
        drift = None
        while drift is None and time.monotonic() < deadline:
            line = agent.stderr.readline()
            if not line:
                break
            lines.append(line)
            try:
                record = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            if record.get("event") == "drift":
                drift = record
        assert drift is not None, "".join(lines)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            rest = agent.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            agent.kill()
            rest = agent.communicate()[1]
    log = "".join(lines) + rest
    assert_hidden(log, PW1, PW3)
    (change,) = drift["changes"]
    assert change["secrets"] == {"DB_PASSWORD": "changed"}
    assert live_env(podman)["DB_PASSWORD"] == PW1  # shadow mode


def test_inline_and_file_secrets_reach_the_container_and_nothing_else(op: OpDbus, templates: Templates,
                                                                      podman: Podman, tmp_path: Path) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    db = secret_dir / "db"
    db.write_text("value-from-a-file-4D\n")
    db.chmod(0o600)
    doc = section(templates, {"secret_file": str(db)}, SESSION={"secret": "inline-secret-5E"},
                  MY_KEYBOARD={"value": "us-intl", "secret": False})
    f = op.state("forms", doc)
    r = op("-o", "json", "apply", str(f))
    assert r.code == 0, r.err
    assert_hidden(r.out + r.err, "value-from-a-file-4D", "inline-secret-5E")
    assert "us-intl" in r.out  # marked as not secret: shown
    env = live_env(podman)
    assert env["DB_PASSWORD"] == "value-from-a-file-4D" and env["SESSION"] == "inline-secret-5E"
    assert env["MY_KEYBOARD"] == "us-intl"
    assert_hidden(ledger_bytes(op).decode(errors="replace"), "value-from-a-file-4D", "inline-secret-5E")
    assert op("-o", "json", "diff", str(f)).code == 0


@pytest.mark.parametrize("damage", ["mode-0644", "symlink", "other-owner"])
def test_an_unsafe_secret_file_is_refused_and_changes_nothing(op: OpDbus, templates: Templates, podman: Podman,
                                                              tmp_path: Path, damage: str) -> None:
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(mode=0o700)
    real = secret_dir / "real"
    real.write_text("attacker-chosen-6F\n")
    real.chmod(0o600)
    path = secret_dir / "db"
    if damage == "mode-0644":
        real.chmod(0o644)
        path = real
    elif damage == "symlink":
        path.symlink_to(real)
    else:
        os.chown(real, 65534, 65534)
        path = real
    before = live_env(podman)
    size = len(op("-o", "json", "blockchain", "list").json())
    r = op("apply", str(op.state("unsafe", section(templates, {"secret_file": str(path)}))))
    assert r.code == 2, r.out + r.err
    assert "secret file" in r.err and "DB_PASSWORD" in r.err
    assert_hidden(r.out + r.err, "attacker-chosen-6F")
    assert live_env(podman) == before
    assert len(op("-o", "json", "blockchain", "list").json()) == size


def test_a_failed_apply_sets_the_old_secret_back_and_shows_none(op: OpDbus, templates: Templates,
                                                                podman: Podman) -> None:
    assert op("apply", str(op.state("pw1", section(templates, PW1)))).code == 0
    doc = section(templates, PW2)
    # the recreation with PW2 comes first; then this container cannot start, and everything is undone
    doc["containers"]["broken-1"] = {"backend": "podman", "image": "one", "command": ["/nonexistent"]}
    r = op("apply", str(op.state("broken", doc)))
    assert r.code == 4, r.out + r.err
    assert_hidden(r.out + r.err, PW1, PW2)
    assert live_env(podman)["DB_PASSWORD"] == PW1
    assert podman.inspect("broken-1") is None
    assert_hidden(ledger_bytes(op).decode(errors="replace"), PW1, PW2)


def test_a_crash_after_a_secret_changed_is_recovered_except_that_secret(op: OpDbus, templates: Templates,
                                                                        podman: Podman) -> None:
    """The intent record holds HMACs only, so the next command cannot set the old secret back: it says so."""
    assert live_env(podman)["DB_PASSWORD"] == PW1
    doomed = OpDbus(op.state_dir, {**op.env, "OP_DBUS_FAULTS": "after-plugin:containers"}, op.files)
    r = doomed("apply", str(op.state("pw2", section(templates, PW2))))
    assert r.code == -signal.SIGKILL, r.out + r.err
    assert live_env(podman)["DB_PASSWORD"] == PW2
    assert_hidden((op.state_dir / "transaction.json").read_text(), PW1, PW2)
    listed = op("-o", "json", "blockchain", "list")
    assert listed.code == 0, listed.err
    assert "recovered an interrupted transaction" in listed.err and "DB_PASSWORD" in listed.err
    assert_hidden(listed.out + listed.err, PW1, PW2)
    last = op("-o", "json", "blockchain", "show", str(listed.json()[-1]["index"])).json()
    assert last["kind"] == "failed"
    assert any("containers sec-1: DB_PASSWORD" in e for e in last["meta"]["errors"])
    assert live_env(podman)["DB_PASSWORD"] == PW2  # left as it was, and said so: re-applying sets it
    assert_hidden(ledger_bytes(op).decode(errors="replace"), PW1, PW2)
