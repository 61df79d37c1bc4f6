"""A real op-dbus inside the lab system reports to a collector running on the host, and its cosignatures travel.

The lab boots with a private network. The collector is a host process (host filesystem, host database, host
key) started by nsenter in the container's network namespace only, listening on the container's loopback:
the container reaches it at http://127.0.0.1:PORT as any host reaches a local collector, and no network is
opened between the two. Its PID is the collector's own (nsenter execs it), so it is ended by PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import STACK

pytest.importorskip("sqlalchemy", reason="needs the op-dbus[collector] extra")

pytestmark = pytest.mark.lab

PORT = 8470


def test_an_op_dbus_in_the_lab_is_witnessed_by_the_host_collector(lab: Any, tmp_path: Path) -> None:
    exe = lab.install_op_dbus()
    store = tmp_path / "collector"
    store.mkdir(mode=0o700)
    db_url = f"sqlite:///{store}/fleet.db"
    key = store / "witness.key"
    vkey = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "key", "--db", db_url, "--key-file", str(key),
                           "--name", "collector.lab/w1"], capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.Popen(["nsenter", f"--net=/proc/{lab.leader}/ns/net", sys.executable, "-m", "op_dbus",
                             "collector", "serve", "--db", db_url, "--key-file", str(key),
                             "--listen", f"127.0.0.1:{PORT}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=2)"
        deadline = time.monotonic() + 60
        while lab.run(["python3", "-c", probe], check=False).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the collector did not answer inside the lab"
            time.sleep(0.3)
        # The lab host joins with a one-time token: its collectors file is written for it.
        token = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "token", "create", "--db", db_url],
                               capture_output=True, text=True, check=True).stdout.strip()
        joined = lab.run([exe, "fleet", "join", f"http://127.0.0.1:{PORT}", "--token", token, "--name", "lab1"],
                         check=False)
        assert joined.returncode == 0, joined.stderr
        assert (lab.root / "etc/op-dbus/collectors").read_text().split() == [f"http://127.0.0.1:{PORT}", vkey]
        # An apply there reports by itself: no extra step.
        state = lab.root / "root/fleet-state.json"
        state.write_text(json.dumps(STACK))
        state.chmod(0o600)
        applied = lab.run([exe, "apply", "/root/fleet-state.json"], check=False)
        assert applied.returncode == 0, applied.stderr
        assert "warning" not in applied.stderr, applied.stderr
        read = ("import json, sqlite3; c = sqlite3.connect('/var/lib/op-dbus/ledger.db'); print(json.dumps(["
                "c.execute('SELECT witness, size FROM cosignatures').fetchall(), "
                "c.execute('SELECT COUNT(*) FROM blocks').fetchone()[0]]))")
        rows, size = json.loads(lab.run(["python3", "-c", read]).stdout)
        assert rows == [[vkey, size]] and size >= 2
        hosts = subprocess.run([sys.executable, "-m", "op_dbus", "-o", "json", "collector", "hosts", "--db", db_url],
                               capture_output=True, text=True, check=True)
        assert [(h["name"], h["size"]) for h in json.loads(hosts.stdout)] == [("lab1", size)]
        # The export made there carries the cosignature, and the auditor's quorum holds.
        export = lab.run([exe, "export-blockchain"], check=False)
        assert export.returncode == 0, export.stderr
        (tmp_path / "audit.json").write_text(export.stdout)
        host_pub = (lab.root / "var/lib/op-dbus/host.pub").read_text().strip()
        (tmp_path / "host.pub").write_text(host_pub + "\n")
        (tmp_path / "fleet.policy").write_text(f"log {host_pub}\nwitness c {vkey}\nquorum c\n")
        audited = subprocess.run([sys.executable, "-m", "op_dbus.audit_verify", str(tmp_path / "audit.json"), "--key",
                                  str(tmp_path / "host.pub"), "--policy", str(tmp_path / "fleet.policy")],
                                 capture_output=True, text=True)
        assert audited.returncode == 0, audited.stdout + audited.stderr

        # The agent there (`op-dbus run --collector`) sends every new block: drift behind its back is witnessed.
        started = lab.run(["systemd-run", "--unit=op-dbus-fleet-agent", "-p", "Type=exec", exe, "run", "--state-file",
                           "/root/fleet-state.json", "--collector", f"http://127.0.0.1:{PORT}={vkey}"], check=False)
        assert started.returncode == 0, started.stderr
        try:
            # the agent's first reconciliation: its sources in place before the change it must see
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = lab.run([exe, "-o", "json", "status"], check=False)
                if st.returncode == 0 and json.loads(st.stdout).get("watching", {}).get("systemd") == "watching":
                    break
                time.sleep(0.5)
            lab.run(["systemctl", "stop", "nginx.service"])
            deadline = time.monotonic() + 90
            while True:
                rows, grown = json.loads(lab.run(["python3", "-c", read]).stdout)
                if (grown > size and [vkey, grown] in rows) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            journal = lab.run(["journalctl", "-u", "op-dbus-fleet-agent", "-n", "30", "--no-pager"], check=False).stdout
            assert grown > size and [vkey, grown] in rows, (rows, grown, size, journal)
            hosts = subprocess.run([sys.executable, "-m", "op_dbus", "-o", "json", "collector", "hosts", "--db",
                                    db_url], capture_output=True, text=True, check=True)
            assert json.loads(hosts.stdout)[0]["size"] == grown
            alerts = subprocess.run([sys.executable, "-m", "op_dbus", "-o", "json", "collector", "alerts", "--db",
                                     db_url], capture_output=True, text=True)
            assert "drift" in {a["kind"] for a in json.loads(alerts.stdout)}
        finally:
            lab.run(["systemctl", "stop", "op-dbus-fleet-agent.service"], check=False)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
