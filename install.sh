#!/bin/sh
# Install op-dbus as a systemd service, in one of the deployment guide's modes.
#
#   ./install.sh                     full: every plugin (the container layer included), audit log, agent
#   ./install.sh --no-proxmox        standalone: D-Bus plugins + audit log, no container layer
#   ./install.sh --agent-only        D-Bus plugins only, no audit log (drift goes to the journal)
#   ./install.sh --read-only         discovery: the agent never changes the system (combines with the above)
#   ./install.sh --uninstall [--purge]
#   ./install.sh --collector [--db URL] [--listen HOST:PORT] [--tls-cert PEM --tls-key PEM] [--workers N]
#                                    the fleet collector instead (op-dbus[collector] in the same venv, the unit
#                                    op-dbus-collector.service, its options in /etc/op-dbus-collector/collector.env,
#                                    0600); --collector --uninstall [--purge] removes it (--purge: its database and
#                                    witness key too). No agent is installed or touched.
#
# Other options:
#   --wheelhouse DIR     install offline from a directory of wheels (pip --no-index --find-links DIR), pinned by
#                        DIR/requirements.txt: every wheel as NAME==VERSION --hash=sha256:... (pip --require-hashes;
#                        `python -m lab wheels` writes it)
#   --requirements FILE  with --wheelhouse: the pinned requirements file, if it is not DIR/requirements.txt
#   --source SPEC        what pip installs without --wheelhouse (default: this checkout if install.sh sits in one,
#                        else `op-dbus`)
#   --mode shadow|enforce  the agent's mode (default shadow: record drift, change nothing)
#   --user NAME          run the agent as system user NAME (created if missing; a-z, 0-9, _ and -, at most 32) and
#                        install the D-Bus policy file for it (/etc/dbus-1/system.d/op-dbus.conf); default: root
#   --interval SECONDS   full reconciliation interval (default 300)
#   --metrics HOST:PORT  serve Prometheus metrics on loopback
#   --watchdog SECONDS   WatchdogSec of the service (default 30)
#   --no-start           install and enable, but do not (re)start the service now
#   --db URL             collector: its database, sqlite:////ABSOLUTE/PATH or postgresql://USER@HOST[:PORT]/DB[?...]
#                        (default: SQLite in its state directory); never a password in the URL: authenticate by
#                        peer, certificate or a password file
#   --listen HOST:PORT   collector: where it serves (default 127.0.0.1:8470); an address off loopback needs
#                        --tls-cert and --tls-key (absolute paths the service can read)
#   --workers N          collector: server processes, 1 to 64 (default 1)
#   --purge              with --uninstall: also remove the audit log, /etc/op-dbus and the user
#
# Idempotent: running it again upgrades the package, rewrites the unit and keeps state.json and the log.
# Every argument is checked against a strict pattern before anything is written: they end up in the unit, the
# environment file and the D-Bus policy, where a stray character would change what they say.
set -eu
umask 077   # what this writes is root's; files others must read are opened up one by one below

PREFIX=/opt/op-dbus
ETC=/etc/op-dbus
STATE_DIR=/var/lib/op-dbus
STATE_FILE=$ETC/state.json
UNIT=/etc/systemd/system/op-dbus.service
POLICY=/etc/dbus-1/system.d/op-dbus.conf
MANIFEST=$ETC/install.manifest
CONTAINER_PLUGINS="lxc containers container proxmox podman nspawn"
HERE=$(cd "$(dirname "$0")" && pwd)

layer=full
read_only=false
mode=shadow
user=root
wheelhouse=
requirements=
source=
interval=300
metrics=
watchdog=30
start=true
action=install
purge=false
collector=false
db=
listen=127.0.0.1:8470
collector_opts=   # the collector's options given, refused without --collector
tls_cert=
tls_key=
workers=1

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --no-proxmox) layer=standalone ;;
        --agent-only) layer=agent ;;
        --read-only) read_only=true ;;
        --mode) mode=${2:?--mode needs shadow or enforce}; shift ;;
        --enforce) mode=enforce ;;
        --user) user=${2:?--user needs a name}; shift ;;
        --wheelhouse) wheelhouse=${2:?--wheelhouse needs a directory}; shift ;;
        --requirements) requirements=${2:?--requirements needs a file}; shift ;;
        --source) source=${2:?--source needs a pip requirement or path}; shift ;;
        --interval) interval=${2:?}; shift ;;
        --metrics) metrics=${2:?}; shift ;;
        --watchdog) watchdog=${2:?}; shift ;;
        --no-start) start=false ;;
        --uninstall) action=uninstall ;;
        --purge) purge=true ;;
        --collector) collector=true ;;
        --db) collector_opts="$collector_opts --db"; db=${2:?--db needs a URL}; shift ;;
        --listen) collector_opts="$collector_opts --listen"; listen=${2:?--listen needs HOST:PORT}; shift ;;
        --tls-cert) collector_opts="$collector_opts --tls-cert"; tls_cert=${2:?--tls-cert needs a file}; shift ;;
        --tls-key) collector_opts="$collector_opts --tls-key"; tls_key=${2:?--tls-key needs a file}; shift ;;
        --workers) collector_opts="$collector_opts --workers"; workers=${2:?--workers needs a number}; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

# -- arguments: each must match its pattern whole (case patterns match the whole word; a newline never passes) ---
case "$mode" in shadow|enforce) ;; *) die "--mode must be shadow or enforce" ;; esac
case "$user" in
    ""|*[!a-z0-9_-]*|[!a-z_]*) die "--user: not a user name: a-z, 0-9, _ and -, starting with a letter or _" ;;
esac
[ "${#user}" -le 32 ] || die "--user: at most 32 characters"
positive() {  # NAME VALUE MAX: a whole number of seconds from 1 to MAX
    case "$2" in ""|*[!0-9]*|0*) die "$1: expected a whole number of seconds (1 to $3), got '$2'" ;; esac
    [ "${#2}" -le 7 ] && [ "$2" -le "$3" ] || die "$1: expected a whole number of seconds (1 to $3), got '$2'"
}
positive --interval "$interval" 86400
positive --watchdog "$watchdog" 3600
if [ -n "$metrics" ]; then
    port=${metrics##*:}
    case "$metrics" in
        127.0.0.1:*|localhost:*|"[::1]":*) ;;
        *) die "--metrics: expected 127.0.0.1:PORT, localhost:PORT or [::1]:PORT (loopback only), got '$metrics'" ;;
    esac
    case "$port" in ""|*[!0-9]*|0*) die "--metrics: not a port: '$port'" ;; esac
    [ "${#port}" -le 5 ] && [ "$port" -le 65535 ] || die "--metrics: not a port: '$port'"
fi
printable() {  # NAME VALUE: no control characters, no leading '-' (it would read as an option)
    case "$2" in *[![:print:]]*|-*) die "$1: control characters or a leading '-' are not allowed: '$2'" ;; esac
}
[ -z "$wheelhouse" ] || printable --wheelhouse "$wheelhouse"
[ -z "$requirements" ] || printable --requirements "$requirements"
[ -z "$source" ] || printable --source "$source"
[ -z "$requirements" ] || [ -n "$wheelhouse" ] || die "--requirements goes with --wheelhouse"

# -- the collector's arguments: they end up in its environment file, split on blanks into its command line -------
port_ok() {  # NAME PORT
    case "$2" in ""|*[!0-9]*|0*) die "$1: not a port: '$2'" ;; esac
    [ "${#2}" -le 5 ] && [ "$2" -le 65535 ] || die "$1: not a port: '$2'"
}
[ "$collector" = true ] || [ -z "$collector_opts" ] || die "${collector_opts# } go with --collector"
if [ "$collector" = true ]; then
    positive --workers "$workers" 64
    if [ -n "$tls_cert" ] || [ -n "$tls_key" ]; then
        [ -n "$tls_cert" ] && [ -n "$tls_key" ] || die "--tls-cert and --tls-key go together"
        for f in "$tls_cert" "$tls_key"; do
            case "$f" in /*) ;; *) die "--tls-cert/--tls-key: expected an absolute path, got '$f'" ;; esac
            case "$f" in *[!A-Za-z0-9._/-]*|*/../*|*/..) die "--tls-cert/--tls-key: only A-Z a-z 0-9 . _ / - in a path: '$f'" ;; esac
        done
    fi
    case "$listen" in *:*) ;; *) die "--listen: expected HOST:PORT, got '$listen'" ;; esac
    host=${listen%:*}
    port_ok --listen "${listen##*:}"
    bare=${host#\[}; bare=${bare%\]}   # an IPv6 address in brackets: checked without them
    case "$bare" in ""|*[!A-Za-z0-9.:-]*) die "--listen: not a host name or address: '$listen'" ;; esac
    case "$host" in
        127.0.0.1|localhost|"[::1]") ;;
        *) [ -n "$tls_cert" ] || die "--listen: $host is not loopback: plain HTTP is served on loopback only, give --tls-cert and --tls-key" ;;
    esac
    if [ -n "$db" ]; then
        case "$db" in *[!A-Za-z0-9._/@:%+=?\&,-]*) die "--db: only A-Z a-z 0-9 and . _ / @ : % + = ? & , - in the URL: '$db'" ;; esac
        case "$db" in
            sqlite:////?*) ;;
            postgresql://?*|postgresql+psycopg://?*)
                userinfo=${db#*://}; userinfo=${userinfo%%/*}
                case "$userinfo" in *@*) case "${userinfo%@*}" in *:*) die "--db: no password in the URL (it would sit in \
the environment file and the process list): authenticate by peer, certificate or a password file" ;; esac ;; esac ;;
            *) die "--db: expected sqlite:////ABSOLUTE/PATH or postgresql://USER@HOST/DB, got '$db'" ;;
        esac
    fi
fi

[ "$(id -u)" = 0 ] || die "run as root (it installs a system service)"

have_systemd() { [ -d /run/systemd/system ]; }

manifest_get() { [ -f "$MANIFEST" ] && sed -n "s/^$1=//p" "$MANIFEST" | tail -n 1 || true; }

uninstall() {
    if have_systemd && [ -f "$UNIT" ]; then
        systemctl disable --now op-dbus.service >/dev/null 2>&1 || true
    fi
    rm -f "$UNIT" "$ETC/agent.env"
    have_systemd && systemctl daemon-reload || true
    if [ -f "$POLICY" ] && grep -q 'op-dbus' "$POLICY"; then
        rm -f "$POLICY"
        have_systemd && systemctl reload dbus.service >/dev/null 2>&1 || true
    fi
    rm -rf "$PREFIX"
    rm -f /usr/local/bin/op-dbus
    created_state=$(manifest_get state_sha256)
    if [ -n "$created_state" ] && [ -f "$STATE_FILE" ] && \
       [ "$(sha256sum "$STATE_FILE" | cut -d' ' -f1)" = "$created_state" ] && [ "$purge" = false ]; then
        rm -f "$STATE_FILE"   # written by install.sh and never edited: ours to remove
    fi
    created_user=$(manifest_get created_user)
    if [ "$purge" = true ]; then
        rm -rf "$STATE_DIR" "$ETC"
        [ -n "$created_user" ] && userdel "$created_user" >/dev/null 2>&1 || true
        say "removed op-dbus, its configuration and its audit log"
    else
        rm -f "$MANIFEST" "$STATE_DIR/agent.json"
        rmdir "$ETC" 2>/dev/null || true
        say "removed op-dbus; kept the audit log in $STATE_DIR${created_user:+ and user $created_user} (--purge removes them)"
    fi
}

COLLECTOR_ETC=/etc/op-dbus-collector
COLLECTOR_UNIT=/etc/systemd/system/op-dbus-collector.service

uninstall_collector() {
    if have_systemd && [ -f "$COLLECTOR_UNIT" ]; then
        systemctl disable --now op-dbus-collector.service >/dev/null 2>&1 || true
    fi
    rm -f "$COLLECTOR_UNIT" "$COLLECTOR_ETC/collector.env"
    rm -rf "$COLLECTOR_UNIT.d"
    have_systemd && systemctl daemon-reload || true
    rmdir "$COLLECTOR_ETC" 2>/dev/null || true
    # the package stays while the agent uses it (its unit is installed)
    [ -f "$UNIT" ] || { rm -rf "$PREFIX"; rm -f /usr/local/bin/op-dbus; }
    if [ "$purge" = true ]; then
        # DynamicUser keeps the state in /var/lib/private, behind the /var/lib/op-dbus-collector link
        rm -rf /var/lib/op-dbus-collector /var/lib/private/op-dbus-collector "$COLLECTOR_ETC"
        say "removed the collector, its database and its witness key"
    else
        say "removed the collector; kept its database and witness key in /var/lib/op-dbus-collector (--purge removes them)"
    fi
}

if [ "$action" = uninstall ]; then
    if [ "$collector" = true ]; then uninstall_collector; else uninstall; fi
    exit 0
fi

# -- the package, in its own venv --------------------------------------------------------------------
python=$(command -v python3 || true)
[ -n "$python" ] || die "python3 is needed (>= 3.11)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is needed"
# The venv is readable by everyone (the agent may run as its own user), writable by root only.
umask 022
if [ ! -x "$PREFIX/bin/python" ]; then
    "$python" -m venv "$PREFIX" || die "cannot create a venv in $PREFIX (is python3-venv installed?)"
fi
if [ -z "$source" ]; then
    if [ -f "$HERE/pyproject.toml" ] && [ -z "$wheelhouse" ]; then source=$HERE; else source=op-dbus; fi
fi
# the collector's web and database stack comes with the extra (from a wheelhouse: the pins list it)
[ "$collector" = true ] && case "$source" in *\[*) ;; *) source="$source[collector]" ;; esac
pip="$PREFIX/bin/pip install -q --disable-pip-version-check --root-user-action=ignore --upgrade"
if [ -n "$wheelhouse" ]; then
    [ -d "$wheelhouse" ] || die "no wheelhouse at $wheelhouse"
    requirements=${requirements:-$wheelhouse/requirements.txt}
    [ -f "$requirements" ] || die "no pinned requirements at $requirements: an offline install takes every wheel's \
version and sha256 from it (NAME==VERSION --hash=sha256:HEX per line; \`python -m lab wheels\` writes one)"
    # --require-hashes: a wheel that is not the one pinned (another version, other bytes) is refused
    $pip --no-index --find-links "$wheelhouse" --require-hashes -r "$requirements" \
        || die "pip could not install the pinned requirements $requirements from $wheelhouse"
else
    $pip "$source" || die "pip could not install $source"
fi
ln -sf "$PREFIX/bin/op-dbus" /usr/local/bin/op-dbus
mkdir -p "$PREFIX/share/doc/op-dbus"
[ -f "$HERE/README.md" ] && cp "$HERE/README.md" "$PREFIX/share/doc/op-dbus/README.md"
umask 077
say "installed $("$PREFIX/bin/op-dbus" --version) in $PREFIX"

# -- the collector: its options and unit, and nothing of the agent -------------------------------------------------
if [ "$collector" = true ]; then
    "$PREFIX/bin/python" -c 'import op_dbus.fleet.app' 2>/dev/null \
        || die "the collector's dependencies are missing from $PREFIX: install op-dbus[collector] (a wheelhouse for it \
must hold the collector extra's wheels)"
    install -d -m 0755 -o root -g root "$COLLECTOR_ETC"
    collector_args="--listen $listen --workers $workers"
    [ -n "$db" ] && collector_args="--db $db $collector_args"
    # The service's dynamic user cannot read root's 0600 key: systemd hands both files to it as credentials
    # (a copy only that user can read, in a fixed directory) through a drop-in.
    creds=/run/credentials/op-dbus-collector.service
    if [ -n "$tls_cert" ]; then
        collector_args="$collector_args --tls-cert $creds/tls-cert --tls-key $creds/tls-key"
        install -d -m 0755 "$COLLECTOR_UNIT.d"
        printf '[Service]\nLoadCredential=tls-cert:%s\nLoadCredential=tls-key:%s\n' "$tls_cert" "$tls_key" \
            > "$COLLECTOR_UNIT.d/tls.conf"   # both checked above: absolute, A-Z a-z 0-9 . _ / - only
        chmod 0644 "$COLLECTOR_UNIT.d/tls.conf"
    else
        rm -rf "$COLLECTOR_UNIT.d"
    fi
    cat > "$COLLECTOR_ETC/collector.env.tmp" <<EOF
# Options of \`op-dbus collector serve\` (written by install.sh). Restart op-dbus-collector after a change.
OP_DBUS_COLLECTOR_ARGS="$collector_args"
EOF
    chmod 0600 "$COLLECTOR_ETC/collector.env.tmp"
    mv "$COLLECTOR_ETC/collector.env.tmp" "$COLLECTOR_ETC/collector.env"
    sed "s|/opt/op-dbus/|$PREFIX/|g" "$HERE/packaging/op-dbus-collector.service" > "$COLLECTOR_UNIT.tmp"
    chmod 0644 "$COLLECTOR_UNIT.tmp"
    mv "$COLLECTOR_UNIT.tmp" "$COLLECTOR_UNIT"
    if have_systemd; then
        systemctl daemon-reload
        systemctl enable op-dbus-collector.service >/dev/null 2>&1
        if [ "$start" = true ]; then
            systemctl restart op-dbus-collector.service \
                || die "op-dbus-collector.service did not start: journalctl -u op-dbus-collector"
            say "op-dbus-collector.service is running on $listen; \`op-dbus collector key\` prints its witness key"
        else
            say "op-dbus-collector.service is enabled; start it with \`systemctl start op-dbus-collector\`"
        fi
    else
        say "no systemd running here: installed $COLLECTOR_UNIT, not started"
    fi
    exit 0
fi

# -- the user, directories and the D-Bus policy --------------------------------------------------------
created_user=$(manifest_get created_user)
if [ "$user" != root ] && ! id "$user" >/dev/null 2>&1; then
    useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$user"
    created_user=$user
fi
install -d -m 0755 -o root -g root "$ETC"
install -d -m 0700 "$STATE_DIR"
chown "$user" "$STATE_DIR"
if [ "$user" != root ]; then
    sed "s/@USER@/$user/g" "$HERE/packaging/op-dbus.conf.in" > "$POLICY.tmp"   # $user: checked above
    chmod 0644 "$POLICY.tmp"
    mv "$POLICY.tmp" "$POLICY"
    have_systemd && { systemctl reload dbus.service >/dev/null 2>&1 || true; }
    say "installed the D-Bus policy $POLICY for user $user"
fi

# -- the plugins of this mode, and a state file of the current system ---------------------------------
plugins=$("$PREFIX/bin/python" -c 'from op_dbus.plugin import plugin_specs; print(" ".join(sorted(plugin_specs())))')
if [ "$layer" != full ]; then
    kept=
    for p in $plugins; do
        case " $CONTAINER_PLUGINS " in *" $p "*) ;; *) kept="$kept $p" ;; esac
    done
    plugins=${kept# }
fi
state_sha=$(manifest_get state_sha256)
if [ ! -f "$STATE_FILE" ]; then
    # One plugin at a time, so a plugin whose service is absent (no OVS, no container engine) is left out
    # with a warning instead of failing the install.
    # As the agent's user: the file then declares what the agent can see.
    "$PREFIX/bin/python" - "$STATE_FILE.tmp" "$user" $plugins <<'PY'
import json, subprocess, sys
out, user, names = sys.argv[1], sys.argv[2], sys.argv[3:]
as_user = [] if user == "root" else ["runuser", "-u", user, "--"]
doc = {"version": 1, "plugins": {}}
for name in names:
    p = subprocess.run([*as_user, sys.prefix + "/bin/op-dbus", "-o", "json", "introspect", name],
                       capture_output=True, text=True, cwd="/")
    if p.returncode == 0:
        doc["plugins"].update(json.loads(p.stdout)["plugins"])
    else:
        print(f"install.sh: warning: plugin {name} left out of the state file: {p.stderr.strip()}", file=sys.stderr)
with open(out, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY
    # readable by the agent's user, writable by root only (the agent refuses a state file others may write)
    chmod 0644 "$STATE_FILE.tmp"
    mv "$STATE_FILE.tmp" "$STATE_FILE"
    state_sha=$(sha256sum "$STATE_FILE" | cut -d' ' -f1)
    say "wrote $STATE_FILE from \`op-dbus introspect $plugins\`"
fi

# -- the service ----------------------------------------------------------------------------------------
run_args="--mode $mode --interval $interval"
mode_text="$mode mode"
[ "$layer" = agent ] && { run_args="$run_args --no-log"; mode_text="$mode_text, agent only (no audit log)"; }
[ "$read_only" = true ] && { run_args="$run_args --read-only"; mode_text="$mode_text, read-only"; }
[ -n "$metrics" ] && run_args="$run_args --metrics $metrics"
cat > "$ETC/agent.env.tmp" <<EOF
# Options of \`op-dbus run\` (written by install.sh; layer: $layer). Restart op-dbus after a change.
OP_DBUS_RUN_ARGS="$run_args"
EOF
chmod 0600 "$ETC/agent.env.tmp"
mv "$ETC/agent.env.tmp" "$ETC/agent.env"
caps=
if [ "$user" != root ] && [ "$read_only" = false ]; then
    caps="AmbientCapabilities=CAP_NET_ADMIN"
fi
# The sandbox profile: what this mode needs opened or may close (packaging/sandbox-*.conf, pasted into the unit).
if [ "$read_only" = true ]; then profile=read-only
elif [ "$layer" = full ]; then profile=containers
else profile=standalone
fi
sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@STATE_FILE@|$STATE_FILE|g" \
    -e "s|@USER@|$user|g" -e "s|@WATCHDOG_SEC@|$watchdog|g" -e "s|@MODE_TEXT@|$mode_text|g" \
    -e "s|@CAPABILITIES@|$caps|g" -e "/@SANDBOX@/{r $HERE/packaging/sandbox-$profile.conf" -e "d}" \
    "$HERE/packaging/op-dbus.service.in" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"

cat > "$MANIFEST" <<EOF
layer=$layer
mode=$mode
read_only=$read_only
user=$user
created_user=$created_user
state_sha256=$state_sha
EOF
chmod 0600 "$MANIFEST"

if have_systemd; then
    systemctl daemon-reload
    systemctl enable op-dbus.service >/dev/null 2>&1
    if [ "$start" = true ]; then
        systemctl restart op-dbus.service || die "op-dbus.service did not start: journalctl -u op-dbus"
        say "op-dbus.service is running ($mode_text); \`op-dbus status\` shows what it does"
    else
        say "op-dbus.service is enabled ($mode_text); start it with \`systemctl start op-dbus\`"
    fi
else
    say "no systemd running here: installed $UNIT, not started"
fi
