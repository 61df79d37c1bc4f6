"""The storage plugin against a real UDisks2 in the lab: format, mount, fstab, drift, refusals, introspect, watch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from op_dbus.plugin import SUBSCRIBED, Context, Settings
from op_dbus.plugins.storage import StoragePlugin, StorageState
from tests.storage.conftest import StorageLab


def declared(lab: StorageLab, **fields: Any) -> dict[str, Any]:
    return {"filesystems": {lab.device: fields}}


def test_empty_device_is_formatted_mounted_and_kept_in_fstab(storage: StorageLab) -> None:
    storage.sh("mkdir -p /srv/data")
    want = declared(storage, type="ext4", label="data", mount_point="/srv/data", options="noatime", mounted=True)
    plan = storage.op("-o", "json", "diff", state=want)
    assert plan.returncode == 3, plan.stderr
    actions = [c["action"] for c in json.loads(plan.stdout)["changes"]]
    assert actions == ["format", "add-fstab", "mount"]
    r = storage.op("apply", state=want)
    assert r.returncode == 0, r.stderr
    assert storage.fs_type() == "ext4"
    assert storage.sh(f"blkid -o value -s LABEL {storage.device}").stdout.strip() == "data"
    assert storage.mounted_at() == ["/srv/data"]
    entry = [line.split() for line in storage.fstab().splitlines() if line.startswith(storage.device)]
    assert entry == [[storage.device, "/srv/data", "ext4", "noatime", "0", "0"]]
    again = storage.op("-o", "json", "diff", state=want)
    assert again.returncode == 0 and json.loads(again.stdout)["changes"] == [], again.stdout


def test_unmounted_by_hand_is_drift_and_apply_mounts_it_again(storage: StorageLab) -> None:
    want = declared(storage, type="ext4", mount_point="/srv/data", options="noatime", mounted=True)
    storage.sh("umount /srv/data")
    d = storage.op("-o", "json", "diff", state=want)
    assert d.returncode == 3
    assert [(c["object"], c["action"]) for c in json.loads(d.stdout)["changes"]] == [(storage.device, "mount")]
    assert storage.op("apply", state=want).returncode == 0
    assert storage.mounted_at() == ["/srv/data"]


async def test_watch_names_the_device_unmounted_by_hand(storage: StorageLab) -> None:
    want = declared(storage, mount_point="/srv/data", mounted=True)
    async with Context(Settings(bus_address=storage.machine.bus_address)) as ctx:
        events = StoragePlugin().watch(StorageState.model_validate(want), ctx)
        first = await asyncio.wait_for(anext(events), 60)
        assert first.source == SUBSCRIBED
        await asyncio.to_thread(storage.sh, "umount /srv/data")
        event = await asyncio.wait_for(anext(events), 60)
        assert event.plugin == "storage" and event.objects == (storage.device,), event
        await events.aclose()
    assert storage.op("apply", state=want).returncode == 0
    assert storage.mounted_at() == ["/srv/data"]


def test_format_over_a_filesystem_is_refused_loudly_and_nothing_changes(storage: StorageLab) -> None:
    r = storage.op("apply", state=declared(storage, type="btrfs", mount_point="/srv/data", mounted=True))
    assert r.returncode == 2, r.stderr
    assert storage.device in r.stderr and "ext4" in r.stderr and "allow_format" in r.stderr, r.stderr
    assert storage.fs_type() == "ext4"
    assert storage.mounted_at() == ["/srv/data"]


def test_a_device_that_does_not_exist_is_refused(storage: StorageLab) -> None:
    r = storage.op("apply", state={"filesystems": {"/dev/disk/by-label/no-such-disk": {"type": "ext4"}}})
    assert r.returncode == 2, r.stderr
    assert "/dev/disk/by-label/no-such-disk" in r.stderr and "does not exist" in r.stderr


def test_a_mount_point_that_is_a_file_is_refused_and_nothing_changes(storage: StorageLab) -> None:
    storage.sh("echo x > /srv/a-file")
    fstab = storage.fstab()
    r = storage.op("apply", state=declared(storage, type="ext4", mount_point="/srv/a-file", mounted=True))
    assert r.returncode == 2, r.stderr
    assert "/srv/a-file" in r.stderr and "not a directory" in r.stderr
    assert storage.fstab() == fstab
    assert storage.mounted_at() == ["/srv/data"]


def test_bad_options_are_refused_before_anything_is_read(storage: StorageLab) -> None:
    r = storage.op("apply", state=declared(storage, type="ext4", mount_point="/srv/data", options="rw,uid=0 x"))
    assert r.returncode == 2
    assert "options" in r.stderr


def test_introspect_reapplies_as_a_noop_and_query_reports_facts(storage: StorageLab) -> None:
    r = storage.op("-o", "json", "introspect", "storage")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    fs = doc["plugins"]["storage"]["filesystems"][storage.device]
    assert fs == {"type": "ext4", "label": "data", "mount_point": "/srv/data", "options": "noatime", "mounted": True,
                  "fstab": True}
    path = storage.machine.root / "root/introspected.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    d = storage.machine.run([storage.exe, "--state-dir", "/var/lib/op-dbus-test", "-o", "json", "diff",
                             "/root/introspected.json"], check=False)
    assert d.returncode == 0 and json.loads(d.stdout)["changes"] == [], d.stdout + d.stderr
    q = storage.op("-o", "json", "query", "storage")
    assert q.returncode == 0, q.stderr
    block = json.loads(q.stdout)["storage"]["status"]["blocks"][storage.device]
    assert block["backing_file"] == str(storage.image) and block["usage"] == "filesystem"


def test_unmount_and_fstab_removal_then_reformat_with_allow_format(storage: StorageLab) -> None:
    r = storage.op("apply", state=declared(storage, mounted=False, fstab=False))
    assert r.returncode == 0, r.stderr
    assert storage.mounted_at() == []
    assert storage.device not in storage.fstab()
    r = storage.op("apply", state=declared(storage, type="ext2", allow_format=True))
    assert r.returncode == 0, r.stderr
    assert storage.fs_type() == "ext2"


def test_a_missing_mount_point_directory_is_made(storage: StorageLab) -> None:
    assert storage.sh("test -e /srv/made", check=False).returncode != 0
    r = storage.op("apply", state=declared(storage, type="ext2", mount_point="/srv/made", mounted=True))
    assert r.returncode == 0, r.stderr
    assert storage.mounted_at() == ["/srv/made"]


def test_a_failed_mount_rolls_back_the_fstab_entry(storage: StorageLab) -> None:
    assert storage.op("apply", state=declared(storage, mounted=False, fstab=False)).returncode == 0
    fstab = storage.fstab()
    # mount(8) refuses the option, after the fstab entry was added: the entry is taken back out
    r = storage.op("apply", state=declared(storage, mount_point="/srv/rollback", options="no-such-option", mounted=True))
    assert r.returncode == 4, r.stderr
    assert "mount" in r.stderr and storage.device in r.stderr
    assert storage.fstab() == fstab
    assert storage.mounted_at() == []
