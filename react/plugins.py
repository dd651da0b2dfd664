"""Where stages plug into the core.

The core never names a stage, not even as a string: a stage registers what it
adds as an entry point of this distribution (``pyproject.toml``), and the core
looks it up by group and name when it is needed. Three groups:

- ``react.commands``: modules with ``add_parsers(subparsers)``, assembled by ``react``;
- ``react.architectures``: ``apply(model, react_config)`` for a model directory whose
  ``open_clip_config.json`` names an extended architecture (``react.architecture``);
- ``react.run_formats``: ``load(run_dir, device=...)`` for a directory holding ``RUN_FILE``.
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from react.errors import ReactError

COMMANDS = "react.commands"
ARCHITECTURES = "react.architectures"
RUN_FORMATS = "react.run_formats"


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, in name order."""
    return {ep.name: ep for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}


def load(group: str, name: str, what: str) -> Any:
    """The object registered as ``name`` in ``group``; ``what`` names the caller's object in the error."""
    found = registered(group).get(name)
    if found is None:
        known = ", ".join(registered(group)) or "none installed"
        raise ReactError(f"{what}: unknown {group.split('.')[-1][:-1].replace('_', ' ')} {name!r} "
                         f"(registered: {known}); is the react-clip package installed (`make setup`)?")
    return found.load()
