"""Discovery and the generic plugin on a private dbus-daemon (ready in milliseconds, no lab needed): the walk
finds the test service's objects and typed values, reports a silent name as timed out, and never activates."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from op_dbus.backends import dbus
from op_dbus.discovery import discover
from op_dbus.plugin import Context, Settings, UndoLog
from op_dbus.plugins.dbus import DbusPropertiesPlugin, DbusState
from tests.e2e import dbus_test_service as svc

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_type="signal"/>
  </policy>
</busconfig>
"""

ACTIVATABLE = "[D-BUS Service]\nName=org.example.Lazy1\nExec=/bin/false\nUser=root\n"


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    d = tmp_path_factory.mktemp("bus")
    (d / "services").mkdir()
    (d / "services/org.example.Lazy1.service").write_text(ACTIVATABLE)
    (d / "bus.conf").write_text(CONFIG.format(socket=d / "bus.sock", services=d / "services"))
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={d / 'bus.conf'}", "--nofork", "--print-address"],
                              stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    address = daemon.stdout.readline().strip()
    service = svc.start(sys.executable, address)
    yield address
    service.terminate()
    service.wait(timeout=10)
    daemon.terminate()
    daemon.wait(timeout=10)


async def test_discovery_walks_the_bus(bus: str) -> None:
    client = dbus.Client(await dbus.connect(bus), timeout=5)
    try:
        seen: list[int] = []
        result = await discover(client, timeout=0.5, concurrency=8, progress=lambda d: seen.append(d.services_done))
    finally:
        client.bus.disconnect()
    services = result.to_dict()["services"]
    own = services[svc.NAME]
    assert own["status"] == "ok" and isinstance(own["pid"], int)
    props = own["objects"][svc.PATH][svc.NAME]
    assert props["Limits"] == {"type": "a{su}", "access": "readwrite", "value": {"cpu": 1}}
    assert props["Ratio"] == {"type": "d", "access": "readwrite", "value": 0.5}
    assert props["Colour"]["access"] == "read"
    assert services[svc.SILENT]["status"] == "timeout"
    assert services["org.example.Lazy1"]["status"] == "activatable"  # listed, not started
    assert seen and seen[-1] == result.services_done


async def test_generic_plugin_round_trip_on_the_private_bus(bus: str) -> None:
    plugin = DbusPropertiesPlugin()
    desired = DbusState.model_validate({svc.NAME: {svc.PATH: {svc.NAME: {"Level": 9, "Tags": ["p", "q"]}}}})
    async with Context(Settings(bus_address=bus)) as ctx:
        assert await plugin.check(desired, ctx) == []
        before = await plugin.query(ctx, scope=desired)
        plan = plugin.diff(desired, before)
        assert [c.object for c in plan] == [f"{svc.NAME}.Level", f"{svc.NAME}.Tags"]
        undo = UndoLog()
        await plugin.apply(plan, ctx, undo)
        assert plugin.diff(desired, await plugin.query(ctx, scope=desired)) == []
        await plugin.apply(list(reversed(undo.entries)), ctx, UndoLog())
        assert plugin.dump(await plugin.query(ctx, scope=desired)) == plugin.dump(before)


async def test_login1_introspect_without_logind_is_empty_not_an_error(bus: str) -> None:
    from op_dbus.errors import ServiceUnavailable
    from op_dbus.plugins.login1 import Login1Plugin, Login1State

    plugin = Login1Plugin()
    async with Context(Settings(bus_address=bus)) as ctx:
        assert plugin.dump(await plugin.query(ctx)) == {"users": {}}
        with pytest.raises(ServiceUnavailable):
            await plugin.query(ctx, scope=Login1State.model_validate({"users": {"root": {"linger": False}}}))
