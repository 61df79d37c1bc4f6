"""A real fleet repository for tests: a bare remote, a working clone that commits (signed with ssh-keygen keys or
not) and pushes, and `git daemon` serving the remote on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def git_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", GIT_AUTHOR_NAME="Fleet Operator",
               GIT_AUTHOR_EMAIL="ops@example.org", GIT_COMMITTER_NAME="Fleet Operator",
               GIT_COMMITTER_EMAIL="ops@example.org")
    return env


def git(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env={**git_env(), **(env or {})}, input=input, capture_output=True,
                       check=False)
    assert r.returncode == 0, (args, r.stderr.decode())
    return r.stdout.decode().strip()


def keypair(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def state(units: dict[str, int] | None = None) -> dict[str, Any]:
    return {"version": 1, "plugins": {"mem": {"values": units if units is not None else {"x": 1, "y": 2}}}}


class Fleet:
    """`remote` (bare), `work` (a clone that commits and pushes), keys `ops` (allowed) and `intruder` (not)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.remote = root / "fleet.git"
        self.work = root / "work"
        keys = root / "keys"
        keys.mkdir(mode=0o700, parents=True)
        self.ops = keypair(keys, "ops")
        self.intruder = keypair(keys, "intruder")
        self.allowed = root / "allowed_signers"
        pub = (self.ops.with_suffix(".pub")).read_text().split()
        self.allowed.write_text(f"ops@example.org {pub[0]} {pub[1]}\n")
        self.allowed.chmod(0o644)
        git(root, "init", "-q", "--bare", "-b", "main", str(self.remote))
        git(root, "init", "-q", "-b", "main", str(self.work))
        git(self.work, "remote", "add", "origin", str(self.remote))
        self.push_env: dict[str, str] = {}  # e.g. a transport into the lab machine

    @property
    def url(self) -> str:
        return f"file://{self.remote}"

    def write(self, path: str, value: Any) -> None:
        f = self.work / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value if isinstance(value, str) else json.dumps(value, indent=2))

    def commit(self, message: str, key: Path | None = None, push: bool = True, force: bool = False) -> str:
        git(self.work, "add", "-A")
        sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
        git(self.work, *sign, "commit", "-q", "--allow-empty", *(["-S"] if key else []), "-m", message)
        if push:
            git(self.work, "push", "-q", *(["--force"] if force else []), "origin", "HEAD:main", env=self.push_env)
        return git(self.work, "rev-parse", "HEAD")

    def reset_hard(self, commit: str) -> None:
        git(self.work, "reset", "-q", "--hard", commit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`git daemon` exporting one directory on 127.0.0.1 (git://), stopped by pid."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={self.port}", "--export-all",
             f"--base-path={base}", "--informative-errors", str(base)],
            env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("git daemon did not start") from None
                time.sleep(0.05)

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
