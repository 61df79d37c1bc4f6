"""The agent's git source: fetch the ref, decide whether its commit may be kept, and hand over a validated document.

A fetched commit goes through, in order: ancestry (a commit that does not descend from the one kept is a
rewound history: refused unless allow_rewind), signature (with allowed_signers: only a good signature by an
allowed key), files (every file the host reads exists, is a regular file under the size limit and is valid state:
the merged document is validated as one state file), and the rollout gate (a closed wave is waited for, not
refused). A refused commit is reported once; the document kept so far stays. A failed fetch is a gap.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.errors import InvalidInput, OpDbusError, ServiceUnavailable
from op_dbus.gitops.compose import DEFAULT_TEMPLATE, check_name, expand, load_composed, parse_template
from op_dbus.gitops.git import SIGNATURE_WORDS, Git, GitError, check_url, clean_env, read_files, redact_url, ssh_command
from op_dbus.gitops.rollout import ROLLOUT_FILES, Decision, Rollout, RolloutGate, TimeGate, parse_rollout
from op_dbus.state import MAX_DOCUMENT_BYTES, StateDocument

KEPT_NAME = "kept.json"
AGENT_CONFIG = Path("/etc/op-dbus/agent.json")
GROUP_LABEL = Path("/etc/op-dbus/group")


@dataclass
class GitSettings:
    url: str
    ref: str = "main"
    template: str = DEFAULT_TEMPLATE
    allowed_signers: Path | None = None
    interval: float = 60.0
    allow_rewind: bool = False
    hostname: str = field(default_factory=socket.gethostname)
    group: str | None = None
    timeout: float = 120.0
    ssh_key: Path | None = None  # the deploy key for ssh:// remotes (0600); None: ssh's own defaults
    known_hosts: Path | None = None  # the only host keys accepted for ssh:// remotes; None: ssh's own files


@dataclass
class Outcome:
    """What one poll found: `new` (a document to keep), `unchanged`, `refused`, `waiting` (rollout) or `gap`."""

    kind: str
    commit: str | None = None
    reason: str = ""
    document: StateDocument | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def host_group(explicit: str | None, agent_config: Path = AGENT_CONFIG, label: Path = GROUP_LABEL) -> str | None:
    """The host's group: --git-group, else `group` in /etc/op-dbus/agent.json, else /etc/op-dbus/group."""
    if explicit:
        return check_name("--git-group", explicit)
    for path in (agent_config, label):
        try:
            data = files.read_checked(path, "host label file", limit=65536)[:65536]
        except FileNotFoundError:
            continue
        if path == agent_config:
            try:
                value = json.loads(data).get("group")
            except (ValueError, AttributeError):
                raise InvalidInput(f"{path}: expected a JSON object such as {{\"group\": \"web\"}}") from None
        else:
            value = data.decode(errors="replace").strip() or None
        if value is not None:
            if not isinstance(value, str):
                raise InvalidInput(f"{path}: group: expected a string")
            return check_name(f"group in {path}", value)
    return None


def _check_trusted(path: Path, what: str, option: str, *, secret: bool) -> None:
    """A file git or ssh will read for us: checked as every trusted file is (owner, mode, every directory up)."""
    try:
        fd, _ = files.open_checked(path, what, secret=secret)
    except FileNotFoundError:
        raise InvalidInput(f"{option} {path}: no such file") from None
    os.close(fd)


class GitSource:
    """One agent's clone (`<state_dir>/git/`) of one ref, and the commit it keeps."""

    def __init__(self, settings: GitSettings, state_dir: Path, *, load: Any = None,
                 gate: RolloutGate | None = None) -> None:
        self.settings = settings
        self.url = check_url(settings.url)
        self.layers = parse_template(settings.template)
        check_name("host name", settings.hostname)
        self.paths = expand(self.layers, {"hostname": settings.hostname, "group": settings.group})
        if settings.allowed_signers is not None:
            _check_trusted(settings.allowed_signers, "allowed signers file", "--git-allowed-signers", secret=False)
            if shutil.which("ssh-keygen", path=clean_env(state_dir)["PATH"]) is None:
                raise ServiceUnavailable("--git-allowed-signers: git checks SSH signatures with ssh-keygen, which "
                                         "is not installed", hint="apt install openssh-client")
        self.dir = state_dir / "git"
        for what, path, secret in (("--git-ssh-key", settings.ssh_key, True),
                                   ("--git-known-hosts", settings.known_hosts, False)):
            if path is not None:
                _check_trusted(path, what.removeprefix("--"), what, secret=secret)
        self.git = Git(self.dir / "repo.git", timeout=settings.timeout,
                       ssh=ssh_command(settings.ssh_key, settings.known_hosts))
        self.load = load
        self.gate: RolloutGate = gate or TimeGate()
        self.kept: str | None = None  # the commit whose document the agent keeps
        self.kept_meta: dict[str, Any] = {}
        self.refused: dict[str, str] = {}  # commit -> why (each is reported once)
        self.gap: dict[str, Any] | None = None
        self.waiting: dict[str, Any] | None = None
        self.last_fetch: dict[str, Any] | None = None
        self.fetches = 0

    def describe(self) -> str:
        return f"{redact_url(self.url)} {self.settings.ref} {','.join(self.paths)}"

    # -- the clone -----------------------------------------------------------------------------------

    def open(self) -> StateDocument | None:
        """Create the clone if needed; the document of the commit kept before a restart (None: none yet)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files.check_directory(self.dir, "git clone directory")
        self.git.init()
        try:
            kept = json.loads((self.dir / KEPT_NAME).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            raise InvalidInput(f"{self.dir / KEPT_NAME}: not JSON; remove it to start from the remote's "
                               "current commit") from None
        if kept.get("url") != redact_url(self.url) or kept.get("paths") != self.paths or kept.get("ref") != \
                self.settings.ref or not isinstance(kept.get("commit"), str) or not self.git.has(kept["commit"]):
            return None  # another repository, ref or layout: start from its current commit
        doc, meta, _ = self._document(kept["commit"], self._info(kept["commit"]))
        self.kept, self.kept_meta = kept["commit"], meta
        return doc

    def _remember(self, commit: str) -> None:
        record = {"commit": commit, "url": redact_url(self.url), "ref": self.settings.ref, "paths": self.paths,
                  "time": _iso(time.time())}
        files.atomic_write(self.dir / KEPT_NAME, json.dumps(record).encode())

    def _info(self, commit: str) -> Any:
        return self.git.commit_info(commit, self.settings.allowed_signers)

    def _document(self, commit: str, info: Any) -> tuple[StateDocument, dict[str, Any], Rollout | None]:
        """The host's merged document at `commit`, its meta, and the rollout plan (one read of git's objects)."""
        data = read_files(self.git, commit, [*self.paths, *ROLLOUT_FILES], MAX_DOCUMENT_BYTES)
        doc, _ = load_composed(data.get, self.paths, self.load)
        plan = next((parse_rollout(data[n] or b"", n) for n in ROLLOUT_FILES if data[n] is not None), None)
        meta = {"git": {"commit": commit, "ref": self.settings.ref, "url": redact_url(self.url),
                        "paths": self.paths, "signer": info.signer, "key": info.key,
                        "committed": _iso(info.time)}}
        return doc, meta, plan

    # -- polling -------------------------------------------------------------------------------------

    def poll(self) -> Outcome:
        """Fetch, then judge the ref's commit (blocking: the agent runs it in a thread)."""
        started = time.monotonic()
        try:
            files.check_directory(self.dir, "git clone directory")
            tip = self.git.fetch(self.url, self.settings.ref)
        except (OpDbusError, OSError) as e:  # unreachable, or a clone directory we may no longer trust
            now = _iso(time.time())
            if self.gap is None:
                self.gap = {"since": now, "error": str(e), "attempts": 1}
            else:
                self.gap.update(error=str(e), attempts=self.gap["attempts"] + 1)
            return Outcome("gap", self.kept, str(e))
        self.fetches += 1
        self.last_fetch = {"time": _iso(time.time()), "commit": tip,
                           "ms": round((time.monotonic() - started) * 1000, 1)}
        closed = self.gap
        self.gap = None
        outcome = self.judge(tip)
        if closed is not None:
            closed["until"] = _iso(time.time())
            outcome.meta.setdefault("gap_closed", closed)
        return outcome

    def judge(self, tip: str) -> Outcome:
        if tip == self.kept:
            self.waiting = None
            return Outcome("unchanged", tip)
        if tip in self.refused:
            return Outcome("unchanged", tip, self.refused[tip])
        try:
            info = self._info(tip)
            if self.kept is not None and not self.settings.allow_rewind and not self.git.is_ancestor(self.kept, tip):
                return self._refuse(tip, info, f"commit {tip[:12]} does not descend from the kept commit "
                                    f"{self.kept[:12]} (history was rewound or force-pushed); pass "
                                    "--git-allow-rewind to accept it")
            if self.settings.allowed_signers is not None and info.status != "G":
                why = SIGNATURE_WORDS.get(info.status, f"signature status {info.status}")
                return self._refuse(tip, info, f"commit {tip[:12]}: {why}; only commits signed by a key in "
                                    f"{self.settings.allowed_signers} are applied")
            try:
                doc, meta, plan = self._document(tip, info)
            except OpDbusError as e:
                return self._refuse(tip, info, f"commit {tip[:12]}: {e}")
        except GitError as e:
            return Outcome("gap", self.kept, str(e))
        decision: Decision = self.gate.decide(tip, info.time, plan, self.settings.hostname)
        if not decision.open:
            self.waiting = {"commit": tip, **decision.to_json()}
            return Outcome("waiting", tip, decision.reason, meta=meta)
        self.waiting = None
        if plan is not None:
            meta["git"]["wave"] = decision.wave
        return Outcome("new", tip, decision.reason, doc, meta)

    def _refuse(self, tip: str, info: Any, reason: str) -> Outcome:
        self.refused[tip] = reason
        meta = {"git": {"commit": tip, "ref": self.settings.ref, "url": redact_url(self.url), "paths": self.paths,
                        "signer": info.signer, "key": info.key, "committed": _iso(info.time)}, "reason": reason}
        return Outcome("refused", tip, reason, meta=meta)

    def keep(self, outcome: Outcome) -> None:
        """The agent took `outcome`'s document: it is the state kept from now on (and after a restart)."""
        assert outcome.commit is not None
        self.kept, self.kept_meta = outcome.commit, outcome.meta
        self._remember(outcome.commit)

    def status(self) -> dict[str, Any]:
        return {"url": redact_url(self.url), "ref": self.settings.ref, "paths": self.paths,
                "interval": self.settings.interval, "signed_only": self.settings.allowed_signers is not None,
                "kept": self.kept, "last_fetch": self.last_fetch, "gap": self.gap, "waiting": self.waiting,
                "refused": [{"commit": c, "reason": r} for c, r in list(self.refused.items())[-5:]]}


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
