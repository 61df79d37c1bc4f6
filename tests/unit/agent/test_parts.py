"""The agent's small parts: overlaying a recorded state, the metrics text format and endpoint, sd_notify over a real
datagram socket, structured log lines, the status file."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from op_dbus.agent.merge import overlay_document
from op_dbus.agent.metrics import Metrics, parse_listen
from op_dbus.agent.notify import Notifier
from op_dbus.agent.status import read_status, write_status
from op_dbus.errors import InvalidInput


def test_overlay_merges_objects_by_key_and_by_identity() -> None:
    mine = {"version": 1, "plugins": {
        "systemd": {"units": {"nginx.service": {"active_state": "active", "enabled": True},
                              "redis.service": {"active_state": "active"}}},
        "net": {"interfaces": [{"name": "br0", "type": "linux-bridge", "mtu": 1500}, {"name": "v0", "type": "veth"}],
                "routes": [{"destination": "10.0.0.0/8", "metric": 100, "next-hop": "10.1.1.1"}]}}}
    recorded = {"version": 1, "plugins": {
        "systemd": {"units": {"nginx.service": {"active_state": "inactive"}, "new.service": {"enabled": False}}},
        "net": {"interfaces": [{"name": "br0", "mtu": 9000}],
                "routes": [{"destination": "10.0.0.0/8", "metric": 100, "next-hop": "10.1.1.2"}]}}}
    merged = overlay_document(mine, recorded)
    units = merged["plugins"]["systemd"]["units"]
    assert units["nginx.service"] == {"active_state": "inactive", "enabled": True}  # fields not recorded are kept
    assert units["redis.service"] == {"active_state": "active"} and units["new.service"] == {"enabled": False}
    assert merged["plugins"]["net"]["interfaces"] == [{"name": "br0", "type": "linux-bridge", "mtu": 9000},
                                                      {"name": "v0", "type": "veth"}]
    assert merged["plugins"]["net"]["routes"] == [{"destination": "10.0.0.0/8", "metric": 100, "next-hop": "10.1.1.2"}]
    assert mine["plugins"]["systemd"]["units"]["nginx.service"]["active_state"] == "active"  # inputs untouched


def test_metrics_text_format() -> None:
    m = Metrics()
    m.inc("drift", "systemd")
    m.inc("drift", "systemd")
    m.inc("drift", "net")
    m.inc("applies")
    m.observe_latency(0.03)
    text = m.render()
    assert 'opdbus_agent_drift_total{plugin="systemd"} 2' in text
    assert 'opdbus_agent_drift_total{plugin="net"} 1' in text
    assert "opdbus_agent_applies_total 1" in text and "opdbus_agent_failures_total 0" in text
    assert 'opdbus_agent_detection_latency_seconds_bucket{le="0.025"} 0' in text
    assert 'opdbus_agent_detection_latency_seconds_bucket{le="0.05"} 1' in text
    assert "opdbus_agent_detection_latency_seconds_count 1" in text
    assert m.counts() == {"drift": 3, "applies": 1}


async def test_metrics_endpoint_serves_on_loopback() -> None:
    m = Metrics()
    m.inc("events", "systemd")
    server = await m.serve("127.0.0.1:0")
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = (await reader.read()).decode()
    writer.close()
    server.close()
    assert body.startswith("HTTP/1.1 200 OK") and 'opdbus_agent_events_total{plugin="systemd"} 1' in body


def test_metrics_refuses_other_than_loopback() -> None:
    assert parse_listen("9469") == ("127.0.0.1", 9469)
    assert parse_listen("[::1]:9469") == ("::1", 9469)
    with pytest.raises(InvalidInput, match="loopback"):
        parse_listen("0.0.0.0:9469")


def test_notify_sends_to_the_socket_and_reads_the_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == 1.5
    assert n.ready("ok")
    assert server.recv(1000).decode().split("\n")[:2] == ["READY=1", "STATUS=ok"]
    assert n.watchdog()
    assert server.recv(1000) == b"WATCHDOG=1"
    n.close()
    server.close()
    assert Notifier({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}).watchdog_interval is None  # not for us
    assert not Notifier({}).ready("x")  # not under systemd: nothing to do


def test_status_round_trip(tmp_path: Path) -> None:
    write_status(tmp_path, {"pid": os.getpid(), "mode": "shadow"})
    st = read_status(tmp_path)
    assert st is not None and st["mode"] == "shadow"
    assert st["running"] is False  # this process is pytest, not op-dbus
    (tmp_path / "agent.json").write_text("{")
    assert read_status(tmp_path) is None


def test_log_lines_are_json_with_journal_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from op_dbus.agent import logs

    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    logger = logs.setup(stream)
    logs.emit(logger, 30, "drift", "drift: start nginx.service", block=3)
    line = stream.getvalue().strip()
    assert line.startswith("<4>{")
    body = json.loads(line[3:])
    assert body["event"] == "drift" and body["block"] == 3 and body["level"] == "warning"
