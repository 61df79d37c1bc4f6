"""What every command shares: the global options, JSON output, and running the engine in one event loop."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from op_dbus.engine import Engine
    from op_dbus.ledger import Ledger
    from op_dbus.plugin import Context

T = TypeVar("T")


class Options:
    """Global options, shared by every command through click's context object."""

    def __init__(self, bus: str | None, state_dir: str, job_timeout: float, output: str,
                 netns: str | None = None, ovsdb: str | None = None) -> None:
        self.bus = bus
        self.netns = netns
        self.ovsdb = ovsdb
        self.state_dir = Path(state_dir)
        self.job_timeout = job_timeout
        self.output = output

    @property
    def json(self) -> bool:
        return self.output == "json"

    def context(self, *, read_only_facts: bool = False) -> Context:
        from op_dbus.plugin import Context, Settings

        return Context(Settings(bus_address=self.bus, state_dir=self.state_dir, job_timeout=self.job_timeout,
                                netns=self.netns, ovsdb=self.ovsdb, read_only_facts=read_only_facts))

    def ledger(self) -> Ledger:
        from op_dbus.ledger import Ledger

        return Ledger.open(self.state_dir)


def output_option(f: Any) -> Any:
    """`-o json|text` accepted after the command too (`op-dbus diff x.json -o json`)."""

    def set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.find_root().obj.output = value

    return click.option("-o", "--output", type=click.Choice(["text", "json"]), expose_value=False,
                        callback=set_output, is_eager=False, help="Output format (text, or json for scripts).")(f)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The command's one event loop."""
    import asyncio  # here: `op-dbus --help` does not load it

    return asyncio.run(coro)


def with_engine(opts: Options, body: Callable[[Engine], Awaitable[T]], *, log: bool = True,
                recover: bool = False, read_only_facts: bool = False) -> T:
    """Run `body` with an engine (keeping the audit log unless `log` is False), in the command's one event loop.

    `recover` first finishes a transaction an op-dbus that died left behind (said on stderr), as every command
    that reads the log does.
    """
    from op_dbus.engine import Engine

    async def go() -> T:
        async with opts.context(read_only_facts=read_only_facts) as ctx:
            engine = Engine(ctx, ledger=opts.ledger if log else None)
            if recover:
                outcome = await engine.recover()
                if outcome:
                    click.echo(f"op-dbus: recovered an interrupted transaction: {outcome}", err=True)
            return await body(engine)

    return run(go())


def read_log(opts: Options, read: Callable[[Ledger], T]) -> T:
    """Finish an interrupted transaction, then `read` the audit log (opened and closed around it)."""

    async def body(_engine: Engine) -> T:
        with opts.ledger() as ledger:
            return read(ledger)

    return with_engine(opts, body, recover=True)


def maintain_log(opts: Options, work: Callable[[Ledger], T]) -> T:
    """As read_log, holding the state-dir lock (5 s at most, else exit 5): records are not dropped in the middle
    of an apply, and a change awaiting confirmation keeps its head block."""

    async def body(engine: Engine) -> T:
        with engine.hold(5.0), opts.ledger() as ledger:
            return work(ledger)

    return with_engine(opts, body, recover=True)
