"""The `git` command as a thin, bounded client: no user or system configuration, no hooks, no prompts.

Why the CLI and not a binding: `git fetch` speaks every transport an operator uses (ssh with the host's own
ssh client and known_hosts, https with the system CA store, the smart protocol v2 that makes an unchanged poll
one small round trip), and `git log --format=%G?` checks SSH and GPG signatures exactly as `git verify-commit`
does, against an allowed_signers file. Every call runs with a clean environment and a deadline; the process
group is killed when the deadline passes (ssh children included).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from op_dbus.errors import InvalidInput, OpDbusError, ServiceUnavailable

ALLOWED_PROTOCOLS = ("file", "git", "ssh", "https", "http")
# Configuration given on every command line: nothing read from the user, no hook, objects checked on fetch.
_CONFIG = [
    "core.hooksPath=/dev/null", "core.fsmonitor=false", "protocol.allow=never",
    *(f"protocol.{p}.allow=always" for p in ALLOWED_PROTOCOLS),
    "transfer.fsckObjects=true", "gc.autoDetach=false", "credential.helper=", "core.askPass=",
    "advice.detachedHead=false",
]
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9._-]+:|^[A-Za-z0-9._-]+:(?!//)")


# What says why a remote could not be read (ssh and git print these among long banners and generic advice).
_CAUSES = ("Host key verification failed", "Permission denied", "Connection refused", "Connection timed out",
           "Could not resolve", "No route to host", "not appear to be a git repository", "couldn't find remote ref",
           "Connection closed", "Connection reset", "unable to access", "does not exist")
_GENERIC = ("fatal: Could not read from remote repository", "Please make sure you have the correct access rights",
            "and the repository exists")


class GitError(OpDbusError):
    """git failed; the message carries git's own first lines of stderr."""


def redact_url(url: str) -> str:
    """The URL without a password or token (`https://user:secret@host/x` -> `https://user:***@host/x`)."""
    return re.sub(r"^([a-z+]+://[^/@:]*):[^/@]*@", r"\1:***@", url)


def check_url(url: str) -> str:
    """Accept file://, git://, ssh://, https://, http:// URLs and scp-like `user@host:path`; nothing else."""
    if url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise InvalidInput(f"--git {redact_url(url)!r}: not a URL")
    if "::" in url.split("/", 1)[0]:  # git's transport::address helpers (ext::, fd::) run commands
        raise InvalidInput(f"--git {redact_url(url)!r}: the {url.split('::', 1)[0]} transport is not allowed "
                           f"(allowed: {', '.join(ALLOWED_PROTOCOLS)})")
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme is None:
        if _SCP_LIKE.match(url):
            return url
        raise InvalidInput(f"--git {redact_url(url)!r}: expected file://, https://, ssh:// or user@host:path",
                           hint="a local repository is file:///path/to/repo.git")
    if scheme not in ALLOWED_PROTOCOLS:
        raise InvalidInput(f"--git {redact_url(url)!r}: the {scheme} transport is not allowed "
                           f"(allowed: {', '.join(ALLOWED_PROTOCOLS)})")
    return url


def ssh_command(key: Path | None = None, known_hosts: Path | None = None) -> str:
    """The ssh git runs: never prompts; with `key`, only that identity; with `known_hosts`, only those host keys."""
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if key is not None:
        argv += ["-o", "IdentitiesOnly=yes", "-i", str(key)]
    if known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                 "-o", "GlobalKnownHostsFile=/dev/null"]
    return " ".join(shlex.quote(a) for a in argv)


def clean_env(home: Path, ssh: str | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "SSH_AUTH_SOCK", "TZ") if k in os.environ}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", HOME=str(home), XDG_CONFIG_HOME=str(home),
               GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="/bin/false", SSH_ASKPASS="/bin/false", LC_ALL="C",
               GIT_ATTR_NOSYSTEM="1", GIT_NO_REPLACE_OBJECTS="1", GIT_PROTOCOL_FROM_USER="0",
               GIT_SSH_VARIANT="ssh", GIT_SSH_COMMAND=ssh or ssh_command())
    return env


@dataclass(frozen=True)
class Entry:
    mode: str
    kind: str
    oid: str
    size: int | None


@dataclass(frozen=True)
class CommitInfo:
    id: str
    time: int  # committer time, seconds since the epoch
    status: str  # git's %G?: G good, B bad, U unknown key, N none, E cannot check, X/Y expired, R revoked
    signer: str | None
    key: str | None


SIGNATURE_WORDS = {
    "N": "the commit is not signed",
    "B": "the signature is bad (the commit was changed after signing)",
    "U": "signed by a key that is not in the allowed signers",
    "E": "the signature cannot be checked (unknown key or signature format)",
    "X": "the signature has expired",
    "Y": "signed by an expired key",
    "R": "signed by a revoked key",
}


class Git:
    """One bare repository (`gitdir`) and the commands op-dbus needs from it."""

    def __init__(self, gitdir: Path, *, timeout: float = 120.0, ssh: str | None = None) -> None:
        self.gitdir = gitdir
        self.timeout = timeout
        self.ssh = ssh

    def run(self, *args: str, config: tuple[str, ...] = (), input: bytes | None = None,
            timeout: float | None = None, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
        cmd = ["git", "--git-dir", str(self.gitdir), "--literal-pathspecs"]
        for item in (*_CONFIG, *config):
            cmd += ["-c", item]
        cmd += list(args)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(self.gitdir, self.ssh),
                                start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GitError(f"git {args[0]} did not finish within {timeout or self.timeout:.0f} s") from None
        if proc.returncode not in ok:
            # the cause comes first (ssh's "Host key verification failed."), git's generic advice after it
            lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
            text = [line for line in lines if any(c in line for c in _CAUSES)] or \
                [line for line in lines if not line.startswith(("@", *_GENERIC))]
            raise GitError(f"git {args[0]}: " + ("; ".join(text[:2])[:500] or f"exit {proc.returncode}"))
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def init(self) -> None:
        if not (self.gitdir / "HEAD").exists():
            self.gitdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.run("init", "--bare", "--quiet", str(self.gitdir))

    def fetch(self, url: str, ref: str, into: str = "refs/op-dbus/fetched") -> str:
        """Fetch `ref` of `url` into `into`; the fetched commit id. Unreachable remote: ServiceUnavailable."""
        try:
            self.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
                     "--end-of-options", url, f"+{ref}:{into}")
        except GitError as e:
            raise ServiceUnavailable(f"cannot fetch {ref} from {redact_url(url)}: "
                                     f"{redact_url(str(e).removeprefix('git fetch: '))}") from None
        # a poll runs every few seconds on every host: read the ref git just wrote instead of one more process
        try:
            loose = (self.gitdir / into).read_text().strip()
        except OSError:
            loose = ""
        if _OBJECT_ID.fullmatch(loose) and not ref.startswith("refs/tags/"):  # a tag ref may name a tag object
            return loose
        return self.rev(into)

    def rev(self, name: str) -> str:
        return self.run("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}").stdout.decode().strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer, ok=(0, 1)).returncode == 0

    def has(self, commit: str) -> bool:
        return self.run("cat-file", "-e", f"{commit}^{{commit}}", ok=(0, 1, 128)).returncode == 0

    def commit_info(self, commit: str, allowed_signers: Path | None = None) -> CommitInfo:
        config: tuple[str, ...] = ()
        fmt = "%H%x00%ct"
        if allowed_signers is not None:
            config = ("gpg.format=ssh", f"gpg.ssh.allowedSignersFile={allowed_signers}",
                      "gpg.ssh.revocationFile=", "gpg.minTrustLevel=fully")
            fmt += "%x00%G?%x00%GS%x00%GK"
        out = self.run("log", "-1", "--no-show-signature", f"--format={fmt}", "--end-of-options", commit,
                       "--", config=config).stdout.decode(errors="replace").rstrip("\n")
        parts = out.split("\0")
        if allowed_signers is None:
            return CommitInfo(parts[0], int(parts[1]), "-", None, None)
        return CommitInfo(parts[0], int(parts[1]), parts[2], parts[3] or None, parts[4] or None)

    def entries(self, commit: str, paths: list[str]) -> dict[str, Entry]:
        """The tree entries of `paths` in `commit` (those that exist), read in one call."""
        if not paths:
            return {}
        out = self.run("ls-tree", "-z", "-l", "--full-tree", "--end-of-options", commit, "--", *paths).stdout
        found: dict[str, Entry] = {}
        wanted = set(paths)
        for record in out.split(b"\0"):
            if not record:
                continue
            head, _, name = record.partition(b"\t")
            mode, kind, oid, size = head.decode().split()
            path = name.decode(errors="surrogateescape")
            if path in wanted:
                found[path] = Entry(mode, kind, oid, None if size == "-" else int(size))
        return found

    def blobs(self, oids: list[str]) -> dict[str, bytes]:
        """Read blobs in one `cat-file --batch` (sizes were checked by the caller)."""
        if not oids:
            return {}
        out = self.run("cat-file", "--batch", input=("\n".join(oids) + "\n").encode()).stdout
        result: dict[str, bytes] = {}
        pos = 0
        for oid in oids:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            size = int(header[2])
            result[oid] = out[end + 1:end + 1 + size]
            pos = end + 1 + size + 1
        return result

    def list_dir(self, commit: str, directory: str) -> list[str]:
        """File names directly inside `directory` of `commit`."""
        out = self.run("ls-tree", "-z", "--name-only", "--end-of-options", f"{commit}:{directory}",
                       ok=(0, 128)).stdout
        return [n.decode(errors="surrogateescape") for n in out.split(b"\0") if n]


def read_files(git: Git, commit: str, paths: list[str], limit: int) -> dict[str, bytes | None]:
    """The bytes of `paths` at `commit` (None: no such file). A symlink, submodule, directory or a file over
    `limit` bytes raises InvalidInput naming the path: a commit with one is refused whole, before any is read."""
    entries = git.entries(commit, paths)
    for path, e in entries.items():
        if e.mode == "120000":
            target = git.blobs([e.oid])[e.oid][:200].decode(errors="replace")
            where = "outside the repository" if target.startswith("/") or ".." in target.split("/") else "elsewhere"
            raise InvalidInput(f"{path}: a symlink to {target!r} ({where}); only regular files are read from the "
                               "repository; refused")
        if e.kind != "blob":
            raise InvalidInput(f"{path}: a {'directory' if e.kind == 'tree' else e.kind}, expected a state file")
        if e.size is not None and e.size > limit:
            raise InvalidInput(f"{path}: {e.size} bytes; the limit for a state file is {limit}; refused")
    data = git.blobs(sorted({e.oid for e in entries.values()}))
    return {p: data[entries[p].oid] if p in entries else None for p in paths}
