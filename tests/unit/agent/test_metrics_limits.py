"""The metrics endpoint under abuse: bad addresses are exit 2, and slow, large or numerous requests (from another
user, with a thousand connections) neither starve the agent of file descriptors nor flood its log."""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus.agent import logs, metrics
from op_dbus.agent.metrics import Metrics
from op_dbus.errors import InvalidInput
from tests import attacker

SRC = Path(__file__).resolve().parents[3] / "src"


def op_dbus_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "op_dbus", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:-1"])
def test_a_port_out_of_range_is_exit_2(tmp_path: Path, listen: str) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"version": 1, "plugins": {}}')
    r = subprocess.run(op_dbus_argv("--state-dir", str(tmp_path / "s"), "run", "--no-log", "--state-file", str(state),
                                    "--metrics", listen), env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "out of range" in r.stderr and "Traceback" not in r.stderr


async def test_a_port_in_use_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(InvalidInput, match="cannot listen there"):
            await Metrics().serve(f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()


async def _exchange(port: int, data: bytes, pace: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for line in data.splitlines(keepends=True) if pace else [data]:
            writer.write(line)
            await writer.drain()
            if pace:
                await asyncio.sleep(pace)
        return await asyncio.wait_for(reader.read(), 30)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


async def test_oversized_headers_are_refused() -> None:
    server = await Metrics().serve("127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    try:
        head = b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200))
        answer = await _exchange(port, head + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert (await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    finally:
        server.close()


async def test_a_request_trickled_line_by_line_is_cut_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each header line within the old per-line timeout kept a connection open for ever."""
    monkeypatch.setattr(metrics, "REQUEST_DEADLINE", 1.0, raising=False)
    server = await Metrics().serve("127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        trickle = b"GET /metrics HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 40 + b"\r\n"
        answer = await _exchange(port, trickle, pace=0.25)  # 10 s if let through
        assert time.monotonic() - started < 8, "the slow request was not cut off"
        assert b"200 OK" not in answer
    finally:
        server.close()


def test_repeated_log_lines_are_suppressed_and_counted() -> None:
    now = [0.0]
    stream = io.StringIO()
    logger = logs.setup(stream)
    limiter = logs.RepeatLimiter(burst=5, window=10.0, clock=lambda: now[0])
    logger.handlers[0].filters[:] = [limiter]
    for _ in range(1000):
        logs.emit(logger, 40, "lost", "lost a source: Too many open files")
    logs.emit(logger, 30, "drift", "drift: v0 mtu")  # another line passes
    now[0] = 11.0
    logs.emit(logger, 40, "lost", "lost a source: Too many open files")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 7
    assert lines[-1]["suppressed"] == 995 and "995 similar messages suppressed" in lines[-1]["msg"]


def test_the_agent_log_is_rate_limited_by_default() -> None:
    stream = io.StringIO()
    logger = logs.setup(stream)
    for _ in range(500):
        logs.emit(logger, 40, "lost", "lost a source, reconnecting in 0.5 s: Too many open files")
    assert len(stream.getvalue().splitlines()) < 20


# -- a thousand slow connections from another user, against a real agent watching a real kernel ----------------------

_SLOW_CLIENTS = """
import resource, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
count = min(count, hard - 50)
socks = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)
print(len(socks), flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    for s in socks:
        try:
            s.send(b"X-Slow: 1\\r\\n" if s.fileno() >= 0 else b"")
        except OSError:
            pass
    time.sleep(2)
"""


@pytest.fixture
def netns() -> Iterator[str]:
    from tests.net.conftest import _throwaway_netns

    yield from _throwaway_netns()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics_answer(port: int) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            return s.recv(64)
    except OSError:
        return b""


def test_a_thousand_slow_connections_from_another_user_do_not_blind_the_agent(netns: str, tmp_path: Path) -> None:
    attacker.need_root()
    subprocess.run(["ip", "-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v0p"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "v0", "mtu", "1400"], check=True)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "plugins": {"net": {"interfaces": [{"name": "v0", "mtu": 1400}]}}}))
    port = _free_port()

    def limit_descriptors() -> None:  # the agent gets the common default soft limit, below the attacker's count
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    agent = subprocess.Popen(
        op_dbus_argv("--netns", netns, "--state-dir", str(tmp_path / "s"), "run", "--no-log", "--state-file",
                     str(state), "--interval", "3600", "--metrics", f"127.0.0.1:{port}"),
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit_descriptors)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(agent.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    clients = None
    try:
        deadline = time.monotonic() + 60
        while not _metrics_answer(port).startswith(b"HTTP/1.1 200"):
            assert agent.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        clients = attacker.popen(["python", "-c", _SLOW_CLIENTS, str(port), "1100", "300"], stdout=subprocess.PIPE)
        assert clients.stdout is not None
        opened = int(clients.stdout.readline())
        assert opened > 1024, f"the attacker could open only {opened} connections"
        time.sleep(8)  # the connections queue up and trickle their headers
        before = len(lines)
        subprocess.run(["ip", "-n", netns, "link", "set", "v0", "mtu", "1300"], check=True)
        deadline = time.monotonic() + 60
        while not any('"event":"drift"' in line and "v0" in line for line in lines[before:]):
            assert agent.poll() is None, "".join(lines[-20:])
            assert time.monotonic() < deadline, "no drift seen under the attack:\n" + "".join(lines[-20:])
            time.sleep(0.2)
        held = len(os.listdir(f"/proc/{agent.pid}/fd"))
        assert held < 1024 - metrics.FD_RESERVE // 2, f"the agent holds {held} descriptors"
        assert not any("Too many open files" in line for line in lines), "".join(lines[-20:])
        assert len(lines) < 200, f"{len(lines)} log lines"
    finally:
        if clients is not None:
            clients.kill()
            clients.wait()
        agent.terminate()
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
