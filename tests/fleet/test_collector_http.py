"""The collector over real HTTP: `op-dbus collector serve` processes, `op-dbus report` from a host's log, limits,
and two collector processes over one PostgreSQL racing for the same checkpoint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from op_dbus.fleet.client import request_body
from op_dbus.ledger import Ledger, cosignature, note
from op_dbus.ledger.cosignature import WitnessVerifier
from tests.fleet.conftest import PgCluster, free_port, reset_postgres, running

WITNESS = "witness.test/w1"


def op_dbus(*args: str, state_dir: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "op_dbus"]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout)


def post(url: str, body: bytes, timeout: float = 30) -> tuple[int, str, str]:
    req = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Content-Type", "")


def start_collector(stack: ExitStack, db_url: str, key_file: Path, *extra: str) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", db_url,
                             "--key-file", str(key_file), "--name", WITNESS, "--listen", f"127.0.0.1:{port}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stack.enter_context(running(proc))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("collector exited: " + (proc.stdout.read().decode() if proc.stdout else "")) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def grow(log: Ledger, n: int) -> None:
    for _ in range(n):
        i = len(log)
        log.append("apply", [{"plugin": "systemd", "action": "set", "object": f"u{i}"}], {"n": i},
                   actor={"user": "test"}, summary=f"block {i}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    d = tmp_path / "collector"
    d.mkdir(mode=0o700)
    return f"sqlite:///{d}/fleet.db"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 3)
        yield log


def test_report_is_cosigned_over_http_and_kept_by_the_host(sqlite_url: str, key_dir: Path, host: Ledger) -> None:
    key_file = key_dir / "witness.key"
    with ExitStack() as stack:
        url = start_collector(stack, sqlite_url, key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        vkey = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key_file)).stdout.strip()
        verifier = WitnessVerifier.from_vkey(vkey)
        assert verifier.name == WITNESS
        enrolled = op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", sqlite_url)
        assert enrolled.returncode == 0, enrolled.stderr
        first = op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir)
        assert first.returncode == 0, first.stdout + first.stderr
        assert cosignature.last_cosigned(str(host.db_path), vkey) == 3
        grow(host, 4)
        second = op_dbus("-o", "json", "report", "--collector", f"{url}={vkey}", state_dir=host.state_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        [stored] = cosignature.for_size(str(host.db_path), 7)
        assert verifier.verify_line(note.parse(host.checkpoint(7)).text, stored.line) is not None
        listed = op_dbus("-o", "json", "collector", "hosts", "--db", sqlite_url)
        assert '"size": 7' in listed.stdout
        # Revoked: refused from now on, and the host says so (exit 3).
        assert op_dbus("collector", "revoke", "web1", "--db", sqlite_url).returncode == 0
        grow(host, 1)
        refused = op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir)
        assert refused.returncode == 3 and "revoked" in refused.stdout


def test_a_collector_that_is_down_is_a_gap_not_a_hang(host: Ledger, key_dir: Path) -> None:
    vkey = cosignature.WitnessSigner(WITNESS, __import__("cryptography.hazmat.primitives.asymmetric.ed25519",
                                     fromlist=["x"]).Ed25519PrivateKey.generate()).verifier.vkey
    start = time.monotonic()
    down = op_dbus("report", "--timeout", "1", "--collector", f"http://127.0.0.1:{free_port()}={vkey}",
                   state_dir=host.state_dir)
    assert down.returncode == 3 and "unreachable" in down.stdout
    assert time.monotonic() - start < 30
    assert cosignature.last_cosigned(str(host.db_path), vkey) == 0


def test_listener_limits(sqlite_url: str, key_dir: Path, host: Ledger) -> None:
    refused = op_dbus("collector", "serve", "--db", sqlite_url, "--key-file", str(key_dir / "k"),
                      "--listen", "0.0.0.0:8470")
    assert refused.returncode == 2 and "only served on loopback" in refused.stderr
    with ExitStack() as stack:
        url = start_collector(stack, sqlite_url, key_dir / "witness.key")
        status, _, _ = post(url, b"old 0\n" + b"A" * (200 * 1024))
        assert status == 413
        req = urllib.request.Request(url + "/add-checkpoint", method="GET")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 405


def test_a_world_readable_witness_key_is_refused(sqlite_url: str, key_dir: Path) -> None:
    fresh = key_dir / "new" / "witness.key"  # a missing key directory is created private
    assert op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(fresh)).returncode == 0
    assert stat.S_IMODE(fresh.parent.stat().st_mode) == 0o700 and stat.S_IMODE(fresh.stat().st_mode) == 0o600
    key = key_dir / "witness.key"
    assert op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key)).returncode == 0
    os.chmod(key, 0o644)
    bad = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key))
    assert bad.returncode == 2 and "readable" in bad.stderr and "PRIVATE" not in bad.stderr + bad.stdout


def test_two_collector_processes_over_one_postgresql(pg_cluster: PgCluster, key_dir: Path, host: Ledger) -> None:
    """The same next checkpoint posted to two collectors at once: exactly one cosigns, the other answers 409."""
    reset_postgres(pg_cluster.url)
    key_file = key_dir / "witness.key"
    enrolled = op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", pg_cluster.url)
    assert enrolled.returncode == 0, enrolled.stderr
    with ExitStack() as stack:
        urls = [start_collector(stack, pg_cluster.url, key_file) for _ in range(2)]
        assert post(urls[0], request_body(0, [], host.checkpoint()))[0] == 200
        for round_ in range(20):
            old = len(host)
            grow(host, 1 + round_ % 3)
            body = request_body(old, host.consistency_proof(old, len(host)), host.checkpoint())
            barrier = threading.Barrier(2)
            results: list[tuple[int, str, str]] = [(0, "", "")] * 2

            def send(i: int, body: bytes = body, barrier: threading.Barrier = barrier,
                     results: list[tuple[int, str, str]] = results) -> None:
                barrier.wait()
                results[i] = post(urls[i], body)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            statuses = sorted(r[0] for r in results)
            assert statuses == [200, 409], results
            conflict = next(r for r in results if r[0] == 409)
            assert conflict[1] == f"{len(host)}\n" and conflict[2].startswith("text/x.tlog.size")


def test_join_with_a_one_time_token(sqlite_url: str, key_dir: Path, host: Ledger, tmp_path: Path) -> None:
    key_file = key_dir / "witness.key"
    collectors = tmp_path / "etc" / "collectors"
    with ExitStack() as stack:
        url = start_collector(stack, sqlite_url, key_file)
        created = op_dbus("collector", "token", "create", "--ttl", "600", "--db", sqlite_url)
        token = created.stdout.strip()
        assert created.returncode == 0 and token.startswith("odj_") and len(token) > 40
        joined = op_dbus("fleet", "join", url, "--token", token, "--name", "web1", "--collectors-file",
                         str(collectors), state_dir=host.state_dir)
        assert joined.returncode == 0, joined.stderr
        assert collectors.read_text().split()[0] == url
        reported = op_dbus("report", "--collectors-file", str(collectors), state_dir=host.state_dir)
        assert reported.returncode == 0, reported.stdout + reported.stderr
        # Single use: the same token again is refused, and so is an expired one.
        again = op_dbus("fleet", "join", url, "--token", token, "--name", "web2", "--collectors-file",
                        str(collectors), state_dir=host.state_dir)
        assert again.returncode == 2 and "unknown, used or expired" in again.stderr
        from op_dbus.fleet import db
        from op_dbus.fleet.witness import Witness

        engine = db.make_engine(sqlite_url)
        expired = Witness(engine, None).create_token(-1)
        late = op_dbus("fleet", "join", url, "--token", expired, "--name", "web3", "--collectors-file",
                       str(collectors), state_dir=host.state_dir)
        assert late.returncode == 2 and "unknown, used or expired" in late.stderr
        wrong = op_dbus("fleet", "join", url, "--token", "odj_guessed", "--name", "web4", "--collectors-file",
                        str(collectors), state_dir=host.state_dir)
        assert wrong.returncode == 2
        assert [h.name for h in Witness(engine, None).hosts()] == ["web1"]
        engine.dispose()
    # Only the hash of a token is stored.
    db_file = Path(sqlite_url.split("sqlite:///", 1)[1])
    raw = b"".join(p.read_bytes() for p in db_file.parent.iterdir() if p.name.startswith(db_file.name))
    assert token.encode() not in raw and expired.encode() not in raw


def test_the_agent_reporter_fills_a_gap_once_the_collector_is_up(sqlite_url: str, key_dir: Path, host: Ledger) -> None:
    """The agent's reporter thread: a collector that is down is retried with backoff; new blocks are sent."""
    from op_dbus.agent.report import Reporter
    from op_dbus.fleet.client import Collector

    key_file = key_dir / "witness.key"
    vkey = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key_file), "--name", WITNESS).stdout.strip()
    assert op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", sqlite_url).returncode == 0
    port = free_port()
    reporter = Reporter(lambda: Ledger.open(host.state_dir), [Collector.parse(f"http://127.0.0.1:{port}", vkey)],
                        timeout=1.0)
    reporter.start()
    try:
        deadline = time.monotonic() + 30
        while not reporter.last and time.monotonic() < deadline:
            time.sleep(0.1)
        [down] = reporter.last.values()
        assert not down.ok and "unreachable" in down.message
        with ExitStack() as stack:
            proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", sqlite_url,
                                     "--key-file", str(key_file), "--listen", f"127.0.0.1:{port}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.enter_context(running(proc))
            grow(host, 2)
            deadline = time.monotonic() + 90
            while cosignature.last_cosigned(str(host.db_path), vkey) < len(host) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert cosignature.last_cosigned(str(host.db_path), vkey) == len(host) == 5
    finally:
        reporter.stop()


def test_footprints_alerts_and_the_fleet_view_with_api_tokens(sqlite_url: str, key_dir: Path, host: Ledger) -> None:
    key_file = key_dir / "witness.key"
    with ExitStack() as stack:
        url = start_collector(stack, sqlite_url, key_file)
        vkey = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key_file)).stdout.strip()
        assert op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", sqlite_url).returncode == 0
        viewer = op_dbus("collector", "api-token", "create", "--role", "viewer", "--label", "ops", "--db",
                         sqlite_url).stdout.strip()
        assert viewer.startswith("oda_")
        assert op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir).returncode == 0
        fleet = ("--collector", url, "--token", viewer)
        status = op_dbus("-o", "json", "fleet", "status", *fleet)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["hosts"] == 1
        [row] = json.loads(op_dbus("-o", "json", "fleet", "hosts", *fleet).stdout)
        head = host.head()
        assert row["witnessed_size"] == 3 and row["footprint"]["head"]["hash"] == head.hash
        assert row["footprint"]["plugin_state_hashes"] == head.plugin_state_hashes
        assert row["footprint"]["last_apply"]["result"] == "ok" and row["footprint"]["mode"] == "cli"
        # Drift raises an alert; the next apply clears it.
        host.append("drift", [{"plugin": "systemd", "action": "drift", "object": "nginx"}], {"n": "d"},
                    actor={"user": "agent"}, summary="drift")
        assert op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir).returncode == 0
        alerts = op_dbus("-o", "json", "fleet", "alerts", *fleet)
        assert alerts.returncode == 3 and [a["kind"] for a in json.loads(alerts.stdout)] == ["drift"]
        grow(host, 1)
        assert op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir).returncode == 0
        assert op_dbus("fleet", "alerts", *fleet).returncode == 0
        detail = json.loads(op_dbus("-o", "json", "fleet", "host", "web1", *fleet).stdout)
        assert len(detail["history"]) == 3
        # The read API wants a token; a wrong one is refused, and so is a revoked one.
        assert op_dbus("fleet", "status", "--collector", url, "--token", "oda_wrong").returncode == 2
        assert op_dbus("collector", "api-token", "revoke", "--label", "ops", "--db", sqlite_url).returncode == 0
        assert op_dbus("fleet", "status", *fleet).returncode == 2
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/v1/hosts", timeout=10)
        assert err.value.code == 401
        # A footprint signed by another key, or carrying a field that is not in the footprint, is refused.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from op_dbus.fleet.fleetview import footprint_text

        forged = note.sign(footprint_text(host.origin, {"drift": 0}),
                           [note.Signer(host.origin, Ed25519PrivateKey.generate())])
        assert _post_footprint(url, forged) == 403
        from op_dbus.ledger import keys

        own = note.Signer(host.origin, keys.load_private_key(host.key_path))
        assert _post_footprint(url, note.sign(footprint_text(host.origin, {"password": "x"}), [own])) == 400
        assert _post_footprint(url, note.sign(footprint_text(host.origin, {"drift": 0}), [own])) == 200


def _post_footprint(url: str, signed: str) -> int:
    req = urllib.request.Request(url + "/v1/footprint", data=signed.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_silent_host_raises_a_stale_alert_that_its_next_report_clears(sqlite_url: str, key_dir: Path,
                                                                          host: Ledger) -> None:
    key_file = key_dir / "witness.key"
    vkey = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key_file), "--name", WITNESS).stdout.strip()
    assert op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", sqlite_url).returncode == 0
    with ExitStack() as stack:
        url = start_collector(stack, sqlite_url, key_file, "--stale-after", "2")
        deadline = time.monotonic() + 60
        while True:
            alerts = json.loads(op_dbus("-o", "json", "collector", "alerts", "--db", sqlite_url).stdout)
            if alerts or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [(a["host"], a["kind"]) for a in alerts] == [("web1", "stale")]
        assert op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir).returncode == 0
        # The report cleared that alert (a later one may open again: the host stays silent after it).
        from op_dbus.fleet import db
        from op_dbus.fleet.witness import Witness

        engine = db.make_engine(sqlite_url)
        first = next(a for a in Witness(engine, None).alerts(open_only=False) if a["id"] == alerts[0]["id"])
        engine.dispose()
        assert first["cleared"] is not None


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_https_with_a_certificate_the_host_trusts(sqlite_url: str, key_dir: Path, host: Ledger, tmp_path: Path) -> None:
    cert, tls_key = _self_signed(key_dir)
    key_file = key_dir / "witness.key"
    vkey = op_dbus("collector", "key", "--db", sqlite_url, "--key-file", str(key_file), "--name", WITNESS).stdout.strip()
    assert op_dbus("collector", "enroll", "web1", "--key", str(host.public_key_path), "--db", sqlite_url).returncode == 0
    tls_key.chmod(0o644)
    loose = op_dbus("collector", "serve", "--db", sqlite_url, "--key-file", str(key_file), "--listen",
                    f"127.0.0.1:{free_port()}", "--tls-cert", str(cert), "--tls-key", str(tls_key))
    assert loose.returncode == 2 and "TLS file" in loose.stderr
    tls_key.chmod(0o600)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", sqlite_url, "--key-file",
                             str(key_file), "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert),
                             "--tls-key", str(tls_key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with running(proc):
        url = f"https://127.0.0.1:{port}"
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        deadline = time.monotonic() + 60
        while True:
            r = subprocess.run([sys.executable, "-m", "op_dbus", "--state-dir", str(host.state_dir), "report",
                                "--collector", f"{url}={vkey}"], capture_output=True, text=True, env=env, timeout=60)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.returncode == 0, r.stdout + r.stderr
        # Without the certificate in its trust store the host refuses the connection (nothing is sent).
        grow(host, 1)
        untrusted = op_dbus("report", "--collector", f"{url}={vkey}", state_dir=host.state_dir)
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stdout
        assert cosignature.last_cosigned(str(host.db_path), vkey) == 3
