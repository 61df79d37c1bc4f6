"""One module per state section; each implements the contract in `op_dbus.plugin`."""
