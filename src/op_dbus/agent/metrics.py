"""Counters and latency histograms, served in the Prometheus text format on a loopback HTTP port (optional).

The format is a few lines of text, so it is written here rather than pulled in as a dependency.
"""

from __future__ import annotations

import asyncio
import ipaddress

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

    async def serve(self, listen: str) -> asyncio.AbstractServer:
        host, port = parse_listen(listen)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await asyncio.wait_for(reader.readline(), 5)
                while (await asyncio.wait_for(reader.readline(), 5)).strip():
                    pass  # headers are not needed
                ok = request.split(b" ")[1:2] in ([b"/metrics"], [b"/"])
                body = self.render().encode() if ok else b"not found\n"
                head = "200 OK" if ok else "404 Not Found"
                writer.write(f"HTTP/1.1 {head}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                await writer.drain()
            except (TimeoutError, OSError, IndexError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(handle, host, port)


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (or a bare PORT, on 127.0.0.1); only loopback addresses are accepted."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise InvalidInput(f"--metrics {listen!r}: expected HOST:PORT") from None
    if not loopback:
        raise InvalidInput(f"--metrics {listen!r}: the metrics endpoint listens on loopback only (127.0.0.1, ::1)")
    return host, port


