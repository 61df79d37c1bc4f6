"""A small HTTP/1.1 client over a unix socket (keep-alive pool, chunked replies, streamed uploads) for engine APIs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from op_dbus.errors import BackendError, OperationTimeout, PermissionDenied, ServiceUnavailable

MAX_IDLE = 16


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def json_lines(self) -> list[Any]:
        """A reply that is a sequence of JSON documents (event and progress streams)."""
        decoder = json.JSONDecoder()
        text, pos = self.body.decode(), 0
        out: list[Any] = []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return out
            value, pos = decoder.raw_decode(text, pos)
            out.append(value)


class NotFound(BackendError):
    """The engine answered 404: no such container or image."""


class Conflict(BackendError):
    """The engine answered 409: a name is taken, or the object is in the wrong state."""


def query_string(params: dict[str, Any] | None) -> str:
    if not params:
        return ""
    # dicts are JSON (filters), lists repeat the key (podman's `changes`), booleans are lower case
    pairs: list[tuple[str, Any]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, dict):
            pairs.append((key, json.dumps(value)))
        elif isinstance(value, list):
            pairs += [(key, item) for item in value]
        elif isinstance(value, bool):
            pairs.append((key, str(value).lower()))
        else:
            pairs.append((key, value))
    return "?" + urlencode(pairs, quote_via=quote)


class UnixHTTP:
    """Requests to an HTTP server on a unix socket; idle connections are kept and reused."""

    def __init__(self, path: str, *, service: str, hint: str, timeout: float = 90.0) -> None:
        self.path = path
        self.service = service  # "podman", "docker": named in errors
        self.hint = hint  # how to start the server
        self.timeout = timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        try:
            return await asyncio.wait_for(asyncio.open_unix_connection(self.path, limit=2**20), 10)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ServiceUnavailable(f"{self.service} is not running: cannot connect to unix://{self.path} "
                                     f"({e.strerror or e})", hint=self.hint) from None
        except PermissionError:
            raise PermissionDenied(f"permission denied opening unix://{self.path}", hint="run op-dbus as root") from None
        except TimeoutError:
            raise OperationTimeout(f"timed out connecting to {self.service} at unix://{self.path}") from None

    async def request(self, method: str, target: str, *, params: dict[str, Any] | None = None, json_body: Any = None,
                      body: bytes | AsyncIterator[bytes] | None = None, content_type: str | None = None,
                      timeout: float | None = None, ok: tuple[int, ...] = ()) -> Response:
        """Send one request and read the whole reply; 4xx/5xx become the project's errors unless listed in `ok`."""
        url = target + query_string(params)
        headers = {"Host": "localhost", "User-Agent": "op-dbus"}
        payload: bytes | AsyncIterator[bytes] | None = body
        if json_body is not None:
            payload = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        if isinstance(payload, bytes):
            headers["Content-Length"] = str(len(payload))
        elif payload is not None:
            headers["Transfer-Encoding"] = "chunked"
        else:
            headers["Content-Length"] = "0"
        what = f"{self.service}: {method} {target}"
        for attempt in (0, 1):
            reused = bool(self._idle)
            reader, writer = await self._connect()
            try:
                async with asyncio.timeout(timeout or self.timeout):
                    head = f"{method} {url} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                    writer.write(head.encode())
                    if isinstance(payload, bytes):
                        writer.write(payload)
                    elif payload is not None:
                        async for chunk in payload:
                            if chunk:
                                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                                await writer.drain()
                        writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    response, keep = await self._read(reader, method)
            except TimeoutError:
                writer.close()
                raise OperationTimeout(f"{what}: no reply within {timeout or self.timeout:.0f} s") from None
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                writer.close()
                # a kept-alive connection the server closed meanwhile: retry once on a fresh one
                if reused and attempt == 0 and not (payload is not None and not isinstance(payload, bytes)):
                    continue
                raise ServiceUnavailable(f"{what}: connection lost ({type(e).__name__})", hint=self.hint) from None
            except BaseException:
                writer.close()
                raise
            if keep and len(self._idle) < MAX_IDLE:
                self._idle.append((reader, writer))
            else:
                writer.close()
            break
        if response.status >= 400 and response.status not in ok:
            raise self._error(response, what)
        return response

    async def _read(self, reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        keep = headers.get("connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b""), keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            return Response(status, headers, b"".join(chunks)), keep
        if "content-length" in headers:
            return Response(status, headers, await reader.readexactly(int(headers["content-length"]))), keep
        return Response(status, headers, await reader.read()), False

    def _error(self, response: Response, what: str) -> BackendError:
        message = response.body.decode(errors="replace").strip()
        with contextlib.suppress(ValueError, AttributeError):
            data = response.json()
            message = data.get("message") or data.get("cause") or message
        code = str(response.status)
        if response.status == 404:
            return NotFound(f"{what}: {message}", code=code)
        if response.status == 409:
            return Conflict(f"{what}: {message}", code=code)
        return BackendError(f"{what}: HTTP {response.status}: {message}", code=code)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
