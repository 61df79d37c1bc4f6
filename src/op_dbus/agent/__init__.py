"""The agent (`op-dbus run`): keeps the declared state, listening to the system's own change events."""

from __future__ import annotations

from op_dbus.agent.core import Agent, AgentConfig

__all__ = ["Agent", "AgentConfig"]
