"""The OVSDB JSON-RPC reader on hostile servers: whatever bytes come back over a real socket, a call returns or raises
the project's BackendError promptly; never a hang, another exception, or a traceback from the reader task."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_dbus.backends.ovsdb import Framer, Ovsdb, OvsdbError
from op_dbus.errors import BackendError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=os.environ.get("CI") == "true")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=8), kids, max_size=3), max_leaves=20)
# Replies that look like the server's, for the request the client sends first (id 1).
replies = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from([1, 2, "1", None, [1]]) | json_values,
    "result": st.sampled_from([[], [{}], [{"rows": [{"name": "br0"}]}], [{"error": "x", "details": "y"}], None])
    | json_values,
    "error": st.none() | json_values,
    "method": st.sampled_from(["echo", "update", "other"]),
    "params": json_values,
})
SPECIALS = [b"[" * 100_000, b'{"id": 1, "result": ' + b"9" * 5000 + b"}", b"\xff\xfe", b'{"id": 1, "result": [}',
            b"42", b'"text"', b'{"id": 1, "result": NaN}', b'{"id": 1}' * 3, b'{"id": ' + b"[" * 50_000]


async def exchange(payload: list[bytes], close: bool = True) -> Any:
    """Connect the client to one end of a socket pair, send `payload` from the other, and run a select."""
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, writer = await asyncio.open_unix_connection(sock=client, limit=1 << 24)
    db = Ovsdb(reader, writer, "fuzz.sock")
    loop = asyncio.get_running_loop()
    server.setblocking(False)
    try:
        async def serve() -> None:
            await loop.sock_recv(server, 1 << 16)  # the request
            for part in payload:
                await loop.sock_sendall(server, part)
                await asyncio.sleep(0)
            if close:
                server.close()

        task = asyncio.create_task(serve())
        try:
            return await asyncio.wait_for(db.select("Bridge", ["name"]), 20)
        finally:
            await task
    finally:
        server.close()
        await db.close()


def outcome(payload: list[bytes]) -> Any:
    try:
        return asyncio.run(exchange(payload))
    except BackendError as exc:
        assert str(exc)
        return exc


@SETTINGS
@given(st.lists(st.binary(max_size=80), max_size=4))
def test_any_bytes(parts: list[bytes]) -> None:
    outcome(parts)


@SETTINGS
@given(st.lists(replies, min_size=1, max_size=3), st.data())
def test_replies_that_look_like_the_servers(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(json.dumps(m).encode() for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    result = outcome(parts)
    if not isinstance(result, BackendError):
        assert isinstance(result, list) and all(isinstance(r, dict) for r in result)


@pytest.mark.parametrize("payload", SPECIALS, ids=range(len(SPECIALS)))
def test_hostile_replies_give_a_clear_error(payload: bytes) -> None:
    result = outcome([payload])
    assert isinstance(result, BackendError), result


def test_garbage_is_refused_at_once_not_after_the_call_timeout() -> None:
    # The server keeps the connection open: only the framer can tell that "}{" will never become a message.
    async def run() -> Any:
        return await exchange([b'}{"id": 1, "result": []}'], close=False)

    with pytest.raises(OvsdbError, match="not a JSON object"):
        asyncio.run(run())


def test_a_character_split_between_two_reads_is_decoded() -> None:
    framer = Framer()
    message = json.dumps({"id": 1, "result": [{"rows": [{"name": "br\u00e9\u20ac"}]}]}, ensure_ascii=False).encode()
    cut = message.index("\u20ac".encode()) + 1
    assert framer.feed(message[:cut]) == []
    assert framer.feed(message[cut:]) == [json.loads(message)]
    rows = asyncio.run(exchange([message[:cut], message[cut:]]))
    assert rows == [{"name": "br\u00e9\u20ac"}]


def test_a_message_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("op_dbus.backends.ovsdb.MAX_MESSAGE", 1000)
    framer = Framer()
    with pytest.raises(OvsdbError, match="larger than"):
        framer.feed(b'{"id": 1, "result": "' + b"x" * 2000)
