"""Bodies of the commands that read the audit log; kept apart so `op-dbus --help` never imports them."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from op_dbus.cli.main import Options, _emit_json, _run
from op_dbus.errors import ExitCode, InvalidInput


def recover(opts: Options) -> None:
    """Finish a transaction an op-dbus that died left behind, before reading anything (said on stderr)."""
    from op_dbus.engine import Engine

    async def go() -> Any:
        async with opts.context() as ctx:
            return await Engine(ctx, ledger=opts.ledger).recover()

    outcome = _run(go())
    if outcome:
        click.echo(f"op-dbus: recovered an interrupted transaction: {outcome}", err=True)


def verify(opts: Options, mode: str) -> int:
    recover(opts)
    if mode == "full":
        with opts.ledger() as ledger:
            report = ledger.verify_full()
        if opts.json:
            _emit_json(dataclasses.asdict(report))
        elif report.ok:
            click.echo(f"ok: {report.size} block(s) verified: hashes, links, Merkle root and signatures")
        else:
            click.secho(f"FAILED at block {report.first_bad}", fg="red", bold=True, err=False)
            for p in report.problems:
                click.echo(f"  {p}")
        return ExitCode.OK if report.ok else ExitCode.DIFFERENCE
    return verify_current(opts)


def verify_current(opts: Options) -> int:
    from op_dbus.engine import Engine, document_from_snapshot

    with opts.ledger() as ledger:
        head = ledger.head()
        if head is None:
            raise InvalidInput("the audit log is empty: nothing to verify against",
                               hint="run `op-dbus apply FILE` first; it records the state to verify against")
        block = ledger.get(head.index)
    if block.state is None:
        raise InvalidInput(f"block {head.index}'s state snapshot was compacted away; cannot compare against it")
    doc = document_from_snapshot(block.state, f"block {head.index}")

    async def go() -> Any:
        async with opts.context() as ctx:
            return await Engine(ctx).drift(doc)

    drift, _current = _run(go())
    if opts.json:
        _emit_json({"ok": not drift, "block": head.index, "state_hash": head.state_hash,
                    "drift": [c.to_record() for c in drift]})
    elif not drift:
        click.echo(f"ok: the live system matches block {head.index} (state {head.state_hash[:16]})")
    else:
        from op_dbus.cli.render import change_line

        click.secho(f"DRIFT: {len(drift)} difference(s) from block {head.index}:", fg="red", bold=True)
        for c in drift:
            # a drift is reported as "recorded -> live": the change that would restore the record, reversed
            rec = c.to_record()
            rec["before"], rec["after"] = rec["after"], rec["before"]
            rec["action"] = "drifted"
            click.echo("  " + change_line(rec))
        click.echo("re-apply the state file, or `op-dbus apply` the recorded state, to converge again")
    return ExitCode.DIFFERENCE if drift else ExitCode.OK


def blockchain_list(opts: Options, limit: int | None) -> int:
    recover(opts)
    with opts.ledger() as ledger:
        size = len(ledger)
        start = max(0, size - limit) if limit else 0
        headers = ledger.headers(start)
    if opts.json:
        _emit_json([h.to_dict() for h in headers])
        return ExitCode.OK
    if not headers:
        click.echo("the audit log is empty")
        return ExitCode.OK
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("block", "time", "kind", "prev", "state", "changes"):
        table.add_column(col, no_wrap=col != "changes")
    for h in headers:
        table.add_row(str(h.index), h.time, h.kind, h.prev[:12], h.state_hash[:12], h.summary)
    import sys

    # Piped output keeps whole lines (a script or a pager wraps); a terminal gets its own width.
    Console(width=None if sys.stdout.isatty() else 250).print(table)
    return ExitCode.OK


def blockchain_show(opts: Options, index: int) -> int:
    recover(opts)
    with opts.ledger() as ledger:
        if index >= len(ledger):
            raise InvalidInput(f"no block {index}: the log has {len(ledger)} block(s) (0..{len(ledger) - 1})")
        block = ledger.get(index)
    body = {**block.header.to_dict(), "changes": block.changes, "state": block.state}
    if opts.json:
        _emit_json(body)
        return ExitCode.OK
    from op_dbus.cli.render import change_line

    h = block.header
    click.secho(f"block {h.index}  ({h.kind})", bold=True)
    for key in ("time", "prev", "state_hash", "summary"):
        click.echo(f"  {key:<11} {getattr(h, key)}")
    click.echo(f"  {'actor':<11} {h.actor}")
    click.echo(f"  changes ({len(block.changes)}):")
    for rec in block.changes:
        click.echo(f"    {rec['plugin']}: " + change_line(rec))
    if block.state is None:
        click.echo("  state: compacted (only its hash is kept)")
    else:
        import json

        click.echo("  state:")
        for line in json.dumps(block.state, indent=2, sort_keys=True).splitlines():
            click.echo("    " + line)
    return ExitCode.OK


def status(opts: Options) -> int:
    from op_dbus.agent.status import read_status

    st = read_status(opts.state_dir)
    if opts.json:
        _emit_json(st or {"running": False})
        return ExitCode.OK if st and st["running"] else ExitCode.INTERNAL
    if st is None:
        click.echo(f"op-dbus agent: not running (no status in {opts.state_dir})")
        return ExitCode.INTERNAL
    state = "running" if st["running"] else f"not running (last pid {st.get('pid')})"
    click.secho(f"op-dbus agent: {state}", bold=True, fg="green" if st["running"] else "red")
    mode = st.get("mode", "?") + (" (read-only)" if st.get("read_only") else "")
    rows = [
        ("mode", mode),
        ("state file", st.get("state_file")),
        ("audit log", "yes" if st.get("log") else "no (journal only)"),
        ("since", st.get("started")),
        ("watching", ", ".join(f"{k}: {v}" for k, v in (st.get("watching") or {}).items()) or "-"),
    ]
    last = st.get("last_reconcile")
    if last:
        rows.append(("last reconcile", f"{last['time']} ({last['reason']}, {last['duration_ms']} ms)"))
    counts = st.get("counts") or {}
    rows.append(("open drift", str(st.get("open_drift", 0))))
    rows.append(("counts", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"))
    drift = st.get("last_drift")
    if drift:
        where = f" (block {drift['block']})" if drift.get("block") is not None else ""
        rows.append(("last drift", f"{drift['time']}{where}: {drift['summary']}"))
    if st.get("adopted_blocks"):
        rows.append(("adopted", ", ".join(map(str, st["adopted_blocks"]))))
    for gap in st.get("gaps") or []:
        who = f"{gap['plugin']}: " if gap.get("plugin") else ""
        tries = f" ({gap['attempts']} attempts)" if gap.get("attempts", 1) > 1 else ""
        rows.append(("gap", f"{gap['since']} .. {gap.get('until', 'now')}: {who}{gap['error']}{tries}"))
    if st.get("last_error"):
        rows.append(("last error", st["last_error"]))
    for key, value in rows:
        click.echo(f"  {key:<15} {value}")
    return ExitCode.OK if st["running"] else ExitCode.INTERNAL
