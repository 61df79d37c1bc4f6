"""The dashboard's fleet overview at scale: server time per page and first contentful paint in Chromium.

    python benchmarks/dashboard.py [--hosts 10000] [--rounds 15] [--smoke]

A SQLite collector database is filled with --hosts enrolled hosts, each with a real Ed25519 key, a real signed
footprint (some drifting, some failing, a few equivocating) and a witnessed size. `op-dbus collector serve`
serves it on loopback; a dashboard user logs in over HTTP. Interleaved, for --rounds rounds, medians:
  - the overview page (/ui/: counters, filters, sorting, one page of 50 rows) as HTML, server time (the
    Server-Timing header) and wall time, unfiltered, filtered by status, text search, sorted by drift, page 100;
  - what a user would otherwise run: `GET /v1/hosts` (the whole list behind `op-dbus fleet hosts -o json`);
and first contentful paint of /ui/ in Debian's headless Chromium (Playwright), when both are present.
Bars: overview server time < 200 ms, first contentful paint < 1 s.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from benchmarks.pgcluster import free_port  # noqa: E402
from op_dbus.fleet import db  # noqa: E402
from op_dbus.fleet.fleetview import FleetView, footprint_text  # noqa: E402
from op_dbus.fleet.users import Users  # noqa: E402
from op_dbus.ledger import note  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "benchmark-password"


def fill(db_url: str, count: int) -> None:
    """`count` hosts with real keys and signed footprints, written in bulk (the HTTP path is measured by the
    collector benchmark; here the subject is reading)."""
    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    now = time.time()
    hosts, witnessed, footprints, summaries, alerts = [], [], [], [], []
    for i in range(count):
        name = f"host{i:05d}"
        key = Ed25519PrivateKey.generate()
        origin = f"op-dbus/bench/{name}"
        signer = note.Signer(origin, key)
        drift = 2 if i % 17 == 0 else 0
        result = "failed" if i % 101 == 0 else "ok"
        doc = {"head": {"index": 40 + i % 9, "hash": f"{i:064x}"}, "plugin_state_hashes": {"systemd": f"{i:064x}"},
               "drift": drift, "last_apply": {"index": 40, "kind": "apply", "result": result},
               "commit": f"{(i % 3) + 10:040x}", "mode": "enforce" if i % 2 else "shadow", "version": "0.1.0",
               "time": "2026-01-01T00:00:00Z"}
        received = now - (i % 600)
        hosts.append({"name": name, "origin": origin, "vkey": signer.verifier.vkey, "enrolled": now - 86400,
                      "revoked": None})
        witnessed.append({"origin": origin, "size": 41 + i % 9, "root": bytes(32), "checkpoint": None, "updated": received})
        footprints.append({"host": name, "received": received, "note": note.sign(footprint_text(origin, doc), [signer])})
        summaries.append(db.summary_values(name, doc, received, received - 300 if drift else None))
        if drift:
            alerts.append({"host": name, "kind": "drift", "detail": "drift", "time": received, "cleared": None})
        if i % 997 == 0:
            alerts.append({"host": name, "kind": "equivocation", "detail": "two roots", "time": received, "cleared": None})
    with engine.begin() as conn:
        for table, rows in ((db.hosts, hosts), (db.witness_state, witnessed), (db.footprints, footprints),
                            (db.host_summary, summaries), (db.alerts, alerts)):
            if rows:
                conn.execute(table.insert(), rows)
    Users(engine).add("bench", "viewer", PASSWORD)
    FleetView(engine)  # the schema is complete
    engine.dispose()


def start(stack: ExitStack, db_url: str, tmp: Path) -> str:
    port = free_port()
    key = tmp / "witness" / "witness.key"
    proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", db_url, "--key-file",
                             str(key), "--name", "bench/w", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(20)))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the collector did not start") from None
            time.sleep(0.1)


def session(url: str) -> tuple[urllib.request.OpenerDirector, str]:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(url + "/ui/login", data=urllib.parse.urlencode({"user": "bench", "password": PASSWORD}).encode(),
                timeout=60)
    cookie = next(c.value for c in jar if c.name == "opdbus_session")
    return opener, cookie


def timed(opener: urllib.request.OpenerDirector, url: str, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall ms, server ms from Server-Timing or NaN) for one GET."""
    req = urllib.request.Request(url, headers=headers or {})
    start = time.perf_counter()
    with opener.open(req, timeout=60) as resp:
        resp.read()
        server = resp.headers.get("Server-Timing", "")
    wall = 1000 * (time.perf_counter() - start)
    return wall, float(server.split("dur=")[1]) if "dur=" in server else float("nan")


def first_paint(url: str, cookie: str, rounds: int) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.access(CHROMIUM, os.X_OK):
        return None
    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        for _ in range(rounds):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies([{"name": "opdbus_session", "value": cookie, "url": url + "/ui/"}])
            page = context.new_page()
            page.goto(url + "/ui/", wait_until="load")
            fcp = page.evaluate("""() => new Promise(done => {
                const seen = performance.getEntriesByName('first-contentful-paint');
                if (seen.length) return done(seen[0].startTime);
                new PerformanceObserver(list => done(list.getEntries()[0].startTime))
                    .observe({type: 'paint', buffered: true});
            })""")
            results.append(float(fcp))
            context.close()
        browser.close()
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="one round, 300 hosts (a test runs this)")
    args = parser.parse_args()
    if args.smoke:
        args.hosts, args.rounds = 300, 1
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "db").mkdir(mode=0o700)
        (tmp / "witness").mkdir(mode=0o700)
        db_url = f"sqlite:///{tmp}/db/fleet.db"
        started = time.perf_counter()
        fill(db_url, args.hosts)
        print(f"filled {args.hosts} hosts with signed footprints in {time.perf_counter() - started:.1f} s")
        url = start(stack, db_url, tmp)
        opener, cookie = session(url)
        token = subprocess.run([sys.executable, "-m", "op_dbus", "collector", "api-token", "create", "--db", db_url],
                               capture_output=True, text=True, check=True).stdout.strip()
        cases = {
            "overview": "/ui/",
            "status=drifting": "/ui/?status=drifting",
            "text search": "/ui/?q=host0999",
            "sort drift desc": "/ui/?sort=drift&desc=1",
            "page 100": f"/ui/?page={max(1, args.hosts // 100)}",
        }
        whole = "GET /v1/hosts (CLI's list)"
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in [*cases, whole]}
        for _ in range(args.rounds):  # interleaved
            for name, path in cases.items():
                samples[name].append(timed(opener, url + path))
            samples[whole].append(timed(opener, url + "/v1/hosts",
                                                               {"Authorization": f"Bearer {token}"}))
        print(f"{'page':32} {'server ms':>10} {'wall ms':>10}   (medians of {args.rounds}, {args.hosts} hosts)")
        medians = {}
        for name, values in samples.items():
            wall = statistics.median(v[0] for v in values)
            server = statistics.median(v[1] for v in values)
            medians[name] = (wall, server)
            print(f"{name:32} {server:10.1f} {wall:10.1f}")
        overview_wall = medians["overview"][0]
        print(f"ratio: whole list (GET /v1/hosts) / overview page = {medians[whole][0] / overview_wall:.1f}x")
        worst = max(m[1] for k, m in medians.items() if k in cases)
        print(f"overview server time (worst case above): {worst:.1f} ms (bar < 200 ms: {'ok' if worst < 200 else 'MISSED'})")
        fcp = first_paint(url, cookie, args.rounds)
        if fcp is None:
            print("first contentful paint: skipped (no playwright or no /usr/bin/chromium)")
        else:
            print(f"first contentful paint in Chromium: {fcp:.0f} ms (bar < 1000 ms: {'ok' if fcp < 1000 else 'MISSED'})")
        print(json.dumps({"hosts": args.hosts, "overview_server_ms": medians["overview"][1], "worst_server_ms": worst,
                          "fcp_ms": fcp}))


if __name__ == "__main__":
    main()
