"""The dashboard as a person uses it: a real headless Chromium (Debian's, driven by Playwright) against a real
`op-dbus collector serve` fed by real host logs (`op-dbus report`: signed checkpoints and footprints)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from op_dbus.fleet.client import request_body
from op_dbus.ledger import Ledger
from tests.fleet.test_collector_http import grow, op_dbus, start_collector

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
PASSWORD = {"ops": "operator-pass-1", "viewer": "viewer-pass-1"}
XSS = "<script>window.__xss=1</script>"
COMMIT = "0123abcd4567ef89"

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (lab/setup-host.sh installs Debian's chromium)", allow_module_level=True)


@dataclass
class Fleet:
    url: str
    db_url: str
    vkey: str
    hosts: dict[str, Ledger]
    operator_token: str


def report(log: Ledger, fleet_url: str, vkey: str) -> None:
    r = op_dbus("report", "--collector", f"{fleet_url}={vkey}", state_dir=log.state_dir)
    assert r.returncode in (0, 3), r.stdout + r.stderr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("dash")
    (tmp / "collector").mkdir(mode=0o700)
    (tmp / "witness").mkdir(mode=0o700)
    db_url = f"sqlite:///{tmp}/collector/fleet.db"
    key_file = tmp / "witness" / "witness.key"
    with ExitStack() as stack:
        url = start_collector(stack, db_url, key_file)
        vkey = op_dbus("collector", "key", "--db", db_url, "--key-file", str(key_file)).stdout.strip()
        hosts: dict[str, Ledger] = {}
        for name in ("web1", "web2", "db1"):
            log = stack.enter_context(Ledger.open(tmp / name))
            grow(log, 3)
            hosts[name] = log
            enrolled = op_dbus("collector", "enroll", name, "--key", str(log.public_key_path), "--db", db_url)
            assert enrolled.returncode == 0, enrolled.stderr
        # web2 applied a commit whose text is hostile markup: it must show as text.
        hosts["web2"].append("apply", [{"plugin": "systemd", "action": "set", "object": "x"}], {"n": "x"},
                             actor={"user": "test"}, summary="hostile commit text", meta={"commit": XSS})
        for log in hosts.values():
            report(log, url, vkey)
        # db1's key is used to re-sign a different history of the same length: the witness keeps the evidence.
        db1 = hosts["db1"]
        with Ledger.open(tmp / "rewritten", key_path=db1.key_path, origin=db1.origin) as fake:
            fake.append("apply", [{"plugin": "systemd", "action": "set", "object": "other"}], {"n": "x"},
                        actor={"user": "x"}, summary="x")
            grow(fake, 2)
            req = urllib.request.Request(url + "/add-checkpoint", data=request_body(3, [], fake.checkpoint()),
                                         method="POST")
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(req, timeout=30)
        for name, role in (("ops", "operator"), ("viewer", "viewer")):
            added = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "user", "add", name, "--role", role,
                                    "--db", db_url], input=PASSWORD[name] + "\n", capture_output=True, text=True,
                                   timeout=60)
            assert added.returncode == 0, added.stderr
        grouped = op_dbus("collector", "group", "add", "web", "web1", "web2", "--db", db_url)
        assert grouped.returncode == 0, grouped.stderr
        assert op_dbus("collector", "group", "add", "web", "nope", "--db", db_url).returncode == 2
        token = op_dbus("collector", "api-token", "create", "--role", "operator", "--db", db_url).stdout.strip()
        yield Fleet(url, db_url, vkey, hosts, token)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield b
        b.close()


def login(browser: Any, fleet: Fleet, user: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(fleet.url + "/ui/")
    assert "/ui/login" in page.url
    page.fill("#user", user)
    page.fill("#password", PASSWORD[user])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == fleet.url + "/ui/", page.content()
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (1280, 800)


def axe(page: Any) -> list[dict[str, Any]]:
    """Serious and critical accessibility violations (axe-core, vendored for the tests, run in the page)."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["html"] for n in v["nodes"]][:3]}
            for v in result if v["impact"] in ("serious", "critical")]


def test_login_is_required_and_wrong_passwords_are_rate_limited(fleet: Fleet, browser: Any) -> None:
    for path in ("/ui/api/overview", "/ui/api/alerts", "/ui/api/rollouts", "/ui/api/hosts/web1"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(fleet.url + path, timeout=10)
        assert err.value.code == 401
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(fleet.url + "/ui/alerts")
    assert "/ui/login" in page.url
    assert not axe(page)
    shot(page, "login")
    statuses = []
    for _ in range(6):
        reply = page.request.post(fleet.url + "/ui/login", form={"user": "viewer", "password": "wrong-password"},
                                  max_redirects=0)
        statuses.append(reply.status)
    assert statuses[:5] == [401] * 5 and statuses[5] == 429
    # The limit holds for the right password too, until the window passes.
    reply = page.request.post(fleet.url + "/ui/login", form={"user": "viewer", "password": PASSWORD["viewer"]},
                              max_redirects=0)
    assert reply.status == 429
    context.close()
    # Only the user was limited: clear it the way time would, so the other tests can log in as viewer.
    from sqlalchemy import delete

    from op_dbus.fleet import db

    engine = db.make_engine(fleet.db_url, pool_size=1)
    with engine.begin() as conn:
        conn.execute(delete(db.login_failures))
    engine.dispose()


def test_overview_shows_hosts_and_drift_arrives_without_reload(fleet: Fleet, browser: Any) -> None:
    page = login(browser, fleet, "ops")
    reply = page.request.get(fleet.url + "/ui/")
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    html = reply.text()
    assert "<script>" not in html.replace(XSS, "") and " style=" not in html and " onclick" not in html.lower()
    cookie = next(c for c in page.context.cookies() if c["name"] == "opdbus_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    for name in ("web1", "web2", "db1"):
        assert page.locator(f"tr[data-host='{name}']").count() == 1
    assert "EQUIVOCATION" in page.locator("tr[data-host='db1']").inner_text()
    assert page.locator("[data-count=equivocating]").inner_text() == "1"
    # Hostile text is shown as text and never runs.
    assert page.evaluate("() => window.__xss") is None
    assert not axe(page)
    # Keyboard: Tab from the top reaches the skip link, the navigation, the filters and the host links.
    reached = []
    page.locator("body").focus()
    for _ in range(25):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id || document.activeElement.textContent.trim()"))
    assert reached[0] == "Skip to content" and "Alerts" in reached and "Rollouts" in reached
    assert "q" in reached and "status" in reached
    assert "web1" in reached
    # A drift block on web1, reported: the overview shows it on its own (no navigation happens).
    page.evaluate("() => { window.__same_page = true; document.activeElement.blur(); }")  # focus off the table
    assert page.locator("tr[data-host='web1'] td.drift").inner_text() == "0"
    fleet.hosts["web1"].append("drift", [{"plugin": "systemd", "action": "drift", "object": "nginx"}], {"n": "d"},
                               actor={"user": "agent"}, summary="nginx stopped by hand")
    report(fleet.hosts["web1"], fleet.url, fleet.vkey)
    page.wait_for_function("() => document.querySelector(\"tr[data-host='web1'] td.drift\").textContent.startsWith('1')",
                           timeout=60_000)
    assert page.evaluate("() => window.__same_page") is True
    assert page.locator("[data-count=drifting]").inner_text() == "1"
    shot(page, "overview")
    # The polls are answered 304 while nothing changed.
    live = page.request.get(fleet.url + "/ui/", headers={"X-Live": "1"})
    again = page.request.get(fleet.url + "/ui/", headers={"X-Live": "1", "If-None-Match": live.headers["etag"]})
    assert live.status == 200 and "<html" not in live.text() and again.status == 304
    # The JSON twin says the same, and filters work.
    data = page.request.get(fleet.url + "/ui/api/overview?status=drifting").json()
    assert [h["name"] for h in data["hosts"]] == ["web1"] and data["hosts"][0]["drift"] == 1
    page.goto(fleet.url + "/ui/?q=web&sort=name&desc=1")
    assert [r.get_attribute("data-host") for r in page.locator("tbody tr").all()] == ["web2", "web1"]
    page.goto(fleet.url + "/ui/")
    page.select_option("#group", "web")
    page.select_option("#status", "drifting")
    page.click("form.filters button")
    page.wait_for_url("**/ui/?*group=web*")
    assert [r.get_attribute("data-host") for r in page.locator("tbody tr").all()] == ["web1"]
    page.context.close()


def test_host_and_alert_pages(fleet: Fleet, browser: Any) -> None:
    page = login(browser, fleet, "viewer")
    page.goto(fleet.url + "/ui/hosts/web1")
    assert page.locator("h1").inner_text() == "Host web1"
    assert page.locator("figure.chart svg circle").count() >= 1
    assert not axe(page)
    shot(page, "host")
    host_json = page.request.get(fleet.url + "/ui/api/hosts/web1").json()
    cli = op_dbus("-o", "json", "fleet", "host", "web1", "--collector", fleet.url, "--token", fleet.operator_token)
    assert {k: v for k, v in json.loads(cli.stdout).items()} == {k: v for k, v in host_json.items() if k != "alerts"}
    page.goto(fleet.url + "/ui/hosts/web2")
    assert XSS in page.locator("dd.mono").nth(1).inner_text()
    assert page.evaluate("() => window.__xss") is None
    page.goto(fleet.url + "/ui/alerts")
    assert page.locator("strong.equivocation").count() >= 1
    assert not axe(page)
    shot(page, "alerts")
    with page.expect_download() as download:
        page.locator("a[download]").first.click()
    text = Path(download.value.path()).read_text()
    db1 = fleet.hosts["db1"]
    assert db1.checkpoint(3) in text and "# checkpoint submitted:" in text and text.count("\n— ") >= 2
    page.context.close()


def test_rollout_halt_by_operator_refused_to_viewer_and_without_csrf(fleet: Fleet, browser: Any) -> None:
    req = urllib.request.Request(fleet.url + "/v1/rollouts", method="POST",
                                 data=json.dumps({"commit": COMMIT, "waves": ["web1", "100%"]}).encode(),
                                 headers={"Authorization": f"Bearer {fleet.operator_token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    viewer = login(browser, fleet, "viewer")
    assert "is running" in viewer.locator("p.banner").inner_text()
    viewer.goto(fleet.url + "/ui/rollouts")
    assert viewer.locator("button.halt").count() == 0
    csrf = viewer.locator("input[name=csrf]").first.get_attribute("value")
    refused = viewer.request.post(fleet.url + f"/ui/rollouts/{COMMIT}/halt", form={"csrf": csrf}, max_redirects=0)
    assert refused.status == 403
    operator = login(browser, fleet, "ops")
    operator.goto(fleet.url + "/ui/rollouts")
    assert not axe(operator)
    shot(operator, "rollouts")
    missing = operator.request.post(fleet.url + f"/ui/rollouts/{COMMIT}/halt", form={}, max_redirects=0)
    assert missing.status == 403
    wrong = operator.request.post(fleet.url + f"/ui/rollouts/{COMMIT}/halt", form={"csrf": csrf}, max_redirects=0)
    assert wrong.status == 403  # the viewer's token is not the operator's
    assert json.loads(op_dbus("-o", "json", "fleet", "rollout", "status", "--collector", fleet.url, "--token",
                              fleet.operator_token).stdout)[0]["state"] == "running"
    operator.locator("button.halt").click()
    operator.wait_for_url("**/ui/rollouts?done=*")
    assert operator.locator(".badge.state-halted").count() == 1
    assert operator.locator("button.resume").count() == 1
    rollouts = operator.request.get(fleet.url + "/ui/api/rollouts").json()
    assert rollouts[0]["state"] == "halted" and "ops" in rollouts[0]["reason"]
    # Logging out ends the session on the server: the old cookie no longer opens anything.
    cookie = next(c for c in operator.context.cookies() if c["name"] == "opdbus_session")
    operator.locator("form.logout button").click()
    operator.wait_for_url("**/ui/login")
    stale = urllib.request.Request(fleet.url + "/ui/api/rollouts", headers={"Cookie": f"opdbus_session={cookie['value']}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(stale, timeout=10)
    assert err.value.code == 401

