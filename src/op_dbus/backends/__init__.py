"""Thin async protocol clients (D-Bus, netlink, OVSDB, container APIs): no policy, errors translated here."""
