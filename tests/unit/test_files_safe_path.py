"""The StrictModes checks as an attacker meets them: another user's directories above a file, links swapped while
op-dbus reads, and planted or foreign files in the state directory (lock, intent record, agent files, keys)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus import files
from op_dbus.agent.status import write_status
from op_dbus.engine.journal import Intent, Journal
from op_dbus.engine.lock import StateLock
from op_dbus.errors import InvalidInput
from op_dbus.ledger import Ledger
from op_dbus.state import load_document
from tests import attacker

GOOD = {"version": 1, "plugins": {}}
EVIL = {"version": 1, "plugins": {"systemd": {"units": {"evil.service": {"enabled": True}}}}}


@pytest.fixture
def shared() -> Iterator[Path]:
    attacker.need_root()
    with attacker.shared_dir() as path:
        yield path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def give_to_nobody(path: Path) -> None:
    uid, gid = attacker.nobody()
    os.chown(path, uid, gid)


# -- every directory up to / ----------------------------------------------------------------------------------------

def test_a_root_directory_inside_a_directory_nobody_owns_is_refused(shared: Path) -> None:
    """Only the parent was checked: root 0755 `etc` under a directory `nobody` owns passed, though `nobody` can
    rename `etc` away and put their own in its place."""
    theirs = shared / "theirs"
    theirs.mkdir(mode=0o755)
    give_to_nobody(theirs)
    etc = theirs / "etc"
    etc.mkdir(mode=0o755)
    state = etc / "state.json"
    state.write_text(json.dumps(GOOD))
    state.chmod(0o644)
    with pytest.raises(InvalidInput, match=f"its directory {theirs} is owned by uid 65534") as err:
        load_document(state)
    assert err.value.hint and "chown" in err.value.hint


def test_a_group_writable_grandparent_is_refused_and_a_sticky_one_is_not(shared: Path) -> None:
    upper = shared / "upper"
    (upper / "etc").mkdir(parents=True, mode=0o755)
    state = upper / "etc" / "state.json"
    state.write_text(json.dumps(GOOD))
    upper.chmod(0o775)
    with pytest.raises(InvalidInput, match=f"its directory {upper} is writable by group or others"):
        load_document(state)
    upper.chmod(0o1777)  # like /tmp: nobody can rename a directory they do not own out of it
    assert load_document(state).version == 1


def test_the_host_key_below_a_directory_nobody_owns_is_refused(shared: Path) -> None:
    theirs = shared / "theirs"
    theirs.mkdir(mode=0o755)
    give_to_nobody(theirs)
    with pytest.raises(InvalidInput, match=f"its directory {theirs} is owned by uid 65534"):
        Ledger.open(theirs / "state")


# -- a link swapped while op-dbus reads -----------------------------------------------------------------------------

_SWAPPER = """
import os, sys, time
link, good, evil = sys.argv[1:4]
tmp = link + ".new"
end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end:
    for target in (good, evil):
        try:
            os.symlink(target, tmp)
            os.rename(tmp, link)
        except OSError:
            pass
"""


def test_a_racing_link_swap_never_gets_its_content_parsed(shared: Path) -> None:
    """`nobody` swaps a link in a directory they own between a root-owned state directory and their own, as fast as
    they can, while op-dbus loads the state file through it many times. A check of the path followed by a second
    open by path got their content parsed; checking the opened file and its real directories never does."""
    good = shared / "good"
    good.mkdir(mode=0o755)
    (good / "state.json").write_text(json.dumps(GOOD))
    attic = shared / "attic"
    attic.mkdir(mode=0o755)
    give_to_nobody(attic)
    evil = attic / "evil"
    link = attic / "link"
    made = attacker.run(["python", "-c",
                         f"import os, json; os.mkdir({str(evil)!r}, 0o755); "
                         f"open({str(evil / 'state.json')!r}, 'w').write(json.dumps({EVIL!r})); "
                         f"os.symlink({str(good)!r}, {str(link)!r})"])
    assert made.returncode == 0, made.stderr
    swapper = attacker.popen(["python", "-c", _SWAPPER, str(link), str(good), str(evil), "120"])
    parsed = {"good": 0, "evil": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 100
        tries = 0
        while tries < 15000 and time.monotonic() < deadline:  # old code: about 1 win in 1500 tries on 2 cores
            tries += 1
            try:
                doc = load_document(link / "state.json")
            except InvalidInput:
                parsed["refused"] += 1
                continue
            parsed["evil" if "systemd" in doc.sections else "good"] += 1
    finally:
        swapper.kill()
        swapper.wait()
    assert parsed["evil"] == 0, f"the attacker's file was parsed: {parsed}"
    assert parsed["refused"] > 0, parsed  # the swapper did run
    print(f"{tries} loads while the link was swapped: {parsed}")


# -- the files in the state directory -------------------------------------------------------------------------------

def test_a_symlinked_lock_is_a_clear_error(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "root-only"
    target.write_text("keep me")
    (state_dir / "lock").symlink_to(target)
    with pytest.raises(InvalidInput, match=r"lock file .* is a symbolic link") as err:
        StateLock(state_dir).acquire()
    assert err.value.exit_code == 2 and err.value.hint
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", ["lock", "transaction.json", "agent.lock"])
def test_a_state_file_owned_by_another_user_is_refused(state_dir: Path, name: str) -> None:
    attacker.need_root()
    path = state_dir / name
    path.write_text("")
    path.chmod(0o600)
    give_to_nobody(path)
    with pytest.raises(InvalidInput, match="owned by uid 65534"):
        _use(state_dir, name)


@pytest.mark.parametrize("name", ["lock", "transaction.json", "agent.lock"])
def test_a_state_file_anyone_can_write_is_refused(state_dir: Path, name: str) -> None:
    path = state_dir / name
    path.write_text("")
    path.chmod(0o666)
    with pytest.raises(InvalidInput, match=r"writable by group or others \(mode 0666\)"):
        _use(state_dir, name)


def _use(state_dir: Path, name: str) -> None:
    if name == "lock":
        StateLock(state_dir).acquire().release()
    elif name == "transaction.json":
        Journal(state_dir).begin(Intent.new("test", {}, [], {}))
    else:
        from op_dbus.agent.core import AGENT_LOCK, Agent, AgentConfig
        from op_dbus.plugin import Settings

        assert name == AGENT_LOCK
        Agent(AgentConfig(state_dir / "state.json"), Settings(state_dir=state_dir))._hold_agent_lock()


def test_a_symlinked_intent_record_is_neither_read_nor_truncated(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    record = json.dumps(vars(Intent.new("planted", {}, [], {})))
    target.write_text(record)
    (state_dir / "transaction.json").symlink_to(target)
    journal = Journal(state_dir)
    with pytest.raises(InvalidInput, match="is a symbolic link"):
        journal.read()
    with pytest.raises(InvalidInput, match="is a symbolic link"):
        journal.remove()
    assert target.read_text() == record


# -- the atomic no-follow writer ------------------------------------------------------------------------------------

def test_the_writer_replaces_a_planted_link_not_its_target(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("root:x:0:0\n")
    target.chmod(0o600)
    (state_dir / "out.json").symlink_to(target)
    files.atomic_write(state_dir / "out.json", b"{}", 0o644)
    assert target.read_text() == "root:x:0:0\n"
    assert not (state_dir / "out.json").is_symlink() and (state_dir / "out.json").read_bytes() == b"{}"
    assert [p.name for p in state_dir.iterdir()] == ["out.json"]  # no temporary file left behind


def test_agent_status_is_never_written_through_a_planted_link(state_dir: Path, tmp_path: Path) -> None:
    """The status file's temporary name was predictable (`.agent.json.<pid>.tmp`) and written with write_text,
    which follows a link: a link planted there overwrote a root-only file."""
    target = tmp_path / "root-only"
    target.write_text("secret\n")
    target.chmod(0o600)
    for name in (f".agent.json.{os.getpid()}.tmp", "agent.json"):
        (state_dir / name).symlink_to(target)
    write_status(state_dir, {"pid": os.getpid()})
    assert target.read_text() == "secret\n"
    assert json.loads((state_dir / "agent.json").read_text()) == {"pid": os.getpid()}


def test_the_writer_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(InvalidInput, match="writable by group or others"):
        files.atomic_write(open_dir / "x", b"x")
    assert not any(open_dir.iterdir())


def test_an_export_may_go_to_a_directory_its_user_owns_without_writing_through_links(shared: Path) -> None:
    """`sudo op-dbus export-blockchain --file ~/audit.json`: the user's own directory is fine for a file handed to
    them, and a link they planted there is replaced, not followed."""
    home = shared / "home"
    home.mkdir(mode=0o755)
    give_to_nobody(home)
    target = shared / "root-only"
    target.write_text("keep\n")
    (home / "audit.json").symlink_to(target)
    files.atomic_write(home / "audit.json", b"{}", 0o644, check_dir=False, what="export")
    assert target.read_text() == "keep\n" and (home / "audit.json").read_bytes() == b"{}"
    with pytest.raises(InvalidInput, match="owned by uid 65534"):
        files.atomic_write(home / "state.json", b"{}")  # op-dbus's own files: never there


def test_a_fifo_in_place_of_a_state_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo, 0o644)
    with pytest.raises(InvalidInput, match="is not a regular file"):
        load_document(fifo)
