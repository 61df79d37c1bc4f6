"""The git source over ssh:// against a real OpenSSH server: a throwaway sshd on loopback with its own host key,
the agent with a deploy key (--git-ssh-key) and pinned host keys (--git-known-hosts). A server whose host key is
not the pinned one is a gap, never a change."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus.gitops.source import GitSettings, GitSource
from tests.gitops.fleet import Fleet, free_port, keypair, state
from tests.gitops.test_source import load

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="sshd is not installed (lab/setup-host.sh)")


class Sshd:
    def __init__(self, root: Path, client_key: Path) -> None:
        root.mkdir(mode=0o700)
        self.host_key = keypair(root, "host_key")
        (root / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
        (root / "authorized_keys").chmod(0o600)
        self.port = free_port()
        config = root / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {root}/authorized_keys
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 10:30:60
""")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    why = self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"sshd did not start: {why!r}") from None
                time.sleep(0.05)

    def known_hosts(self, path: Path, key: Path | None = None) -> Path:
        kind, blob = (key or self.host_key).with_suffix(".pub").read_text().split()[:2]
        path.write_text(f"[127.0.0.1]:{self.port} {kind} {blob}\n")
        return path

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[Sshd, Path]]:
    deploy = keypair(tmp_path, "deploy")
    server = Sshd(tmp_path / "sshd", deploy)
    yield server, deploy
    server.stop()


def test_fetch_over_ssh_with_a_deploy_key_and_pinned_host_key(tmp_path: Path, sshd: tuple[Sshd, Path]) -> None:
    server, deploy = sshd
    fleet = Fleet(tmp_path / "fleet")
    fleet.write("hosts/web-1.json", state())
    commit = fleet.commit("first", fleet.ops)
    user = os.environ.get("USER") or __import__("getpass").getuser()
    url = f"ssh://{user}@127.0.0.1:{server.port}{fleet.remote}"
    settings = GitSettings(url, allowed_signers=fleet.allowed, hostname="web-1", ssh_key=deploy,
                           known_hosts=server.known_hosts(tmp_path / "known_hosts"), timeout=60)
    src = GitSource(settings, tmp_path / "state", load=load)
    src.open()
    out = src.poll()
    assert out.kind == "new" and out.commit == commit, out.reason
    assert out.meta["git"]["signer"] == "ops@example.org" and out.meta["git"]["url"] == url
    src.keep(out)
    # another server answering on that address (its host key is not the pinned one): a gap, nothing taken
    impostor = keypair(tmp_path, "impostor")
    pinned_wrong = server.known_hosts(tmp_path / "wrong_known_hosts", impostor)
    wrong = GitSource(GitSettings(url, allowed_signers=fleet.allowed, hostname="web-1", ssh_key=deploy,
                                  known_hosts=pinned_wrong, timeout=60), tmp_path / "state2", load=load)
    wrong.open()
    out = wrong.poll()
    assert out.kind == "gap" and "Host key verification failed" in out.reason, out.reason
    # the scp-like form works the same
    scp = GitSource(GitSettings(f"{user}@127.0.0.1:{fleet.remote}", hostname="web-1", ssh_key=deploy,
                                known_hosts=server.known_hosts(tmp_path / "kh2"), timeout=60),
                    tmp_path / "state3", load=load)
    scp.open()
    assert scp.poll().kind == "gap"  # port 22 is not our sshd: a gap, with ssh's reason


def test_a_deploy_key_others_can_read_is_refused(tmp_path: Path, sshd: tuple[Sshd, Path]) -> None:
    server, deploy = sshd
    fleet = Fleet(tmp_path / "fleet")
    deploy.chmod(0o644)
    with pytest.raises(Exception, match="readable or writable by group or others"):
        GitSource(GitSettings(f"ssh://root@127.0.0.1:{server.port}{fleet.remote}", hostname="web-1",
                              ssh_key=deploy), tmp_path / "state", load=load)
