"""The collector as a systemd service in the lab: `install.sh --collector` installs it offline from the collector's
pinned wheelhouse, the real systemd runs it sandboxed (scored by `systemd-analyze security`), its witness answers on
loopback, and arguments that would rewrite its environment file or expose it without TLS are refused."""

from __future__ import annotations

import re
import stat
from typing import Any

import pytest

from tests.e2e.helpers import systemctl
from tests.e2e.test_agent import Box, wait_for

UNIT = "etc/systemd/system/op-dbus-collector.service"
ENV = "etc/op-dbus-collector/collector.env"
WHEELS = "/wheels/collector"
# measured in the lab: 2.2 with the packaged unit (DynamicUser, ProtectSystem=strict, empty capability set)
EXPOSURE_LIMIT = 2.5


@pytest.fixture(scope="module")
def box(lab: Any) -> Box:
    return Box(lab)


def install_sh(box: Box, *args: str) -> Any:
    return box.lab.run(["sh", "/root/op-dbus-install/install.sh", "--collector", "--wheelhouse", WHEELS, *args],
                       check=False, timeout=300)


def http(box: Box, method: str, url: str, body: str = "") -> tuple[int, str]:
    """One request from inside the lab, by the lab's python3 (the collector listens on the lab's loopback)."""
    script = ("import sys, urllib.request, urllib.error\n"
              "req = urllib.request.Request(sys.argv[2], data=sys.argv[3].encode() if sys.argv[1] == 'POST' else None,"
              " method=sys.argv[1])\n"
              "try:\n    r = urllib.request.urlopen(req, timeout=10); print(r.status); print(r.read().decode())\n"
              "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n")
    r = box.lab.run(["python3", "-c", script, method, url, body], check=False)
    status, _, text = r.stdout.partition("\n")
    return (int(status) if status.isdigit() else 0), text + r.stderr


@pytest.mark.parametrize("args", [
    ["--listen", "127.0.0.1:8470|;s|^DynamicUser=.*|User=root"],
    ["--listen", "127.0.0.1:8470\nExecStartPre=/bin/touch /tmp/pwned"],
    ["--listen", "0.0.0.0:8470"],  # plain HTTP off loopback
    ["--listen", "127.0.0.1:99999"],
    ["--db", "postgresql://fleet:secret@db.example/fleet"],  # a password in the URL
    ["--db", "sqlite:////var/lib/x.db --listen 0.0.0.0:1"],
    ["--db", "sqlite:////var/lib/x.db\"\nOP_DBUS_COLLECTOR_ARGS=\"--listen 0.0.0.0:1"],
    ["--workers", "0"],
    ["--workers", "2 --listen 0.0.0.0:1"],
    ["--tls-cert", "/etc/ssl/c.pem"],  # without its key
])
def test_install_sh_collector_refuses_arguments_that_would_rewrite_what_it_writes(box: Box, args: list[str]) -> None:
    r = install_sh(box, "--no-start", *args)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "install.sh: error:" in r.stderr and args[0] in r.stderr, r.stderr
    assert not (box.lab.root / UNIT).exists() and not (box.lab.root / ENV).exists()
    assert not (box.lab.root / "opt/op-dbus").exists()


def test_the_collector_unit_runs_sandboxed_and_its_witness_answers_on_loopback(box: Box) -> None:
    r = install_sh(box, "--listen", "127.0.0.1:8471", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert systemctl(box.lab, "is-active", "op-dbus-collector.service") == ["active"]
    env = box.lab.root / ENV
    assert stat.S_IMODE(env.stat().st_mode) == 0o600 and env.stat().st_uid == 0
    assert 'OP_DBUS_COLLECTOR_ARGS="--listen 127.0.0.1:8471 --workers 2"' in env.read_text()
    assert stat.S_IMODE((box.lab.root / UNIT).stat().st_mode) == 0o644
    assert not (box.lab.root / "etc/systemd/system/op-dbus.service").exists()  # no agent came with it

    wait_for("the collector's health check", lambda: http(box, "GET", "http://127.0.0.1:8471/healthz")[0] == 200,
             timeout=60)
    # the witness itself: a well-formed checkpoint of a log it never enrolled is answered 404 (C2SP tlog-witness)
    origin = "example.com/never-enrolled"
    note = f"old 0\n\n{origin}\n1\n{'A' * 43}=\n\n\u2014 {origin} {'B' * 92}\n"
    status, text = http(box, "POST", "http://127.0.0.1:8471/add-checkpoint", note)
    assert status == 404, (status, text)
    # its witness key: created on first start, 0600, in the service's own state directory
    key = box.lab.root / "var/lib/private/op-dbus-collector/witness.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    out = box.run("systemd-analyze", "security", "op-dbus-collector.service", "--no-pager").stdout
    found = re.search(r"Overall exposure level for op-dbus-collector\.service: ([0-9.]+)", out)
    assert found, out
    score = float(found.group(1))
    print(f"collector unit exposure: {score}")
    assert score <= EXPOSURE_LIMIT, score

    r = install_sh(box, "--uninstall", "--purge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (box.lab.root / UNIT).exists() and not (box.lab.root / "opt/op-dbus").exists()
    assert not key.exists()


def test_collector_options_without_collector_are_refused(box: Box) -> None:
    r = box.lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/wheels", "--no-start",
                     "--listen", "0.0.0.0:8470"], check=False, timeout=300)
    assert r.returncode != 0 and "--listen go with --collector" in r.stderr, r.stdout + r.stderr
    assert not (box.lab.root / "opt/op-dbus").exists()


def test_off_loopback_the_collector_serves_https_with_a_key_only_root_can_read(box: Box) -> None:
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
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    tls = box.lab.root / "etc/collector-tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    (tls / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    (tls / "key.pem").chmod(0o600)
    r = install_sh(box, "--listen", "0.0.0.0:8472", "--tls-cert", "/etc/collector-tls/cert.pem",
                   "--tls-key", "/etc/collector-tls/key.pem")
    assert r.returncode == 0, r.stdout + r.stderr
    script = ("import ssl, urllib.request\n"
              "ctx = ssl.create_default_context(cafile='/etc/collector-tls/cert.pem')\n"
              "print(urllib.request.urlopen('https://127.0.0.1:8472/healthz', context=ctx, timeout=5).status)\n")
    wait_for("the collector over HTTPS",
             lambda: box.lab.run(["python3", "-c", script], check=False).stdout.strip() == "200", timeout=60)
    plain = box.lab.run(["python3", "-c", "import urllib.request; urllib.request.urlopen("
                         "'http://127.0.0.1:8472/healthz', timeout=5)"], check=False)
    assert plain.returncode != 0  # no plain HTTP on that port
    r = install_sh(box, "--uninstall", "--purge")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (box.lab.root / "etc/systemd/system/op-dbus-collector.service.d").exists()
