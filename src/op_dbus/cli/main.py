"""The `op-dbus` command. Imports stay lazy so `op-dbus --help` answers fast: the engine, pydantic, dbus-fast
and rich load only inside the command that needs them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from op_dbus import __version__
from op_dbus.cli import common
from op_dbus.cli.common import Options, emit_json, output_option, with_engine
from op_dbus.errors import EXIT_CODES_HELP, ExitCode, OpDbusError
from op_dbus.statedir import DEFAULT_STATE_DIR

_OPTIONS: list[Options] = []  # the global options of this invocation, for error reporting in main()
_run = common.run
_emit_json = emit_json


def _check_netns(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`--netns` names a namespace as `ip netns` does (or is an absolute path): refused at once otherwise (exit 2)."""
    if value is not None:
        from op_dbus.backends.netlink import netns_name_problem

        problem = netns_name_problem(value)
        if problem:
            raise click.BadParameter(problem)
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.option("--bus", metavar="ADDRESS", envvar="OP_DBUS_BUS",
              help="D-Bus address of the system bus to manage [default: $DBUS_SYSTEM_BUS_ADDRESS or the system bus].")
@click.option("--state-dir", metavar="DIR", envvar="OP_DBUS_STATE_DIR", default=str(DEFAULT_STATE_DIR), show_default=True,
              help="Where the audit log and keys live.")
@click.option("--job-timeout", metavar="SECONDS", type=click.FloatRange(min=0.1), default=90.0, show_default=True,
              help="How long to wait for one systemd job or backend operation.")
@click.option("--netns", metavar="NAME", envvar="OP_DBUS_NETNS", callback=_check_netns,
              help="Manage the network inside this network namespace (/run/netns/NAME) [net plugin].")
@click.option("--ovsdb", metavar="unix:PATH", envvar="OP_DBUS_OVSDB",
              help="OVSDB socket [default: unix:/var/run/openvswitch/db.sock] [net plugin].")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format (text, or json for scripts).")
@click.version_option(__version__, "-V", "--version", prog_name="op-dbus")
@click.pass_context
def cli(ctx: click.Context, bus: str | None, state_dir: str, job_timeout: float, netns: str | None,
        ovsdb: str | None, output: str) -> None:
    """Declare what a Linux machine must look like; op-dbus shows the difference, converges it over
    native protocols (D-Bus, netlink, OVSDB), verifies it and records every change in a
    tamper-evident audit log.

    \b
    Typical use:
      op-dbus introspect > state.json     # the current system as a state file
      op-dbus diff state.json             # what would change
      op-dbus apply state.json            # converge, verify, record a block
      op-dbus verify --current            # has anything drifted since?
      op-dbus blockchain list             # the history
    """
    ctx.obj = Options(bus, state_dir, job_timeout, output, netns, ovsdb)
    _OPTIONS.append(ctx.obj)


@cli.command()
@click.argument("plugin", required=False)
@click.option("--discover-all", is_flag=True,
              help="Instead: walk every service on the bus (objects, interfaces, properties) and report it.")
@click.option("--activate", is_flag=True, help="With --discover-all: also start and walk bus-activatable services.")
@click.option("--timeout", "call_timeout", metavar="SECONDS", type=click.FloatRange(min=0.05), default=5.0,
              show_default=True, help="With --discover-all: give up on a call after this long (the service is "
                                      "then listed as timed out).")
@click.option("--concurrency", metavar="N", type=click.IntRange(min=1, max=1024), default=32, show_default=True,
              help="With --discover-all: calls in flight at once.")
@output_option
@click.pass_obj
def query(opts: Options, plugin: str | None, discover_all: bool, activate: bool, call_timeout: float,
          concurrency: int) -> int:
    """Print the live state of every plugin (or only PLUGIN), in the state-file format.

    Unlike `introspect`, plugins may add read-only facts under a `status` key (e.g. login1's sessions);
    a state file may carry them and they are ignored there.
    """
    if discover_all and plugin:
        raise click.UsageError("--discover-all walks the whole bus; it takes no PLUGIN")
    if not discover_all and (activate or call_timeout != 5.0 or concurrency != 32):
        raise click.UsageError("--activate, --timeout and --concurrency go with --discover-all")
    if discover_all:
        from op_dbus.cli import commands

        return commands.discover_all(opts, activate=activate, timeout=call_timeout, concurrency=concurrency)
    emit_json(with_engine(opts, lambda engine: engine.query([plugin] if plugin else None), log=False,
                          read_only_facts=True))
    return ExitCode.OK


@cli.command()
@click.argument("plugins", nargs=-1)
@click.option("--format", "layout", type=click.Choice(["op-dbus", "nmstate"]), default="op-dbus", show_default=True,
              help="nmstate: only the net section, in nmstate's own layout as YAML (with -o json: as JSON), for "
                   "nmstatectl or to put unchanged under plugins.net.")
@output_option
@click.pass_obj
def introspect(opts: Options, plugins: tuple[str, ...], layout: str) -> int:
    """Print a state file of the current system (all plugins, or only PLUGINS).

    Applying the output changes nothing: `op-dbus introspect > state.json && op-dbus apply state.json`.
    """
    if layout == "nmstate" and plugins not in ((), ("net",)):
        raise click.UsageError("--format nmstate describes the net section only: give no PLUGINS, or `net`")
    names = ["net"] if layout == "nmstate" else list(plugins) or None
    doc = with_engine(opts, lambda engine: engine.introspect(names), log=False)
    if layout == "nmstate":
        import yaml

        from op_dbus.plugins.net.nmstate import to_nmstate

        state = to_nmstate(doc["plugins"]["net"])
        if opts.json:
            emit_json(state)
        else:
            click.echo(yaml.safe_dump(state, sort_keys=False, default_flow_style=False), nl=False)
        return ExitCode.OK
    emit_json(doc)
    return ExitCode.OK


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@output_option
@click.pass_obj
def diff(opts: Options, file: str) -> int:
    """Show what applying FILE would change. Exit 0: no difference; 3: differences."""
    from op_dbus.state import load_document

    doc = load_document(file)
    plan = with_engine(opts, lambda engine: engine.plan(doc), log=False)
    changes = plan.all_changes
    if opts.json:
        from op_dbus.cli.render import records

        emit_json({"file": file, "changes": records(changes), "count": len(changes)})
    else:
        from op_dbus.cli.render import print_changes

        print_changes(changes, empty="no difference: the system already matches " + file)
    return ExitCode.DIFFERENCE if changes else ExitCode.OK


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="Show the plan and stop: nothing is changed or recorded.")
@click.option("--confirm-timeout", metavar="SECONDS", type=click.FloatRange(min=1),
              help="Keep the change only if `op-dbus confirm` arrives within SECONDS; otherwise revert it "
                   "automatically, even if this process or its SSH session dies.")
@click.option("--wait", "lock_wait", metavar="SECONDS", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Wait this long for another apply to finish instead of exiting 5 at once.")
@click.option("--no-report", is_flag=True,
              help="Do not send the new checkpoint to the collectors of /etc/op-dbus/collectors (see `op-dbus report`).")
@output_option
@click.pass_obj
def apply(opts: Options, file: str, dry_run: bool, confirm_timeout: float | None, lock_wait: float,
          no_report: bool) -> int:
    """Converge the system to FILE as one transaction, verify it, and record a block in the audit log.

    Invalid files are refused whole (exit 2) before anything changes. If a change fails, the result does
    not verify, or a health probe that passed before fails after, everything applied is undone and the
    attempt is recorded (exit 4). Another apply running: exit 5.
    """
    from op_dbus.state import load_document

    doc = load_document(file)
    result = with_engine(opts, lambda engine: engine.apply(doc, dry_run=dry_run, confirm_timeout=confirm_timeout,
                                                           lock_wait=lock_wait), log=not dry_run)
    changes = result.plan.all_changes if dry_run else result.applied
    block = result.block
    if block is not None and not no_report:
        from op_dbus.cli.collector import report_after_apply

        report_after_apply(opts)
    if opts.json:
        from op_dbus.cli.render import records

        emit_json({"file": file, "dry_run": dry_run, "changes": records(changes),
                    "block": block.to_dict() if block is not None else None, "confirm_by": result.confirm_by})
    else:
        from op_dbus.cli.render import print_changes

        if dry_run:
            print_changes(changes, empty="dry run: nothing to change")
            click.echo(f"dry run: {len(changes)} change(s) planned, nothing applied")
        else:
            print_changes(changes, empty="nothing to change: the system already matches " + file)
            if block is not None:
                click.echo(f"applied {len(changes)} change(s); recorded block {block.index} "
                           f"(state {block.state_hash[:16]})")
            if result.confirm_by is not None:
                import time

                left = result.confirm_by - time.time()
                click.secho(f"run `op-dbus confirm` within {left:.0f} s to keep this change; "
                            "otherwise it is reverted automatically", fg="yellow", bold=True)
    return ExitCode.OK


@cli.command()
@click.option("--to-block", "index", metavar="N", type=click.IntRange(min=0), required=True,
              help="The block whose recorded state to return to.")
@click.option("--dry-run", is_flag=True, help="Prove block N and show the plan; change nothing.")
@click.option("--confirm-timeout", metavar="SECONDS", type=click.FloatRange(min=1),
              help="As for apply: revert the rollback unless `op-dbus confirm` arrives in time.")
@click.option("--secrets", "secrets_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A state file holding the secret values block N needs (the log keeps only their HMACs); "
                   "a value is used only where its HMAC matches the recorded one.")
@output_option
@click.pass_obj
def rollback(opts: Options, index: int, dry_run: bool, confirm_timeout: float | None, secrets_file: str | None) -> int:
    """Return the system to the state recorded in block N.

    Proves N's inclusion in the signed log and its state's hash first, then applies that state as a
    normal transaction and records a new block of kind `rollback` naming N. History is never truncated.
    A secret that block N sets to another value than the live one needs --secrets (exit 2 without it).
    """
    from op_dbus.cli import commands

    return commands.rollback(opts, index, dry_run, confirm_timeout, secrets_file)


@cli.command()
@output_option
@click.pass_obj
def confirm(opts: Options) -> int:
    """Keep the change an `apply --confirm-timeout` made (before its deadline)."""
    block = with_engine(opts, lambda engine: engine.confirm())
    if opts.json:
        emit_json({"confirmed": True, "block": block.to_dict() if block is not None else None})
    else:
        click.echo("confirmed: the change is kept" + (f" (block {block.index})" if block is not None else ""))
    return ExitCode.OK


@cli.command()
@output_option
@click.pass_obj
def abort(opts: Options) -> int:
    """Revert now the change an `apply --confirm-timeout` made, instead of waiting for its deadline."""
    outcome = with_engine(opts, lambda engine: engine.abort())
    if opts.json:
        emit_json({"aborted": True, "outcome": outcome})
    else:
        click.echo(outcome)
    return ExitCode.OK


@cli.command()
@click.option("--current", "mode", flag_value="current", default=True,
              help="Compare the live system with the state recorded in the last block (the default).")
@click.option("--full", "mode", flag_value="full",
              help="Recompute every block's hashes, links and signatures and name the first bad block.")
@output_option
@click.pass_obj
def verify(opts: Options, mode: str) -> int:
    """Verify the live state (--current) or the audit log itself (--full). Exit 3 when something differs."""
    from op_dbus.cli import commands

    return commands.verify(opts, mode)


@cli.group()
def blockchain() -> None:
    """The audit log: every apply is a block (index, previous hash, time, state hash, changes).

    Read it (list, show, search), prove and export blocks for auditors, and archive or compact old records.
    """


@blockchain.command("list")
@click.option("--limit", type=click.IntRange(min=1), help="Show only the last N blocks.")
@output_option
@click.pass_obj
def blockchain_list(opts: Options, limit: int | None) -> int:
    """List blocks: index, time, kind, short hashes, and a one-line summary of the changes."""
    from op_dbus.cli import commands

    return commands.blockchain_list(opts, limit)


@blockchain.command("show")
@click.argument("index", type=click.IntRange(min=0))
@output_option
@click.pass_obj
def blockchain_show(opts: Options, index: int) -> int:
    """Show block INDEX whole: header, changes (before/after) and the recorded state."""
    from op_dbus.cli import commands

    return commands.blockchain_show(opts, index)


@cli.command("export-blockchain")
@click.option("--range", "span", metavar="A-B", help="Only blocks A to B (inclusive); A- and -B work too.")
@click.option("--no-records", is_flag=True, help="Leave out the changes and state records (headers and proofs only).")
@click.option("--file", "path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write to FILE (atomically) instead of standard output.")
@click.pass_obj
def export_blockchain(opts: Options, span: str | None, no_records: bool, path: str | None) -> int:
    """Print the audit log for auditors: every block with its inclusion proof and the signed checkpoint.

    Check the result anywhere with `python -m op_dbus.audit_verify audit.json --key host.pub`.
    """
    from op_dbus.cli import audit

    return audit.export(opts, span, not no_records, path)


@blockchain.command("export")
@click.option("--range", "span", metavar="A-B", help="Only blocks A to B (inclusive); A- and -B work too.")
@click.option("--no-records", is_flag=True, help="Leave out the changes and state records (headers and proofs only).")
@click.option("--file", "path", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write to FILE (atomically) instead of standard output.")
@click.pass_obj
def blockchain_export(opts: Options, span: str | None, no_records: bool, path: str | None) -> int:
    """Export blocks with their inclusion proofs and the signed checkpoint (as export-blockchain)."""
    from op_dbus.cli import audit

    return audit.export(opts, span, not no_records, path)


@blockchain.command("prove")
@click.argument("index", type=click.IntRange(min=0))
@output_option
@click.pass_obj
def blockchain_prove(opts: Options, index: int) -> int:
    """Print block INDEX's inclusion proof against the latest signed checkpoint, after checking it."""
    from op_dbus.cli import audit

    return audit.prove(opts, index)


@blockchain.command("archive")
@click.option("--before", "date", metavar="DATE", required=True,
              help="Archive blocks older than DATE (ISO 8601, UTC unless it says otherwise, e.g. 2026-01-31).")
@click.option("--file", "path", metavar="FILE", type=click.Path(dir_okay=False),
              help="The archive file [default: STATE_DIR/archive/blocks-FIRST-LAST.json].")
@output_option
@click.pass_obj
def blockchain_archive(opts: Options, date: str, path: str | None) -> int:
    """Move old blocks' changes and states to an archive file that verifies on its own; hashes stay."""
    from op_dbus.cli import audit

    return audit.archive(opts, date, path)


@blockchain.command("compact")
@click.option("--keep", type=click.IntRange(min=1), default=1, show_default=True,
              help="Keep the full state of the last N blocks.")
@click.option("--vacuum", is_flag=True, help="Also give the freed space back to the file system (rewrites the file).")
@output_option
@click.pass_obj
def blockchain_compact(opts: Options, keep: int, vacuum: bool) -> int:
    """Drop old blocks' full states, keeping their hashes: every proof still verifies; rollback to them is refused."""
    from op_dbus.cli import audit

    return audit.compact(opts, keep, vacuum)


@blockchain.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Show at most N blocks.")
@click.option("--semantic", is_flag=True, help="Rank by meaning with a local embedding model (needs op-dbus[ml]).")
@click.option("--reindex", is_flag=True, help="Rebuild the search index from the log first.")
@output_option
@click.pass_obj
def blockchain_search(opts: Options, query: tuple[str, ...], limit: int, semantic: bool, reindex: bool) -> int:
    """Find blocks by what they changed: `op-dbus blockchain search "when did the database config change"`."""
    from op_dbus.cli import audit

    return audit.search(opts, " ".join(query), limit, semantic, reindex)


@cli.group()
def key() -> None:
    """The host's signing key (STATE_DIR/host.key; its public key is STATE_DIR/host.pub)."""


@key.command("rotate")
@output_option
@click.pass_obj
def key_rotate(opts: Options) -> int:
    """Replace the host key, recording a `key-rotation` block whose checkpoint both the old and the new key sign.

    `verify --full` and auditors holding the old public key follow the rotation only through that block; the
    old public key stays as STATE_DIR/host.pub.KEYID, host.pub becomes the new one. Waits up to 5 s for a
    running apply (else exit 5).
    """
    from op_dbus.cli import audit

    return audit.rotate_key(opts)


@cli.command()
@click.option("--state-file", "state_file", type=click.Path(dir_okay=False),
              help="The state to keep (reloaded on SIGHUP and when the file changes).")
@click.option("--git", "git_url", metavar="URL",
              help="Instead of --state-file: keep the state of a git repository (file://, https://, ssh://, "
                   "user@host:path), fetched every --git-interval seconds and on SIGHUP.")
@click.option("--git-ref", metavar="REF", default="main", show_default=True, help="The branch (or ref) to follow.")
@click.option("--git-path", metavar="TEMPLATE", default="hosts/{hostname}.json", show_default=True,
              help="The file(s) this host reads, comma-separated, later ones overriding earlier ones key by key; "
                   "{hostname} and {group} are filled in.")
@click.option("--git-allowed-signers", metavar="FILE", type=click.Path(dir_okay=False),
              help="Apply only commits signed (SSH signatures) by a key in this OpenSSH allowed_signers file.")
@click.option("--git-interval", metavar="SECONDS", type=click.FloatRange(min=0.2), default=60, show_default=True,
              help="Fetch every SECONDS.")
@click.option("--git-allow-rewind", is_flag=True,
              help="Accept a commit that does not descend from the one kept (a force-push).")
@click.option("--git-group", metavar="NAME",
              help="This host's group for {group} [default: group in /etc/op-dbus/agent.json, or /etc/op-dbus/group].")
@click.option("--git-host", metavar="NAME", help="This host's name for {hostname} and rollouts [default: the host name].")
@click.option("--git-ssh-key", metavar="FILE", type=click.Path(dir_okay=False),
              help="For ssh:// remotes: the deploy key to use (0600), and no other [default: ssh's own].")
@click.option("--git-known-hosts", metavar="FILE", type=click.Path(dir_okay=False),
              help="For ssh:// remotes: accept only these host keys [default: ssh's own known_hosts].")
@click.option("--mode", type=click.Choice(["shadow", "enforce"]), default="shadow", show_default=True,
              help="shadow: record drift, change nothing; enforce: re-apply the state on drift.")
@click.option("--read-only", is_flag=True, help="Never change the system, whatever the mode (discovery).")
@click.option("--no-log", is_flag=True,
              help="Keep no audit log (agent-only mode): drift goes to the journal / stderr only.")
@click.option("--interval", metavar="SECONDS", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Full reconciliation every SECONDS, besides the change events.")
@click.option("--debounce", metavar="SECONDS", type=click.FloatRange(min=0, max=10), default=0.02, show_default=True,
              help="Collect a burst of events this long before recomputing the difference.")
@click.option("--metrics", metavar="HOST:PORT",
              help="Serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9469).")
@click.option("--collector", "collectors", metavar="URL=WITNESS-VKEY", multiple=True,
              help="Send each new checkpoint to this collector (repeatable) and keep its cosignature; "
                   "a collector that is down is retried with backoff. With --git, the collectors also open "
                   "rollout waves (`op-dbus fleet rollout`); when none answers, the time gate decides.")
@click.pass_obj
def run(opts: Options, state_file: str | None, git_url: str | None, git_ref: str, git_path: str,
        git_allowed_signers: str | None, git_interval: float, git_allow_rewind: bool, git_group: str | None,
        git_host: str | None, git_ssh_key: str | None, git_known_hosts: str | None, mode: str, read_only: bool,
        no_log: bool, interval: float,
        debounce: float, metrics: str | None, collectors: tuple[str, ...]) -> int:
    """Keep the state of a file (--state-file) or a git repository (--git): listen to the system's change events
    and record (shadow) or repair (enforce) drift.

    Runs in the foreground as a systemd Type=notify service (READY=1, STATUS=, WATCHDOG=1); logs are JSON lines
    on stderr. SIGHUP or a change of the state file reloads it (with --git: SIGHUP fetches now, and each new
    acceptable commit is applied); SIGTERM stops. `op-dbus status` shows what it does.
    """
    from op_dbus.agent import Agent, AgentConfig
    from op_dbus.agent.metrics import parse_listen

    if (state_file is None) == (git_url is None):
        raise click.UsageError("give exactly one of --state-file FILE and --git URL")
    if metrics:
        parse_listen(metrics)
    targets: list[Any] = []
    if collectors:
        from op_dbus.cli.collector import DEFAULT_COLLECTORS, load_collectors

        if no_log:
            raise click.UsageError("--collector needs the audit log: it cannot go with --no-log")
        targets = load_collectors(collectors, DEFAULT_COLLECTORS)
    settings = opts.context().settings
    source = None
    if git_url is not None:
        from op_dbus.cli.gitops import git_source

        source = git_source(opts, git_url, git_ref, git_path, git_allowed_signers, git_interval, git_allow_rewind,
                            git_group, git_host, git_ssh_key, git_known_hosts, targets)
    config = AgentConfig(Path(state_file or "git"), mode=mode, read_only=read_only, interval=interval,
                         debounce=debounce, metrics=metrics, source=source, collectors=tuple(targets))
    agent = Agent(config, settings, ledger=None if no_log else opts.ledger)
    return int(common.run(agent.run()))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--git-path", metavar="TEMPLATE", default="hosts/{hostname}.json", show_default=True,
              help="How hosts compose their state in a fleet repository (as for `run --git`).")
@output_option
@click.pass_obj
def check(opts: Options, paths: tuple[Path, ...], git_path: str) -> int:
    """Validate state files and fleet repositories offline (no system access, no root): for CI and pre-commit.

    A directory holding the template's hosts directory is a fleet repository: the state of every host in it is
    composed and validated. Prints `path:line: message` per problem. Exit 0: valid; 2: problems.
    """
    from op_dbus.cli.gitops import check as run_check

    return run_check(opts, list(paths), git_path)


@cli.command()
@click.argument("repo", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--git-path", metavar="TEMPLATE", default="hosts/{hostname}.json", show_default=True,
              help="The file(s) a host reads, as for `run --git`.")
@click.option("--host", metavar="NAME", help="Print the merged state of this host.")
@click.option("--group", metavar="NAME", help="The host's group, for {group}.")
@click.option("--diff", "refs", nargs=2, metavar="OLDREF NEWREF",
              help="Instead: per host, which desired values change from OLDREF to NEWREF (REPO is a git checkout).")
@output_option
@click.pass_obj
def render(opts: Options, repo: Path, git_path: str, host: str | None, group: str | None,
           refs: tuple[str, str] | None) -> int:
    """Print what a host of a fleet repository will apply (the merged, validated document), or what a change
    of the repository changes per host (--diff). Exit 0; 2 if the host's files are invalid; with --diff 3 if
    any desired value changes."""
    from op_dbus.cli.gitops import render as run_render

    return run_render(opts, repo, git_path, host, group, refs)


@cli.command()
@output_option
@click.pass_obj
def status(opts: Options) -> int:
    """Show the agent (`op-dbus run`): mode, last reconciliation, drift counts. Exit 1 if it is not running."""
    from op_dbus.cli import commands

    return commands.status(opts)


@cli.command()
@click.argument("plugin", required=False)
@click.pass_obj
def schema(opts: Options, plugin: str | None) -> int:
    """Print the JSON Schema of state files for all installed plugins (or only PLUGIN)."""
    from op_dbus.schema import document_schema

    emit_json(document_schema([plugin] if plugin else None))
    return ExitCode.OK


def _register_fleet_commands() -> None:
    from op_dbus.cli.collector import collector, fleet, report

    cli.add_command(collector)
    cli.add_command(fleet)
    cli.add_command(report)


_register_fleet_commands()


def _report(error: OpDbusError, opts: Options | None) -> None:
    from op_dbus.errors import StateFileError

    if opts is not None and opts.json:
        body: dict[str, Any] = {"error": error.message, "exit_code": int(error.exit_code)}
        if error.hint:
            body["hint"] = error.hint
        if isinstance(error, StateFileError):
            body["problems"] = [{"path": p.path, "message": p.message} for p in error.problems]
        emit_json(body)
    click.echo(f"op-dbus: error: {error}", err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="op-dbus", standalone_mode=False)
    except click.exceptions.Exit as e:
        code = e.exit_code
    except click.ClickException as e:
        e.show()
        code = ExitCode.INVALID_INPUT
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except OpDbusError as e:
        _report(e, _OPTIONS[-1] if _OPTIONS else None)
        code = e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(int(code or 0))
