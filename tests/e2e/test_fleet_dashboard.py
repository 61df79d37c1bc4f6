"""The dashboard over a real fleet: an op-dbus agent inside the lab reports to a collector on the host, a unit is
stopped by hand, and the overview open in a real Chromium shows the drift on its own (no reload).

The collector runs in the container's network namespace (as in test_fleet.py); so does Chromium, through a
small wrapper that enters that namespace: Playwright drives the browser over a pipe, so it needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import STACK

pytest.importorskip("sqlalchemy", reason="needs the op-dbus[collector] extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")

pytestmark = pytest.mark.lab

PORT = 8471
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "lab-operator-pass"


def test_drift_by_hand_in_the_lab_shows_on_the_overview(lab: Any, tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (lab/setup-host.sh installs Debian's chromium)")
    exe = lab.install_op_dbus()
    store = tmp_path / "collector"
    store.mkdir(mode=0o700)
    db_url = f"sqlite:///{store}/fleet.db"
    key = store / "witness.key"
    vkey = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "key", "--db", db_url, "--key-file", str(key),
                           "--name", "collector.lab/w1"], capture_output=True, text=True, check=True).stdout.strip()
    added = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "user", "add", "ops", "--role", "operator",
                            "--db", db_url], input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen(["nsenter", f"--net=/proc/{lab.leader}/ns/net", sys.executable, "-m", "op_dbus",
                             "collector", "serve", "--db", db_url, "--key-file", str(key),
                             "--listen", f"127.0.0.1:{PORT}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    browser_in_lab = tmp_path / "chromium-in-lab"
    browser_in_lab.write_text(f'#!/bin/sh\nexec nsenter --net=/proc/{lab.leader}/ns/net {CHROMIUM} "$@"\n')
    browser_in_lab.chmod(0o700)
    try:
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/healthz', timeout=2)"
        deadline = time.monotonic() + 60
        while lab.run(["python3", "-c", probe], check=False).returncode != 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the collector did not answer inside the lab"
            time.sleep(0.3)
        token = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "token", "create", "--db", db_url],
                               capture_output=True, text=True, check=True).stdout.strip()
        joined = lab.run([exe, "fleet", "join", f"http://127.0.0.1:{PORT}", "--token", token, "--name", "lab1"],
                         check=False)
        assert joined.returncode == 0, joined.stderr
        state = lab.root / "root/fleet-state.json"
        state.write_text(json.dumps(STACK))
        state.chmod(0o600)
        started = lab.run(["systemd-run", "--unit=op-dbus-dash-agent", "-p", "Type=exec", exe, "run", "--state-file",
                           "/root/fleet-state.json", "--collector", f"http://127.0.0.1:{PORT}={vkey}"], check=False)
        assert started.returncode == 0, started.stderr
        url = f"http://127.0.0.1:{PORT}"
        try:
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(browser_in_lab), args=["--no-sandbox", "--headless"])
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(url + "/ui/")
                page.fill("#user", "ops")
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_load_state()
                row = "tr[data-host='lab1']"
                # Enrolled, the host is listed; the agent reconciles, then nginx is stopped behind its back.
                page.wait_for_selector(row, timeout=90_000)
                time.sleep(3)  # the agent's first reconciliation
                page.evaluate("() => { window.__same_page = true; }")
                lab.run(["systemctl", "stop", "nginx.service"])
                page.wait_for_function(
                    "() => { const c = document.querySelector(\"tr[data-host='lab1'] td.drift\");"
                    " return c && !c.textContent.trim().startsWith('0'); }", timeout=90_000)
                assert page.evaluate("() => window.__same_page") is True
                page.goto(url + "/ui/hosts/lab1")
                assert page.locator("figure.chart svg circle[fill='#c0392b']").count() >= 1  # drift appeared
                assert page.locator("span.badge.kind-drift").count() == 1
                browser.close()
        finally:
            lab.run(["systemctl", "stop", "op-dbus-dash-agent.service"], check=False)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
