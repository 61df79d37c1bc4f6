"""`python -m op_dbus` is the `op-dbus` command."""

from op_dbus.cli.main import main

main()
