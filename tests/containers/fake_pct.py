"""A stand-in for Proxmox VE's `pct`, following its documented interface (pct(1)); for contract tests only.

It keeps containers in a JSON file ($FAKE_PCT_STATE), logs every call ($FAKE_PCT_STATE.log), refuses what
the documentation does not allow (unknown options, malformed property strings, a missing template volume,
destroying a running container), and answers `pct exec CT -- cat FILE` from the container's template.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tarfile
from pathlib import Path

STATE = Path(os.environ["FAKE_PCT_STATE"])
TEMPLATES = Path(os.environ["OP_DBUS_PVE_TEMPLATE_DIR"])
CREATE_OPTIONS = {"hostname", "tags", "description", "rootfs", "onboot", "unprivileged", "memory", "cores",
                  "cpulimit", "swap", "ostype", "arch", "password", "ssh-public-keys", "storage", "features"}
NET = re.compile(r"^name=[a-z0-9]+(,(bridge=[\w.-]+|ip=(dhcp|manual|[0-9.]+/[0-9]+)|gw=[0-9.]+"
                 r"|hwaddr=[0-9A-F:]+|type=veth))*$")
MP = re.compile(r"^[^,]+,mp=/[^,]*(,ro=[01])?(,backup=[01])?$")


def fail(message: str, code: int = 255) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(code)


def load() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save(cts: dict) -> None:
    STATE.write_text(json.dumps(cts))


def options(args: list[str]) -> dict[str, str]:
    out = {}
    while args:
        key = args.pop(0)
        if not key.startswith("--") or not args:
            fail(f"400 Parameter verification failed.\n{key}: invalid format")
        out[key[2:]] = args.pop(0)
    return out


def main(argv: list[str]) -> None:
    with open(str(STATE) + ".log", "a") as log:
        log.write(json.dumps(argv) + "\n")
    cts = load()
    verb, rest = argv[0], argv[1:]
    if verb == "list":
        print("VMID       Status     Lock         Name                ")
        for vmid, ct in sorted(cts.items(), key=lambda kv: int(kv[0])):
            print(f"{vmid:<10} {ct['status']:<10} {'':<12} {ct['config']['hostname']:<20}")
        return
    vmid = rest[0] if rest else fail("400 not enough arguments")
    if verb == "create":
        if vmid in cts:
            fail(f"unable to create CT {vmid} - CT {vmid} already exists on node 'pve'")
        volume, opts = rest[1], options(rest[2:])
        storage, _, path = volume.partition(":vztmpl/")
        if storage != "local" or not (TEMPLATES / path).is_file():
            fail(f"volume '{volume}' does not exist")
        for key, value in opts.items():
            if re.fullmatch(r"net\d", key):
                if not NET.match(value):
                    fail(f"400 Parameter verification failed.\n{key}: invalid format - {value}")
            elif re.fullmatch(r"mp\d", key):
                if not MP.match(value):
                    fail(f"400 Parameter verification failed.\n{key}: invalid format - {value}")
            elif key not in CREATE_OPTIONS:
                fail(f"400 Parameter verification failed.\n{key}: property is not defined in schema")
            elif key in ("memory", "cores") and not value.isdigit():
                fail(f"400 Parameter verification failed.\n{key}: type check ('integer') failed - got '{value}'")
            elif key in ("onboot", "unprivileged") and value not in ("0", "1"):
                fail(f"400 Parameter verification failed.\n{key}: type check ('boolean') failed - got '{value}'")
        opts.pop("rootfs", None)
        config = {"arch": "amd64", "ostype": "unmanaged", "rootfs": f"local-lvm:vm-{vmid}-disk-0,size=8G", **opts}
        cts[vmid] = {"status": "stopped", "config": config, "template": str(TEMPLATES / path)}
    elif vmid not in cts:
        fail(f"Configuration file 'nodes/pve/lxc/{vmid}.conf' does not exist")
    elif verb == "config":
        for key, value in sorted(cts[vmid]["config"].items()):
            print(f"{key}: {value}")
        return
    elif verb == "start":
        if cts[vmid]["status"] == "running":
            fail(f"CT {vmid} already running")
        cts[vmid]["status"] = "running"
    elif verb in ("stop", "shutdown"):
        cts[vmid]["status"] = "stopped"
    elif verb == "destroy":
        if cts[vmid]["status"] == "running":
            fail(f"CT {vmid} is running - destroy failed")
        del cts[vmid]
    elif verb == "exec":
        if cts[vmid]["status"] != "running":
            fail(f"CT {vmid} not running")
        command = rest[rest.index("--") + 1:]
        if command[0] not in ("cat", "/bin/cat"):
            fail("the stand-in only answers `cat FILE`")
        with tarfile.open(cts[vmid]["template"]) as tar:
            names = {m.name.removeprefix("./"): m for m in tar.getmembers()}
            member = names.get(command[1].lstrip("/"))
            data = tar.extractfile(member) if member else None
            if data is None:
                fail(f"cat: can't open '{command[1]}': No such file or directory", 1)
            sys.stdout.write(data.read().decode())
        return
    else:
        fail(f"unknown command 'pct {verb}'")
    save(cts)


if __name__ == "__main__":
    main(sys.argv[1:])
