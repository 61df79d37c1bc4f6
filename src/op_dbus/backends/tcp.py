"""TCP reachability, for health probes: connect and close, nothing sent."""

from __future__ import annotations

import asyncio
import contextlib


async def reachable(address: str, timeout: float = 2.0) -> str | None:
    """None when a TCP connection to `address` (HOST:PORT, [V6]:PORT) opens within `timeout`, else why not."""
    host, _, port = address.rpartition(":")
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except (OSError, TimeoutError) as e:
        return f"no TCP connection to {address}: {e or type(e).__name__}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None
