"""The commit-confirm watchdog process: `python -m op_dbus.engine.watchdog STATE_DIR TXID`.

Started detached (setsid) by an apply with a confirmation deadline; it reverts transaction TXID when the
deadline passes or the applying op-dbus dies, and exits once the change is confirmed, aborted or reverted.
A process of its own, because it must outlive the apply, its terminal and its SSH session; the engine's own
entry point rather than the command line's, because it needs no option parsing: the intent record carries
the bus, namespace and OVSDB socket the change was made with.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from op_dbus.errors import OpDbusError
from op_dbus.plugin import Context, Settings

MARK = "op_dbus.engine.watchdog"  # in the process's command line: how a live watchdog is recognised


async def watch(state_dir: Path, txid: str) -> str | None:
    from op_dbus.engine import Engine
    from op_dbus.ledger import Ledger

    async with Context(Settings(state_dir=state_dir)) as ctx:
        return await Engine(ctx, ledger=lambda: Ledger.open(state_dir)).watch(txid)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {MARK} STATE_DIR TXID", file=sys.stderr)
        return 2
    try:
        outcome = asyncio.run(watch(Path(argv[0]), argv[1]))
    except OpDbusError as e:
        print(f"op-dbus watchdog: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    if outcome:
        print(f"op-dbus watchdog: {outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
