"""Overlaying a recorded state (a block's snapshot) on a state document: how the agent adopts a manual apply.

Objects are matched by key in mappings (`units`) and by identity in lists of objects (`interfaces` by
`name`, `routes` by destination, table and metric); a matched object takes the recorded fields and keeps
the others it declares; anything else is replaced. The result is validated again by the caller.
"""

from __future__ import annotations

import copy
from typing import Any


def identity(item: Any) -> Any:
    if not isinstance(item, dict):
        return None
    if "name" in item:
        return ("name", item["name"])
    if "destination" in item:
        return ("route", item.get("destination"), item.get("table"), item.get("metric"))
    return None


def overlay(base: Any, top: Any) -> Any:
    """`base` with `top` laid over it (neither is modified)."""
    if isinstance(base, dict) and isinstance(top, dict):
        out = copy.deepcopy(base)
        for key, value in top.items():
            out[key] = overlay(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(top, list) and all(identity(x) is not None for x in base + top):
        out_list = copy.deepcopy(base)
        where = {identity(x): i for i, x in enumerate(out_list)}
        for item in top:
            key = identity(item)
            if key in where:
                out_list[where[key]] = overlay(out_list[where[key]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(top)


def overlay_document(document: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """A state document with a block's recorded state laid over the sections it names (others untouched)."""
    out = copy.deepcopy(document)
    plugins = out.setdefault("plugins", {})
    for name, section in (recorded.get("plugins") or {}).items():
        plugins[name] = overlay(plugins[name], section) if name in plugins else copy.deepcopy(section)
    return out
