"""Hostile state files and arguments through the real `op-dbus` command: each ends in exit 2 with a message, at
once, and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from op_dbus.errors import StateFileError
from op_dbus.state import parse_text, validate_document

# 386 bytes that expand to 9^9 (387 million) leaves when a loader follows its aliases
BILLION_LAUGHS = b"""version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


SRC = Path(__file__).resolve().parents[2] / "src"


def op_dbus(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "op_dbus", "--state-dir", str(tmp_path / "state"), *args]
    # this checkout's op_dbus, not whichever one the interpreter has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def test_yaml_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_bytes(BILLION_LAUGHS)
    f.chmod(0o600)
    try:
        r = op_dbus(tmp_path, "diff", str(f), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("a 386-byte YAML alias bomb kept op-dbus busy for 30 s")
    assert r.returncode == 2, r.stderr
    assert "anchors and aliases" in r.stderr and "line 2" in r.stderr, r.stderr


@pytest.mark.parametrize("text", [b"version: 1\nx: &a 1\n", b"version: 1\nplugins: *nothing\n"])
def test_any_yaml_anchor_or_alias_is_refused(text: bytes) -> None:
    with pytest.raises(StateFileError, match="anchors and aliases"):
        parse_text(text, "s.yaml")


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/b", "x" * 256, "bad\nname"])
def test_netns_that_ip_netns_would_refuse_is_invalid_input(tmp_path: Path, name: str) -> None:
    r = op_dbus(tmp_path, "--netns", name, "query", "net")
    assert r.returncode == 2, r.stderr
    assert "--netns" in r.stderr, r.stderr
    assert "not a valid name" in r.stderr or "control characters" in r.stderr, r.stderr


@pytest.mark.skipif(not Path("/proc/self/ns/net").exists(), reason="no namespace files in /proc")
def test_netns_path_that_is_not_a_namespace_is_invalid_input(tmp_path: Path) -> None:
    state = tmp_path / "net.json"
    state.write_text('{"version": 1, "plugins": {"net": {"interfaces": [{"name": "lo", "state": "up"}]}}}')
    state.chmod(0o600)
    for args in (["query", "net"], ["diff", str(state)]):
        r = op_dbus(tmp_path, "--netns", "/etc/passwd", *args)
        assert r.returncode == 2, r.stderr
        assert "/etc/passwd is not a network namespace" in r.stderr, r.stderr


@pytest.mark.parametrize("section", [
    {"systemd": {"units": {"nginx.service\n": {"active_state": "active"}}}},
    {"login1": {"users": {"root\n": {"linger": True}}}},
    {"dbus": {"org.freedesktop.hostname1\n": {"/org/freedesktop/hostname1": {
        "org.freedesktop.hostname1": {"StaticHostname": "x"}}}}},
    {"containers": {"containers": {"web-1\n": {"backend": "podman", "image": "base"}}}},
], ids=["systemd unit", "login1 user", "dbus service", "container"])
def test_a_name_with_a_trailing_newline_is_refused(section: dict[str, object]) -> None:
    # `$` in a pattern matches before a final newline; every name is matched whole
    with pytest.raises(StateFileError) as exc:
        validate_document({"version": 1, "plugins": section}, "t.json")
    assert "\\n" in str(exc.value.problems), exc.value.problems
