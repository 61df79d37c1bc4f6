"""Human output: plans and blocks, coloured on a terminal and plain when piped."""

from __future__ import annotations

import json
from typing import Any

import click

from op_dbus.plugin import Change
from op_dbus.secret import redact_record

ACTION_COLOUR = {"start": "green", "enable": "green", "unmask": "green", "create": "green", "add": "green",
                 "stop": "red", "disable": "red", "mask": "red", "delete": "red", "remove": "red"}


def _value(v: Any) -> str:
    if isinstance(v, dict) and len(v) == 1:
        ((k, inner),) = v.items()
        return f"{k}={json.dumps(inner)}"
    return json.dumps(v, sort_keys=True, default=str)


def records(changes: list[Change]) -> list[dict[str, Any]]:
    """Change records as output shows them: secrets as `<secret>`, with which ones change under `secrets`."""
    return [redact_record(c.to_record()) for c in changes]


def change_line(c: Change | dict[str, Any]) -> str:
    rec = redact_record(c.to_record() if isinstance(c, Change) else c)
    colour = ACTION_COLOUR.get(rec["action"], "yellow")
    action = click.style(f"{rec['action']:>8}", fg=colour, bold=True)
    detail = ""
    if rec.get("before") is not None or rec.get("after") is not None:
        detail = f"  {_value(rec.get('before'))} -> {_value(rec.get('after'))}"
    for name, what in (rec.get("secrets") or {}).items():
        detail += f"  {name}: {what}"
    return f"{action} {rec['object']}{click.style(detail, dim=True)}"


def print_changes(changes: list[Change], *, empty: str) -> None:
    if not changes:
        click.echo(empty)
        return
    current = None
    for c in changes:
        if c.plugin != current:
            current = c.plugin
            click.secho(f"{c.plugin}:", bold=True)
        click.echo("  " + change_line(c))
    click.echo(f"{len(changes)} change(s)")
