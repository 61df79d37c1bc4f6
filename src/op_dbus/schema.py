"""The JSON Schema of a state document, assembled from every installed plugin's model."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import load_plugins


def document_schema(names: list[str] | None = None) -> dict[str, Any]:
    plugins = load_plugins(names)
    sections = {name: p.model.model_json_schema(by_alias=True) for name, p in plugins.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "op-dbus state document",
        "type": "object",
        "additionalProperties": False,
        "required": ["version"],
        "properties": {
            "version": {"const": 1},
            "plugins": {"type": "object", "additionalProperties": False, "properties": sections},
        },
    }
