"""Bodies of the commands that read the audit log; kept apart so `op-dbus --help` never imports them."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from op_dbus.cli.common import Options, emit_json, read_log, run, with_engine
from op_dbus.errors import ExitCode, InvalidInput


def verify(opts: Options, mode: str) -> int:
    if mode == "full":
        report = read_log(opts, lambda ledger: ledger.verify_full())
        if opts.json:
            emit_json(dataclasses.asdict(report))
        elif report.ok:
            click.echo(f"ok: {report.size} block(s) verified: hashes, links, Merkle root and signatures")
        else:
            where = f"at block {report.first_bad}" if report.first_bad is not None else "(not tied to one block)"
            click.secho(f"FAILED {where}", fg="red", bold=True, err=False)
            for p in report.problems:
                click.echo(f"  {p}")
        return ExitCode.OK if report.ok else ExitCode.DIFFERENCE
    return verify_current(opts)


def verify_current(opts: Options) -> int:
    report = with_engine(opts, lambda engine: engine.verify_current(), recover=True)
    if report.error is not None:
        if opts.json:
            emit_json({"ok": False, "block": report.block, "error": report.error})
        else:
            click.secho(f"FAILED: block {report.block}, the last block, is not covered by a validly signed "
                        f"checkpoint: {report.error.removeprefix('the last block does not verify: ')}",
                        fg="red", bold=True)
            click.echo("run `op-dbus verify --full` to find the first bad block")
        return ExitCode.DIFFERENCE
    drift = report.drift
    if opts.json:
        from op_dbus.cli.render import records

        emit_json({"ok": not drift, "block": report.block, "state_hash": report.state_hash, "drift": records(drift)})
    elif not drift:
        click.echo(f"ok: the live system matches block {report.block} (state {report.state_hash[:16]})")
    else:
        from op_dbus.cli.render import change_line

        click.secho(f"DRIFT: {len(drift)} difference(s) from block {report.block}:", fg="red", bold=True)
        for c in drift:
            # a drift is reported as "recorded -> live": the change that would restore the record, reversed
            rec = c.to_record()
            rec["before"], rec["after"] = rec["after"], rec["before"]
            rec["action"] = "drifted"
            click.echo("  " + change_line(rec))
        click.echo("re-apply the state file, or `op-dbus apply` the recorded state, to converge again")
    return ExitCode.DIFFERENCE if drift else ExitCode.OK


def blockchain_list(opts: Options, limit: int | None) -> int:
    def read(ledger: Any) -> Any:
        size = len(ledger)
        return ledger.headers(max(0, size - limit) if limit else 0)

    headers = read_log(opts, read)
    if opts.json:
        emit_json([h.to_dict() for h in headers])
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
    def read(ledger: Any) -> Any:
        if index >= len(ledger):
            raise InvalidInput(f"no block {index}: the log has {len(ledger)} block(s) (0..{len(ledger) - 1})")
        return ledger.get(index)

    block = read_log(opts, read)
    body = {**block.header.to_dict(), "changes": block.changes, "state": block.state}
    if opts.json:
        emit_json(body)
        return ExitCode.OK
    from op_dbus.cli.render import change_line

    h = block.header
    click.secho(f"block {h.index}  ({h.kind})", bold=True)
    for key in ("time", "prev", "state_hash", "summary"):
        click.echo(f"  {key:<11} {getattr(h, key)}")
    click.echo(f"  {'actor':<11} {h.actor}")
    if block.changes is None:
        click.echo(f"  changes ({h.change_count}): archived (only their hash is kept)")
    else:
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


def discover_all(opts: Options, *, activate: bool, timeout: float, concurrency: int) -> int:
    """`query --discover-all`: the whole bus, with a progress line on a terminal's stderr."""
    import sys

    from op_dbus.discovery import discover_bus

    def go(progress: Any) -> Any:
        return discover_bus(opts.bus, activate=activate, timeout=timeout, concurrency=concurrency, progress=progress)

    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("discovering"), BarColumn(), MofNCompleteColumn(), TextColumn("services"),
                      TextColumn("{task.fields[objects]} objects"), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("walk", total=None, objects=0)

            def progress(d: Any) -> None:
                bar.update(task, total=len(d.services), completed=d.services_done, objects=d.objects)

            result = run(go(progress))
    else:
        result = run(go(None))
    if opts.json:
        if sys.stdout.isatty():
            emit_json(result.to_dict())
        else:
            # tens of thousands of properties: indented JSON would take Python's slow encoder path
            import json

            click.echo(json.dumps(result.to_dict(), separators=(",", ":"), default=str))
        return ExitCode.OK
    for name, svc in sorted(result.services.items()):
        who = f" pid {svc.pid}" if svc.pid is not None else ""
        props = sum(len(i) for o in svc.objects.values() for i in o.values())
        click.secho(f"{name}  [{svc.status}]{who}", bold=True, fg=None if svc.status in ("ok", "activatable") else "red")
        if svc.objects:
            click.echo(f"  {len(svc.objects)} object(s), {props} propert(ies)")
        for path, interfaces in sorted(svc.objects.items())[:20]:
            click.echo(f"  {path}  " + ", ".join(sorted(interfaces)))
        if len(svc.objects) > 20:
            click.echo(f"  ... and {len(svc.objects) - 20} more objects (-o json lists everything)")
        for err in svc.errors[:3]:
            click.echo(f"  ! {err}")
    s = result.to_dict()["summary"]
    rate = s["objects"] / s["seconds"] if s["seconds"] else 0.0
    click.echo(f"{s['services']} services ({', '.join(f'{k} {v}' for k, v in s['by_status'].items())}); "
               f"{s['objects']} objects, {s['interfaces']} interfaces, {s['properties']} properties "
               f"in {s['seconds']:.2f} s ({rate:.0f} objects/s)")
    return ExitCode.OK


def rollback(opts: Options, index: int, dry_run: bool, confirm_timeout: float | None,
             secrets_file: str | None = None) -> int:
    from op_dbus.state import load_document

    secrets = load_document(secrets_file) if secrets_file is not None else None
    outcome = with_engine(opts, lambda engine: engine.rollback_to(index, dry_run=dry_run, confirm_timeout=confirm_timeout,
                                                                  secrets=secrets), recover=True)
    proof, result = outcome.proof, outcome.result
    block = proof.block
    changes = result.plan.all_changes if dry_run else result.applied
    if opts.json:
        from op_dbus.cli.render import records

        emit_json({"to_block": index, "proof": proof.to_dict(), "dry_run": dry_run, "changes": records(changes),
                    "block": result.block.to_dict() if result.block is not None else None})
        return ExitCode.OK
    from op_dbus.cli.render import print_changes

    click.echo(f"block {index} is in the signed log (tree size {proof.size}, proof of {len(proof.proof)} hashes); "
               f"its state hashes to {block.header.state_hash[:16]}")
    print_changes(changes, empty=f"nothing to change: the system already matches block {index}")
    if dry_run:
        click.echo(f"dry run: {len(changes)} change(s) would return the system to block {index}")
    elif result.block is not None:
        click.echo(f"rolled back to block {index}; recorded block {result.block.index}")
    return ExitCode.OK


def status(opts: Options) -> int:
    from op_dbus.agent.status import read_status

    st = read_status(opts.state_dir)
    if opts.json:
        emit_json(st or {"running": False})
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
    git = st.get("git")
    if git:
        last_fetch = git.get("last_fetch") or {}
        rows.append(("git commit", f"{(git.get('kept') or 'none yet')[:12]} (last fetch "
                                   f"{last_fetch.get('time', 'never')}, every {git.get('interval')} s)"))
        if git.get("gap"):
            g = git["gap"]
            rows.append(("git gap", f"{g['since']} .. now: {g['error']} ({g['attempts']} attempts)"))
        if git.get("waiting"):
            w = git["waiting"]
            rows.append(("git waiting", f"{w['commit'][:12]}: {w['reason']}"))
        for r in git.get("refused") or []:
            rows.append(("git refused", r["reason"]))
    for gap in st.get("gaps") or []:
        who = f"{gap['plugin']}: " if gap.get("plugin") else ""
        tries = f" ({gap['attempts']} attempts)" if gap.get("attempts", 1) > 1 else ""
        rows.append(("gap", f"{gap['since']} .. {gap.get('until', 'now')}: {who}{gap['error']}{tries}"))
    if st.get("last_error"):
        rows.append(("last error", st["last_error"]))
    for key, value in rows:
        click.echo(f"  {key:<15} {value}")
    return ExitCode.OK if st["running"] else ExitCode.INTERNAL
