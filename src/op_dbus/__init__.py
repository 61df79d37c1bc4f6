"""op-dbus: declarative state for Linux servers over native protocols, with a tamper-evident log."""

__version__ = "0.1.0"
