"""Counters and latency histograms, served in the Prometheus text format on a loopback HTTP port (optional).

The format is a few lines of text, so it is written here rather than pulled in as a dependency.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable

from op_dbus.errors import InvalidInput

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HELP = {
    "events": "change events received from the watched sources",
    "drift": "differences from the declared state detected",
    "applies": "repairs applied in enforce mode",
    "failures": "repairs that failed (and were rolled back)",
    "reconciles": "full reconciliations (start, reload, reconnect, periodic)",
    "reconnects": "times a watched source was lost",
    "reloads": "state file reloads",
    "deferred": "checks deferred because another op-dbus held the state directory",
    "adopted": "blocks of a manual apply adopted",
}


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(BUCKETS, self.counts, strict=True)]
        return [*out, f'{name}_bucket{{le="+Inf"}} {self.total}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.total}"]


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[tuple[str, str], int] = {}
        self.detection = Histogram()
        self.repair = Histogram()

    def inc(self, name: str, plugin: str = "") -> None:
        self._counters[(name, plugin)] = self._counters.get((name, plugin), 0) + 1

    def observe_latency(self, seconds: float) -> None:
        self.detection.observe(seconds)

    def observe_repair(self, seconds: float) -> None:
        self.repair.observe(seconds)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (name, _plugin), value in self._counters.items():
            out[name] = out.get(name, 0) + value
        return out

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({n for n, _ in self._counters} | set(HELP))
        for name in names:
            metric = f"opdbus_agent_{name}_total"
            lines += [f"# HELP {metric} {HELP.get(name, name)}", f"# TYPE {metric} counter"]
            series = {p: v for (n, p), v in self._counters.items() if n == name}
            if not series:
                lines.append(f"{metric} 0")
            for plugin, value in sorted(series.items()):
                lines.append(f'{metric}{{plugin="{plugin}"}} {value}' if plugin else f"{metric} {value}")
        for name, hist, text in (("detection", self.detection, "seconds from a change event to its drift record"),
                                 ("repair", self.repair, "seconds from a change event to its repair")):
            metric = f"opdbus_agent_{name}_latency_seconds"
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} histogram", *hist.lines(metric)]
        return "\n".join(lines) + "\n"

    async def serve(self, listen: str) -> MetricsServer:
        host, port = parse_listen(listen)
        server = MetricsServer(self.render)
        try:
            server.listen(host, port)
        except OSError as exc:
            raise InvalidInput(f"--metrics {listen!r}: cannot listen there ({exc.strerror})",
                               hint="choose a free loopback port") from None
        return server


# Limits of the metrics endpoint: a scraper sends one small request and reads a few kilobytes, so anything slower,
# larger or more numerous is cut off rather than allowed to hold the agent's file descriptors.
MAX_CONNECTIONS = 16  # at once; more wait in the kernel's accept queue (and beyond it are refused by the kernel)
REQUEST_DEADLINE = 5.0  # seconds from accept to the end of the response, whatever the client does
MAX_HEADER_BYTES = 8192  # the request line and headers together
FD_RESERVE = 64  # descriptors kept free below RLIMIT_NOFILE for the agent's own sources (netlink, D-Bus, inotify)
BACKLOG = 16


def free_descriptors() -> int:
    """How many more files this process may open (its soft RLIMIT_NOFILE less those open now)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        return soft
    return soft - used


class MetricsServer:
    """The HTTP endpoint: its own accept loop, so that a connection is taken only when a slot is free and the
    process has file descriptors to spare; asyncio's server would accept everything the kernel queued."""

    def __init__(self, render: Callable[[], str]) -> None:
        self.render = render
        self.sockets: list[socket.socket] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._acceptor: asyncio.Task[None] | None = None

    def listen(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sockets = [sock]
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(sock), name="metrics")

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            while free_descriptors() < FD_RESERVE:
                await asyncio.sleep(0.5)  # leave the queue to the kernel until the agent has descriptors to spare
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                self._slots.release()
                await asyncio.sleep(0.5)  # e.g. EMFILE caused elsewhere: retry later, never in a busy loop
                continue
            task = loop.create_task(self._serve_one(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_one(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            async with asyncio.timeout(REQUEST_DEADLINE):
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    chunk = await loop.sock_recv(conn, 2048)
                    if not chunk:
                        return
                    head += chunk
                    if len(head) > MAX_HEADER_BYTES:
                        await loop.sock_sendall(conn, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                                      b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                        # read the rest (within the deadline) so that closing does not reset the answer away
                        conn.shutdown(socket.SHUT_WR)
                        while await loop.sock_recv(conn, 65536):
                            pass
                        return
                request = head.split(b"\n", 1)[0]
                ok = request.split(b" ")[1:2] in ([b"/metrics"], [b"/"])
                body = self.render().encode() if ok else b"not found\n"
                status = "200 OK" if ok else "404 Not Found"
                await loop.sock_sendall(conn, f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                                              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                                        + body)
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()
            self._slots.release()

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
        for task in list(self._tasks):
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or a bare PORT, on 127.0.0.1); only loopback addresses are accepted."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise InvalidInput(f"--metrics {listen!r}: expected HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--metrics {listen!r}: port {port} is out of range (1-65535)")
    if not loopback:
        raise InvalidInput(f"--metrics {listen!r}: the metrics endpoint listens on loopback only (127.0.0.1, ::1)")
    return host, port


