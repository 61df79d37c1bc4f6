"""GitOps: desired state pulled from a git repository, composed per host, trusted only when signed, rolled out in waves.

    git.py      the `git` command, run with no user or system configuration, bounded in time and output
    compose.py  path templates (`base.json,groups/{group}.json,hosts/{hostname}.json`) and the key-by-key merge
    source.py   the agent's git source: fetch, check trust (signature, ancestry, files), stage a document
    rollout.py  waves: which host applies a commit when (`RolloutGate`, computed from the commit time by default)
    check.py    `op-dbus check`: offline validation of state files and fleet repositories, `path:line: message`
"""
