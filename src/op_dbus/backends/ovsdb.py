"""A small asyncio OVSDB (RFC 7047) JSON-RPC client for ovsdb-server's unix socket: transact, select, monitor, wait.

Messages are JSON values written back to back with no framing; `json.JSONDecoder.raw_decode`
finds where each ends. The server's `echo` keepalives are answered; `update` notifications of a
monitor go to that monitor's queue. `transact` checks every result element, including the
trailing commit error, and raises `OvsdbError` naming the failing operation.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import time
import uuid as uuid_mod
from collections.abc import Sequence
from typing import Any

from op_dbus.errors import BackendError, OpDbusError, OperationTimeout, PermissionDenied, ServiceUnavailable

DEFAULT_SOCKET = "/var/run/openvswitch/db.sock"
DB = "Open_vSwitch"
MAX_MESSAGE = 64 << 20  # characters; a whole Open_vSwitch database dump of a large host is a few MB
# raw_decode reports a message cut short at its end, or (for a string) where the string starts; a token
# that JSON may still complete (`-Infinit`, `\u12`) starts at most this many characters before the end.
_TAIL = 10

UNREACHABLE_HINT = (
    "is Open vSwitch running? Check `systemctl status openvswitch-switch` (start it with "
    "`systemctl start openvswitch-switch`) and that the socket exists: `ls -la {path}`; "
    "another socket can be given with the `ovsdb` setting"
)


class OvsdbError(BackendError):
    """ovsdb-server refused a request or a transaction; `code` is its error string (e.g. `constraint violation`)."""


def oset(values: Sequence[Any]) -> list[Any]:
    """An OVSDB set value."""
    return ["set", list(values)]


def omap(mapping: dict[str, str]) -> list[Any]:
    return ["map", [[k, v] for k, v in mapping.items()]]


def named(name: str) -> list[str]:
    return ["named-uuid", name]


def uuid(value: str) -> list[str]:
    return ["uuid", value]


def set_values(value: Any) -> list[Any]:
    """A column value that may be an atom or a `["set", [...]]` as a plain list."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def map_values(value: Any) -> dict[Any, Any]:
    if isinstance(value, list) and value and value[0] == "map":
        return {k: v for k, v in value[1]}
    return {}


def optional(value: Any) -> Any:
    """An optional column (a set of at most one): the atom, or None for the empty set."""
    values = set_values(value)
    return values[0] if values else None


class Framer:
    """Splits the byte stream from ovsdb-server into JSON-RPC messages (objects written back to back).

    Raises OvsdbError for bytes that can never become a message: invalid UTF-8 or JSON, a value that is
    not an object, nesting or numbers beyond what the parser takes, a message above MAX_MESSAGE.
    """

    def __init__(self, peer: str = "ovsdb-server") -> None:
        self.peer = peer
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._buf = ""

    def _bad(self, what: str) -> OvsdbError:
        return OvsdbError(f"{self.peer} sent {what}; the connection is dropped", code="protocol error")

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        try:
            self._buf += self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise self._bad(f"bytes that are not UTF-8 ({exc.reason})") from None
        out: list[dict[str, Any]] = []
        buf = self._buf.lstrip()
        while buf:
            if buf[0] != "{":
                raise self._bad(f"a message that is not a JSON object (it starts with {buf[:20]!r})")
            try:
                msg, end = self._decoder.raw_decode(buf)
            except json.JSONDecodeError as exc:
                if exc.pos < len(buf) - _TAIL and not exc.msg.startswith("Unterminated string"):
                    raise self._bad(f"invalid JSON ({exc.msg} at character {exc.pos})") from None
                break  # cut short: wait for the rest
            except RecursionError:
                raise self._bad("JSON nested too deeply") from None
            except ValueError as exc:  # an integer beyond the interpreter's digit limit
                raise self._bad(f"a value the JSON parser refuses ({exc})") from None
            out.append(msg)
            buf = buf[end:].lstrip()
        if len(buf) > MAX_MESSAGE:
            raise self._bad(f"a message larger than {MAX_MESSAGE >> 20} MiB")
        self._buf = buf
        return out


class Ovsdb:
    """One connection to ovsdb-server. Use `await Ovsdb.connect(path)`; `close()` when done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._monitors: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        self._closed = False

    @classmethod
    async def connect(cls, path: str | None = None, timeout: float = 5.0) -> Ovsdb:
        path = path or DEFAULT_SOCKET
        if path.startswith("unix:"):
            path = path[5:]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=1 << 24), timeout)
        except PermissionError as exc:
            raise PermissionDenied(f"OVSDB connection failed: {path}: permission denied",
                                   hint="run op-dbus as root") from exc
        except (OSError, TimeoutError) as exc:
            raise ServiceUnavailable(f"OVSDB connection failed: cannot connect to {path}: {exc.strerror or exc}",
                                     hint=UNREACHABLE_HINT.format(path=path)) from exc
        return cls(reader, writer, path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _read_loop(self) -> None:
        framer = Framer(f"ovsdb-server at {self.path}")
        error: BaseException = ServiceUnavailable(f"OVSDB connection to {self.path} closed by the server",
                                                  hint=UNREACHABLE_HINT.format(path=self.path))
        try:
            while True:
                chunk = await self._reader.read(1 << 20)
                if not chunk:
                    break
                for msg in framer.feed(chunk):
                    try:
                        self._dispatch(msg)
                    except (LookupError, TypeError, ValueError, AttributeError) as exc:
                        raise framer._bad(f"a malformed JSON-RPC message ({type(exc).__name__}: {exc})") from None
        except asyncio.CancelledError:
            raise
        except OpDbusError as exc:
            error = exc
        except Exception as exc:
            error = ServiceUnavailable(f"OVSDB connection to {self.path} failed: {exc}",
                                       hint=UNREACHABLE_HINT.format(path=self.path))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        for queue in self._monitors.values():
            queue.put_nowait(None)  # type: ignore[arg-type]  # tells a monitor's reader that the connection is gone

    def _dispatch(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method == "echo":
            self._send({"id": msg.get("id"), "result": msg.get("params", []), "error": None})
            return
        if method == "update":
            params = msg.get("params", [])
            queue = self._monitors.get(json.dumps(params[0]) if params else "")
            if queue is not None:
                if not isinstance(params[1], dict):
                    raise TypeError("a monitor update that is not an object")
                queue.put_nowait(params[1])
            return
        rid = msg.get("id")
        fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None or fut.done():
            return
        if msg.get("error") is not None:
            err = str(msg["error"])[:500]
            fut.set_exception(OvsdbError(f"OVSDB request failed: {err}", code=err))
        else:
            fut.set_result(msg.get("result"))

    def _send(self, obj: dict[str, Any]) -> None:
        self._writer.write(json.dumps(obj, separators=(",", ":")).encode())

    async def call(self, method: str, params: list[Any], timeout: float = 30.0) -> Any:
        if self._closed:
            raise ServiceUnavailable("OVSDB connection is closed")
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._send({"method": method, "params": params, "id": rid})
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            self._pending.pop(rid, None)
            raise OperationTimeout(f"OVSDB {method} got no answer in {timeout:g} s from {self.path}") from exc

    async def transact(self, ops: list[dict[str, Any]], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Run `ops` atomically; raise OvsdbError if any operation or the commit failed."""
        result = await self.call("transact", [DB, *ops], timeout)
        if not isinstance(result, list) or not all(r is None or isinstance(r, dict) for r in result):
            raise OvsdbError(f"OVSDB transact: {self.path} answered with a malformed result", code="protocol error")
        for i, res in enumerate(result):
            if res is not None and "error" in res:
                where = f"operation {i} ({ops[i].get('op')} {ops[i].get('table', '')})" if i < len(ops) else "commit"
                detail = res.get("details", "")
                raise OvsdbError(f"OVSDB transaction failed at {where}: {res['error']}" + (f": {detail}" if detail else ""),
                                 code=res["error"])
        return result

    async def select(self, table: str, columns: list[str] | None = None,
                     where: list[Any] | None = None) -> list[dict[str, Any]]:
        op: dict[str, Any] = {"op": "select", "table": table, "where": where or []}
        if columns is not None:
            op["columns"] = columns
        result = await self.transact([op])
        rows = result[0].get("rows") if result and result[0] is not None else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise OvsdbError(f"OVSDB select {table}: {self.path} answered without rows", code="protocol error")
        return rows

    async def monitor(self, requests: dict[str, Any]) -> tuple[Any, dict[str, Any], asyncio.Queue[dict[str, Any]]]:
        """Start a monitor; returns its id, the initial table updates and the queue of later ones.

        The queue yields None once the connection is lost.
        """
        mon_id = str(uuid_mod.uuid4())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._monitors[json.dumps(mon_id)] = queue
        initial = await self.call("monitor", [DB, mon_id, requests])
        return mon_id, initial, queue

    async def monitor_cancel(self, mon_id: str) -> None:
        self._monitors.pop(json.dumps(mon_id), None)
        with contextlib.suppress(OvsdbError):
            await self.call("monitor_cancel", [mon_id])

    async def wait_cur_cfg(self, target: int, timeout: float) -> None:
        """Wait until ovs-vswitchd reports it has applied configuration `target` (cur_cfg >= target)."""
        mon_id, initial, queue = await self.monitor({"Open_vSwitch": {"columns": ["cur_cfg"]}})
        deadline = time.monotonic() + timeout
        try:
            rows = initial.get("Open_vSwitch", {})
            if any(r.get("new", {}).get("cur_cfg", -1) >= target for r in rows.values()):
                return
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                update = await asyncio.wait_for(queue.get(), left)
                rows = update.get("Open_vSwitch", {})
                if any((r.get("new") or {}).get("cur_cfg", -1) >= target for r in rows.values()):
                    return
        except TimeoutError as exc:
            raise OperationTimeout(
                f"ovs-vswitchd did not apply the OVSDB change within {timeout:g} s (waiting for cur_cfg {target})",
                hint="is ovs-vswitchd running? Check `systemctl status openvswitch-switch`; "
                     "the database was changed but the switch has not caught up") from exc
        finally:
            await self.monitor_cancel(mon_id)

    async def transact_and_wait(self, ops: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Like ovs-vsctl: bump next_cfg in the same transaction, then wait for vswitchd to reach it."""
        ops = [*ops,
               {"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]},
               {"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}]
        result = await self.transact(ops, timeout)
        target = result[len(ops) - 1]["rows"][0]["next_cfg"]
        await self.wait_cur_cfg(target, timeout)
        return result[:len(ops) - 2]
