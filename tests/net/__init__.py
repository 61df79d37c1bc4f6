"""Tests of the net plugin against the real kernel and a real Open vSwitch."""
