"""Bodies of the auditing commands: export, prove, archive, compact and search of the audit log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from op_dbus.cli.common import Options, emit_json, maintain_log, read_log, with_engine
from op_dbus.errors import ExitCode, InvalidInput


def export(opts: Options, span: str | None, records: bool, path: str | None) -> int:
    from op_dbus.ledger.export import iter_export, parse_range, read_view

    def read(ledger: Any) -> Any:
        size = len(ledger)
        if size == 0:
            raise InvalidInput("the audit log is empty: nothing to export")
        first, last = parse_range(span, size) if span else (0, size - 1)
        return first, last, read_view(ledger, first, last, payloads=records)

    first, last, view = read_log(opts, read)
    chunks = iter_export(view)
    if path is None:
        out = sys.stdout
        for chunk in chunks:
            out.write(chunk)
        out.flush()
    else:
        from op_dbus import files

        files.atomic_write(Path(path), "".join(chunks).encode(), 0o644, check_dir=False, what="export")
        click.echo(f"exported blocks {first}..{last} (tree size {view.tree_size}) to {path}", err=True)
    return ExitCode.OK


def prove(opts: Options, index: int) -> int:
    from op_dbus.ledger import note

    def read(ledger: Any) -> Any:
        if index >= len(ledger):
            raise InvalidInput(f"no block {index}: the log has {len(ledger)} block(s) (0..{len(ledger) - 1})")
        return ledger.prove(index), ledger.verifier_key

    proof, vkey = read_log(opts, read)
    h = proof.block.header
    body = {**proof.to_dict(), "block_hash": h.hash, "header": h.leaf.decode(), "verifier_key": vkey,
            "verified": True}
    if opts.json:
        emit_json(body)
        return ExitCode.OK
    cp = note.parse_checkpoint(note.parse(proof.checkpoint).text)
    click.echo(f"block {index} ({h.kind}, {h.time}) is leaf {index} of the signed tree of {proof.size} blocks")
    click.echo(f"  block hash  {h.hash}")
    click.echo(f"  leaf hash   {body['leaf_hash']}   (SHA-256 of 0x00 || header)")
    click.echo(f"  tree head   {proof.root.hex()}")
    click.echo(f"  audit path  {len(proof.proof)} hash(es), from the leaf up:")
    for n, step in enumerate(proof.proof):
        click.echo(f"    {n:>2}  {step.hex()}")
    click.echo(f"  checkpoint  {cp.origin}, size {cp.size}, signed by {vkey.split('+')[0]} "
               f"(key {vkey.split('+')[1]}); its signature verified")
    click.echo("checkpoint note:")
    for line in proof.checkpoint.splitlines():
        click.echo(f"  {line}")
    return ExitCode.OK


def archive(opts: Options, date: str, path: str | None) -> int:
    from op_dbus.ledger.archive import archive as run_archive
    from op_dbus.ledger.archive import parse_date

    cutoff = parse_date(date)
    outcome = maintain_log(opts, lambda ledger: run_archive(ledger, cutoff, Path(path) if path else None))
    if opts.json:
        emit_json({"before": cutoff, **outcome.to_dict()})
    elif outcome.blocks == 0:
        click.echo(f"no block is older than {cutoff}: nothing archived")
    else:
        click.echo(f"archived blocks {outcome.first}..{outcome.last} to {outcome.path}; dropped {outcome.dropped} "
                   f"record(s) ({_size(outcome.bytes_freed)}) from the log; every hash and proof stays valid")
        click.echo(f"check the archive with: python -m op_dbus.audit_verify {outcome.path} --key "
                   f"{opts.state_dir / 'host.pub'}")
    return ExitCode.OK


def compact(opts: Options, keep: int, vacuum: bool) -> int:
    from op_dbus.ledger.archive import compact as run_compact

    def work(ledger: Any) -> Any:
        outcome = run_compact(ledger, keep=keep)
        if vacuum:
            ledger.vacuum()
        return outcome

    outcome = maintain_log(opts, work)
    if opts.json:
        emit_json({"keep": keep, "vacuum": vacuum, **outcome.to_dict()})
    elif outcome.dropped == 0:
        click.echo("nothing to compact: no block older than the last "
                   f"{keep} holds a state snapshot of its own")
    else:
        click.echo(f"compacted: dropped {outcome.dropped} state snapshot(s) ({_size(outcome.bytes_freed)}) of blocks "
                   f"0..{outcome.last}; their hashes stay, so every proof still verifies; rollback to them is refused")
    return ExitCode.OK


def rotate_key(opts: Options) -> int:
    async def rotate(engine: Any) -> dict[str, Any]:
        body: dict[str, Any] = engine.rotate_key()
        return body

    body = with_engine(opts, rotate, recover=True)
    ids = {k: body.pop(k) for k in ("old_key_id", "new_key_id")}
    if opts.json:
        emit_json(body)
        return ExitCode.OK
    click.echo(f"rotated the host key: {ids['old_key_id']} -> {ids['new_key_id']}; recorded block {body['block']} "
               "(key-rotation), its checkpoint signed by both keys")
    click.echo(f"  new public key  {body['public_key']}: {body['new_key']}")
    click.echo(f"  old public key  kept as {body['old_public_key']}")
    click.echo("give the new public key to your auditors; exports carry the rotation, so the old key still checks "
               "them (python -m op_dbus.audit_verify follows a rotation signed by both keys)")
    return ExitCode.OK


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def search(opts: Options, query: str, limit: int, semantic: bool, reindex: bool) -> int:
    from op_dbus.ledger.search import SearchIndex

    if not query.strip():
        raise InvalidInput("search: the query is empty")
    def read(ledger: Any) -> Any:
        with SearchIndex.open(ledger) as index:
            if reindex:
                index.rebuild()
            return index.search(query, limit=limit, semantic=semantic)

    hits = read_log(opts, read)
    if opts.json:
        emit_json({"query": query, "mode": "semantic" if semantic else "fts5", "hits": [h.to_dict() for h in hits]})
        return ExitCode.OK
    if not hits:
        click.echo(f"no block matches {query!r}")
        return ExitCode.OK
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("block", "time", "kind", "score", "summary"):
        table.add_column(col, no_wrap=col != "summary")
    for h in hits:
        table.add_row(str(h.index), h.time, h.kind, f"{h.score:.3f}", h.summary)
    Console(width=None if sys.stdout.isatty() else 250).print(table)
    click.echo(f"{len(hits)} block(s), each proved against the signed checkpoint; `op-dbus blockchain show N` "
               "shows one whole")
    return ExitCode.OK
