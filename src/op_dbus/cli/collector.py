"""`op-dbus collector ...` (the fleet collector, needs the op-dbus[collector] extra) and `op-dbus report` (hosts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from op_dbus.errors import ExitCode, OpDbusError

DB_HELP = "Database URL: sqlite:////path/fleet.db or postgresql://user@host/db."
DEFAULT_DB = "sqlite:////var/lib/op-dbus-collector/fleet.db"
DEFAULT_KEY = "/var/lib/op-dbus-collector/witness.key"
DEFAULT_COLLECTORS = "/etc/op-dbus/collectors"


class MissingExtra(OpDbusError):
    pass


def _fleet() -> Any:
    """Import the collector modules, saying what to install when the extra is missing."""
    try:
        from op_dbus.fleet import app, db, witness
    except ImportError as exc:
        raise MissingExtra(f"the collector needs the op-dbus[collector] extra ({exc.name} is missing)",
                           hint="pip install 'op-dbus[collector]'") from None
    return app, db, witness


def _witness(db_url: str, key: str | None = None, name: str | None = None) -> Any:
    """The witness over `db_url`; with `key`, its signing key too (which fixes its name on first use)."""
    app, db, witness = _fleet()
    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    return witness.Witness(engine, None if key is None else app.open_signer(engine, Path(key), name))


def _emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True) if as_json else text)


def _is_json(ctx: click.Context) -> bool:
    return bool(getattr(ctx.find_root().obj, "json", False))


db_option = click.option("--db", "db_url", metavar="URL", envvar="OP_DBUS_COLLECTOR_DB", default=DEFAULT_DB,
                         show_default=True, help=DB_HELP)
key_option = click.option("--key-file", metavar="PATH", default=DEFAULT_KEY, show_default=True,
                          help="The witness's Ed25519 key (PKCS#8 PEM, 0600; created on first start).")


@click.group()
def collector() -> None:
    """The fleet collector: a C2SP tlog-witness for the audit logs of enrolled hosts (needs op-dbus[collector])."""


@collector.command()
@db_option
@key_option
@click.option("--listen", metavar="HOST:PORT", default="127.0.0.1:8470", show_default=True,
              help="Where to listen. Plain HTTP only on loopback; elsewhere give --tls-cert/--tls-key.")
@click.option("--tls-cert", metavar="PEM", help="Serve HTTPS with this certificate chain.")
@click.option("--tls-key", metavar="PEM", help="The TLS private key (0600).")
@click.option("--name", metavar="NAME", help="The witness name, fixed on first start [default: op-dbus-collector/HOSTNAME].")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Server processes.")
@click.option("--stale-after", metavar="SECONDS", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="Raise a `stale` alert for a host silent this long.")
def serve(db_url: str, key_file: str, listen: str, tls_cert: str | None, tls_key: str | None, name: str | None,
          workers: int, stale_after: float) -> int:
    """Serve the collector until SIGTERM: POST /add-checkpoint (C2SP tlog-witness), /v1/join, /v1/footprint,
    /v1/rollout/gate for hosts; /v1/status, /v1/hosts, /v1/alerts, /v1/rollouts for API tokens; the web
    dashboard under /ui/ for users (`op-dbus collector user add`)."""
    app, _db, _witness_mod = _fleet()
    app.serve(db_url, listen, Path(key_file), name=name, tls_cert=tls_cert, tls_key=tls_key, workers=workers,
              stale_after=stale_after)
    return ExitCode.OK


@collector.command()
@db_option
@key_option
@click.option("--name", metavar="NAME", help="The witness name, if not fixed yet [default: op-dbus-collector/HOSTNAME].")
def key(db_url: str, key_file: str, name: str | None) -> int:
    """Print the witness's C2SP verifier key (name+keyID+key, cosignature/v1) for hosts' and auditors' policies."""
    click.echo(_witness(db_url, key_file, name).signer.verifier.vkey)
    return ExitCode.OK


@collector.command()
@click.argument("name")
@click.option("--key", "host_key", metavar="HOST.pub", required=True, type=click.Path(dir_okay=False),
              help="The host's verifier key file (its state directory's host.pub).")
@db_option
@click.pass_context
def enroll(ctx: click.Context, name: str, host_key: str, db_url: str) -> int:
    """Know host NAME by its audit log's verifier key: its checkpoints are witnessed from now on."""
    try:
        vkey = Path(host_key).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {host_key}: {exc}", param_hint="--key") from None
    host = _witness(db_url).enroll(name, vkey)
    _emit({"name": host.name, "origin": host.origin}, _is_json(ctx), f"enrolled {host.name}: log {host.origin}")
    return ExitCode.OK


@collector.command()
@click.argument("name")
@db_option
def revoke(name: str, db_url: str) -> int:
    """Refuse everything from host NAME from now on (its witness record and evidence are kept)."""
    _witness(db_url).revoke(name)
    click.echo(f"revoked {name}")
    return ExitCode.OK


@collector.group()
def token() -> None:
    """One-time enrollment tokens for `op-dbus fleet join`."""


@collector.group("api-token")
def api_token() -> None:
    """API tokens for `op-dbus fleet status|hosts|host|alerts` (roles: viewer reads; operator also controls)."""


@api_token.command("create")
@db_option
@click.option("--role", type=click.Choice(["viewer", "operator"]), default="viewer", show_default=True)
@click.option("--label", metavar="TEXT", default="", help="Who or what the token is for.")
def api_token_create(db_url: str, role: str, label: str) -> int:
    """Print a new API token (shown once; only its hash is stored)."""
    _app, db, _w = _fleet()
    from op_dbus.fleet.fleetview import FleetView

    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    click.echo(FleetView(engine).create_api_token(role, label))
    return ExitCode.OK


@api_token.command("revoke")
@db_option
@click.option("--label", metavar="TEXT", required=True, help="Revoke every API token created with this label.")
def api_token_revoke(db_url: str, label: str) -> int:
    """Revoke API tokens by label (the tokens themselves are not stored)."""
    from op_dbus.errors import InvalidInput

    _app, db, _w = _fleet()
    from op_dbus.fleet.fleetview import FleetView

    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    count = FleetView(engine).revoke_api_tokens(label)
    if not count:
        raise InvalidInput(f"no API token has the label {label!r}")
    click.echo(f"revoked {count} API token(s) labelled {label!r}")
    return ExitCode.OK


@collector.group()
def user() -> None:
    """Dashboard users (the web UI under /ui/): viewers read, operators may also halt and resume rollouts."""


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator"]), required=True)
@db_option
def user_add(name: str, role: str, db_url: str) -> int:
    """Create NAME (or set its role and password). The password is asked for on a terminal, else read as the
    first line of standard input; only its scrypt hash is stored."""
    import sys

    _app, db, _w = _fleet()
    from op_dbus.fleet.users import Users

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    Users(engine).add(name, role, password)
    click.echo(f"user {name} ({role}) saved")
    return ExitCode.OK


@user.command("remove")
@click.argument("name")
@db_option
def user_remove(name: str, db_url: str) -> int:
    """Delete NAME and end its sessions."""
    from op_dbus.errors import InvalidInput

    _app, db, _w = _fleet()
    from op_dbus.fleet.users import Users

    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    if not Users(engine).remove(name):
        raise InvalidInput(f"no dashboard user {name!r}")
    click.echo(f"user {name} removed")
    return ExitCode.OK


@collector.command("group")
@click.argument("action", type=click.Choice(["add", "remove"]))
@click.argument("group")
@click.argument("hosts", nargs=-1, required=True)
@db_option
def group_cmd(action: str, group: str, hosts: tuple[str, ...], db_url: str) -> int:
    """Put enrolled HOSTS into GROUP (add) or take them out (remove); the dashboard filters by group."""
    _app, db, witness = _fleet()
    from op_dbus.fleet.dashboard import Dashboard

    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    changed = Dashboard(witness.Witness(engine, None)).set_group(group, list(hosts), member=action == "add")
    click.echo(f"{changed} host(s) {'added to' if action == 'add' else 'removed from'} {group}")
    return ExitCode.OK


@token.command("create")
@db_option
@click.option("--ttl", metavar="SECONDS", type=click.IntRange(60, 30 * 86400), default=3600, show_default=True,
              help="How long the token stays valid.")
def token_create(db_url: str, ttl: int) -> int:
    """Print a new one-time token (shown once; only its hash is stored). It expires after --ttl."""
    click.echo(_witness(db_url).create_token(float(ttl)))
    return ExitCode.OK


@collector.command("hosts")
@db_option
@click.pass_context
def hosts_cmd(ctx: click.Context, db_url: str) -> int:
    """List enrolled hosts with the size the witness holds for each."""
    w = _witness(db_url)
    rows = [{"name": h.name, "origin": h.origin, "revoked": h.revoked, "size": w.current_size(h.origin)}
            for h in w.hosts()]
    text = "\n".join(f"{r['name']}\t{r['origin']}\tsize {r['size']}{'  REVOKED' if r['revoked'] else ''}"
                     for r in rows) or "no hosts enrolled"
    _emit(rows, _is_json(ctx), text)
    return ExitCode.OK


@collector.command("status")
@db_option
@click.option("--stale-after", metavar="SECONDS", type=click.FloatRange(min=1), default=3600, show_default=True,
              help="A host silent this long counts as stale.")
@click.pass_context
def status_cmd(ctx: click.Context, db_url: str, stale_after: float) -> int:
    """The fleet at a glance: hosts enrolled, witnessed, stale, revoked; open alerts by kind. Exit 3 on alerts."""
    summary = _witness(db_url).status(stale_after=stale_after)
    alerts = summary["alerts"]
    text = (f"hosts {summary['hosts']} (revoked {summary['revoked']}), witnessed {summary['witnessed']}, "
            f"stale {summary['stale']} (silent > {stale_after:g} s); open alerts: "
            + (", ".join(f"{k} {n}" for k, n in sorted(alerts.items())) or "none"))
    _emit(summary, _is_json(ctx), text)
    return ExitCode.DIFFERENCE if alerts else ExitCode.OK


@collector.command("alerts")
@db_option
@click.pass_context
def alerts_cmd(ctx: click.Context, db_url: str) -> int:
    """List open alerts: equivocation (a log contradicted the witness), drift, apply-failed, rollout-halted, stale.

    Exit 3 if any."""
    rows = _witness(db_url).alerts()
    text = "\n".join(f"{r['host']}\t{r['kind']}\t{r['detail']}" for r in rows) or "no open alerts"
    _emit(rows, _is_json(ctx), text)
    return ExitCode.DIFFERENCE if rows else ExitCode.OK


def read_collectors(path: Path) -> list[tuple[str, str]]:
    """The collectors file: one `URL WITNESS-VKEY` per line; '#' starts a comment."""
    from op_dbus import files

    try:
        # checked as every trusted file: a collectors file (or a directory above it) others can write is refused
        text = files.read_checked(path, "collectors file", limit=1 << 20).decode("utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise click.BadParameter(f"{path}:{n}: expected 'URL WITNESS-VKEY'")
        entries.append((parts[0], parts[1]))
    return entries


def parse_collector_option(value: str) -> tuple[str, str]:
    url, sep, vkey = value.partition("=")
    if not sep:
        raise click.BadParameter(f"{value!r}: expected URL=WITNESS-VKEY", param_hint="--collector")
    return url, vkey


def load_collectors(options: tuple[str, ...], collectors_file: str) -> list[Any]:
    """The collectors to report to: every --collector URL=VKEY, or else the collectors file."""
    from op_dbus.errors import InvalidInput
    from op_dbus.fleet.client import Collector
    from op_dbus.ledger.note import NoteError

    pairs = [parse_collector_option(v) for v in options] or read_collectors(Path(collectors_file))
    out = []
    for url, vkey in pairs:
        try:
            out.append(Collector.parse(url, vkey))
        except NoteError as exc:
            raise InvalidInput(f"collector {url}: {exc}") from None
    return out


def send_reports(ledger: Any, targets: list[Any], timeout: float, *, footprints: bool = True) -> list[Any]:
    """Each collector: the checkpoint (witnessed), then the footprint (signed by the log key)."""
    import time

    from op_dbus.fleet.client import send, send_footprint

    outcomes = []
    for target in targets:
        started = time.monotonic()
        outcome = send(ledger, target, timeout=timeout)
        outcomes.append(outcome)
        left = timeout - (time.monotonic() - started)
        # Reachable: the footprint goes too, whatever the witness said, within what is left of this collector's time.
        if footprints and outcome.status is not None and left > 0.05:
            sent = send_footprint(ledger, target, "cli", timeout=left)
            if not sent.ok:
                outcomes.append(sent)
    return outcomes


@click.command()
@click.option("--collector", "collectors", metavar="URL=WITNESS-VKEY", multiple=True,
              help="A collector and its witness key (`op-dbus collector key` there); repeatable "
                   f"[default: the lines of {DEFAULT_COLLECTORS}].")
@click.option("--collectors-file", metavar="PATH", default=DEFAULT_COLLECTORS, show_default=True,
              help="One 'URL WITNESS-VKEY' per line.")
@click.option("--timeout", metavar="SECONDS", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="How long to wait for each collector.")
@click.pass_context
def report(ctx: click.Context, collectors: tuple[str, ...], collectors_file: str, timeout: float) -> int:
    """Send the audit log's latest checkpoint to the collectors now and keep their cosignatures.

    Exit 0 when every collector cosigned, 3 when one refused or could not be reached (retried at the next report).
    """
    opts = ctx.find_root().obj
    targets = load_collectors(collectors, collectors_file)
    if not targets:
        raise click.UsageError(f"no collector configured: give --collector or write {collectors_file}")
    with opts.ledger() as ledger:
        outcomes = send_reports(ledger, targets, timeout)
    _emit([o.to_dict() for o in outcomes], _is_json(ctx),
          "\n".join(f"{o.collector}: {'ok' if o.ok else 'FAILED'}: {o.message}" for o in outcomes))
    return ExitCode.OK if all(o.ok for o in outcomes) else ExitCode.DIFFERENCE


APPLY_REPORT_TIMEOUT = 2.0


def report_after_apply(opts: Any) -> None:
    """After an apply recorded a block: send it to the configured collectors, waiting at most a short timeout
    each; a failure is a warning (the next report or the agent fills the gap), never the apply's result."""
    try:
        targets = load_collectors((), DEFAULT_COLLECTORS)
    except (OpDbusError, click.ClickException) as exc:
        click.echo(f"op-dbus: warning: collectors not contacted: {exc}", err=True)
        return
    if not targets:
        return
    with opts.ledger() as ledger:
        for outcome in send_reports(ledger, targets, APPLY_REPORT_TIMEOUT):
            if not outcome.ok:
                click.echo(f"op-dbus: warning: collector {outcome.collector}: {outcome.message} "
                           "(`op-dbus report` retries)", err=True)


@click.group()
def fleet() -> None:
    """This host in a fleet: join a collector (the collector side is `op-dbus collector`)."""


@fleet.command()
@click.argument("url")
@click.option("--token", "join_token", metavar="TOKEN", required=True, envvar="OP_DBUS_JOIN_TOKEN",
              help="A one-time token from `op-dbus collector token create` [env OP_DBUS_JOIN_TOKEN].")
@click.option("--name", metavar="NAME", help="This host's name at the collector [default: the hostname].")
@click.option("--collectors-file", metavar="PATH", default=DEFAULT_COLLECTORS, show_default=True,
              help="Where to add the collector (URL and witness key) for `apply` and `report`.")
@click.pass_context
def join(ctx: click.Context, url: str, join_token: str, name: str | None, collectors_file: str) -> int:
    """Enroll this host's audit log at the collector URL and add the collector to the collectors file."""
    import socket

    from op_dbus.errors import InvalidInput
    from op_dbus.fleet import client
    from op_dbus.ledger import keys

    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"{url}: the collector URL must start with https:// (or http:// on loopback)")
    opts = ctx.find_root().obj
    with opts.ledger() as ledger:
        vkey = ledger.verifier_key
    try:
        answer = client.join(url, join_token, name or socket.gethostname(), vkey)
    except PermissionError as exc:
        raise InvalidInput(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise OpDbusError(f"cannot reach the collector at {url}: {exc}",
                          hint="check the URL; `op-dbus collector serve` must be running there") from None
    path = Path(collectors_file)
    existing = read_collectors(path)
    line = f"{url.rstrip('/')} {answer['witness']}"
    if (url.rstrip("/"), answer["witness"]) not in existing:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        keys.write_public_file(path, old + ("" if not old or old.endswith("\n") else "\n") + line + "\n")
    _emit(answer, _is_json(ctx), f"joined {url} as {answer['name']} (log {answer['origin']}); "
                                 f"witness {answer['witness']} added to {path}")
    return ExitCode.OK


collector_url = click.option("--collector", "url", metavar="URL", required=True, envvar="OP_DBUS_FLEET_URL",
                             help="The collector [env OP_DBUS_FLEET_URL].")
api_token_option = click.option("--token", "api_token_value", metavar="TOKEN", required=True,
                                envvar="OP_DBUS_FLEET_TOKEN",
                                help="An API token (`op-dbus collector api-token create`) [env OP_DBUS_FLEET_TOKEN].")


def _api(url: str, path: str, token_value: str, data: Any = None) -> Any:
    from op_dbus.errors import InvalidInput
    from op_dbus.fleet import client

    try:
        return client.api_get(url, path, token_value, data=data)
    except PermissionError as exc:
        raise InvalidInput(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise OpDbusError(f"{url}: {exc}", hint="is `op-dbus collector serve` running there?") from None


@fleet.command("status")
@collector_url
@api_token_option
@click.pass_context
def fleet_status(ctx: click.Context, url: str, api_token_value: str) -> int:
    """Hosts enrolled, witnessed, stale, revoked; open alerts by kind (exit 3 when there are alerts)."""
    s = _api(url, "/v1/status", api_token_value)
    alerts = s.get("alerts", {})
    _emit(s, _is_json(ctx), f"hosts {s['hosts']} (revoked {s['revoked']}), witnessed {s['witnessed']}, stale "
                            f"{s['stale']}; open alerts: " + (", ".join(f"{k} {n}" for k, n in sorted(alerts.items()))
                                                              or "none"))
    return ExitCode.DIFFERENCE if alerts else ExitCode.OK


@fleet.command("hosts")
@collector_url
@api_token_option
@click.pass_context
def fleet_hosts(ctx: click.Context, url: str, api_token_value: str) -> int:
    """Every host: witnessed size, last footprint (head, last apply, drift, commit, mode)."""
    rows = _api(url, "/v1/hosts", api_token_value)
    lines = []
    for h in rows:
        f = h.get("footprint") or {}
        last = f.get("last_apply") or {}
        lines.append(f"{h['name']}\tsize {h['witnessed_size']}\tlast apply {last.get('result', '-')}\t"
                     f"drift {f.get('drift', '-')}\t{f.get('mode', '-')}{'  REVOKED' if h['revoked'] else ''}")
    _emit(rows, _is_json(ctx), "\n".join(lines) or "no hosts")
    return ExitCode.OK


@fleet.command("host")
@click.argument("name")
@collector_url
@api_token_option
@click.pass_context
def fleet_host(ctx: click.Context, name: str, url: str, api_token_value: str) -> int:
    """One host with its footprint history."""
    from urllib.parse import quote

    h = _api(url, "/v1/hosts/" + quote(name, safe=""), api_token_value)
    _emit(h, _is_json(ctx), json.dumps(h, indent=2, sort_keys=True))
    return ExitCode.OK


@fleet.command("alerts")
@collector_url
@api_token_option
@click.pass_context
def fleet_alerts(ctx: click.Context, url: str, api_token_value: str) -> int:
    """Open alerts: equivocation, drift, apply-failed, rollout-halted, stale (exit 3 when there are any)."""
    rows = _api(url, "/v1/alerts", api_token_value)
    _emit(rows, _is_json(ctx), "\n".join(f"{r['host']}\t{r['kind']}\t{r['detail']}" for r in rows) or "no open alerts")
    return ExitCode.DIFFERENCE if rows else ExitCode.OK


@fleet.group()
def rollout() -> None:
    """Staged rollouts of a commit: the collector opens each wave when the previous one applied it."""


def _show_rollout(ctx: click.Context, r: Any) -> None:
    waves = " | ".join(f"{'open' if i < r['opened'] else 'closed'}: {','.join(w)}" for i, w in enumerate(r["waves"]))
    _emit(r, _is_json(ctx), f"{r['commit']}\t{r['state']}{' (' + r['reason'] + ')' if r.get('reason') else ''}\t{waves}")


@rollout.command("start")
@click.argument("commit")
@click.option("--wave", "waves", metavar="HOSTS|N%", multiple=True,
              help="A wave: comma-separated host names or a percentage of all hosts (repeatable, in order) "
                   "[default: one wave of every host].")
@collector_url
@api_token_option
@click.pass_context
def rollout_start(ctx: click.Context, commit: str, waves: tuple[str, ...], url: str, api_token_value: str) -> int:
    """Start rolling out COMMIT (needs an operator token); its first wave opens now."""
    _show_rollout(ctx, _api(url, "/v1/rollouts", api_token_value, {"commit": commit, "waves": list(waves)}))
    return ExitCode.OK


@rollout.command("status")
@collector_url
@api_token_option
@click.pass_context
def rollout_status(ctx: click.Context, url: str, api_token_value: str) -> int:
    """Every rollout with its waves (exit 3 when one is halted)."""
    rows = _api(url, "/v1/rollouts", api_token_value)
    if _is_json(ctx):
        _emit(rows, True, "")
    else:
        for r in rows:
            _show_rollout(ctx, r)
        if not rows:
            click.echo("no rollouts")
    return ExitCode.DIFFERENCE if any(r["state"] == "halted" for r in rows) else ExitCode.OK


@rollout.command("halt")
@click.argument("commit")
@collector_url
@api_token_option
@click.pass_context
def rollout_halt(ctx: click.Context, commit: str, url: str, api_token_value: str) -> int:
    """Close every wave of COMMIT not yet open (needs an operator token)."""
    _show_rollout(ctx, _api(url, f"/v1/rollouts/{commit}/halt", api_token_value, {}))
    return ExitCode.OK


@rollout.command("resume")
@click.argument("commit")
@collector_url
@api_token_option
@click.pass_context
def rollout_resume(ctx: click.Context, commit: str, url: str, api_token_value: str) -> int:
    """Let a halted rollout of COMMIT go on (needs an operator token)."""
    _show_rollout(ctx, _api(url, f"/v1/rollouts/{commit}/resume", api_token_value, {}))
    return ExitCode.OK
