"""Bodies of the GitOps commands (`run --git`, `check`, `render`); kept apart so `op-dbus --help` never imports them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from op_dbus.cli.common import Options
from op_dbus.cli.main import _emit_json
from op_dbus.errors import ExitCode, InvalidInput


def git_source(opts: Options, url: str, ref: str, template: str, allowed_signers: str | None, interval: float,
               allow_rewind: bool, group: str | None, host: str | None, ssh_key: str | None = None,
               known_hosts: str | None = None, collectors: list[Any] | None = None) -> Any:
    from op_dbus.gitops.rollout import CollectorGate
    from op_dbus.gitops.source import GitSettings, GitSource, host_group

    settings = GitSettings(url, ref=ref, template=template, interval=interval, allow_rewind=allow_rewind,
                           allowed_signers=Path(allowed_signers) if allowed_signers else None,
                           group=host_group(group) if "{group}" in template else group,
                           ssh_key=Path(ssh_key) if ssh_key else None,
                           known_hosts=Path(known_hosts) if known_hosts else None)
    if host:
        settings.hostname = host
    # with collectors, they open the waves (`op-dbus fleet rollout`); the time gate when none answers
    gate = CollectorGate(opts.ledger, collectors) if collectors else None
    return GitSource(settings, opts.state_dir, gate=gate)


def check(opts: Options, paths: list[Path], template: str) -> int:
    from op_dbus.gitops.check import check_paths

    findings, counts = check_paths(paths, template)
    if opts.json:
        _emit_json({"ok": not findings, "problems": [f.to_json() for f in findings], **counts})
    else:
        for f in findings:
            click.echo(str(f))
        what = f"{counts['files']} file(s), {counts['hosts']} host(s)"
        click.echo(f"{len(findings)} problem(s) in {what}" if findings else f"ok: {what} valid", err=True)
    return ExitCode.INVALID_INPUT if findings else ExitCode.OK


def render(opts: Options, repo: Path, template: str, host: str | None, group: str | None,
           refs: tuple[str, str] | None) -> int:
    from op_dbus.gitops.compose import directory_reader, expand, load_composed, parse_template

    layers = parse_template(template)
    if refs:
        if host is not None and group is None and "{group}" in template:
            raise InvalidInput("--host with a {group} template needs --group")
        return _render_diff(opts, repo, layers, refs, host, group)
    if host is None:
        raise click.UsageError("give --host NAME (or --diff OLDREF NEWREF)")
    paths = expand(layers, {"hostname": host, "group": group})
    _doc, composed = load_composed(directory_reader(repo), paths)
    if opts.json:
        _emit_json({"host": host, "group": group, "paths": paths, "document": composed.value})
    else:
        click.echo(json.dumps(composed.value, indent=2))
    return ExitCode.OK


def _render_diff(opts: Options, repo: Path, layers: list[str], refs: tuple[str, str], host: str | None,
                 group: str | None) -> int:
    from op_dbus.gitops.check import composed_or_error, diff_values, host_variants
    from op_dbus.gitops.git import Git, GitError, read_files
    from op_dbus.state import MAX_DOCUMENT_BYTES

    gitdir = repo / ".git" if (repo / ".git").exists() else repo
    git = Git(gitdir)
    try:
        commits = [git.rev(r) for r in refs]
    except GitError:
        raise InvalidInput(f"{repo}: cannot resolve {refs[0]} and {refs[1]} to commits") from None

    def reader_at(commit: str) -> Any:
        def read(path: str) -> bytes | None:
            return read_files(git, commit, [path], MAX_DOCUMENT_BYTES)[path]
        return read

    variants: set[tuple[str, str | None]] = set()
    for c in commits:
        def lister(d: str, c: str = c) -> list[str]:
            return git.list_dir(c, d)

        variants |= set(host_variants(layers, lister))
    if host is not None:
        variants = {(host, group)}
    hosts: list[dict[str, Any]] = []
    for h, g in sorted(variants, key=lambda v: (v[0], v[1] or "")):
        old, new = (composed_or_error(reader_at(c), layers, h, g) for c in commits)
        changes = diff_values(old, new)
        if changes:
            hosts.append({"host": h, "group": g, "changes": changes})
    if opts.json:
        _emit_json({"old": commits[0], "new": commits[1], "hosts": hosts})
    else:
        for entry in hosts:
            label = entry["host"] + (f" (group {entry['group']})" if entry["group"] else "")
            click.echo(f"{label}:")
            for c in entry["changes"]:
                old_s = json.dumps(c["old"]) if "old" in c else "(absent)"
                new_s = json.dumps(c["new"]) if "new" in c else "(absent)"
                click.echo(f"  {c['path']}: {old_s} -> {new_s}")
        if not hosts:
            click.echo(f"no host's desired state changes from {refs[0]} to {refs[1]}")
    return ExitCode.DIFFERENCE if hosts else ExitCode.OK
