"""Downstream classes of the embedded task, from Tux Paint's stamp folders.

Longest-prefix match on the stamp's folder path. Stamps outside these
folders still belong to the web corpus; they are just never test images.
The names are what a user would type as a task instruction.
"""
from __future__ import annotations

STAMP_CLASSES: dict[str, str] = {
    "animals/birds": "bird",
    "animals/mammals": "mammal",
    "animals/insects": "insect",
    "animals/fish": "fish",
    "food/fruit": "fruit",
    "food/vegetables": "vegetable",
    "plants/flowers": "flower",
    "plants/trees": "tree",
    "town/houses": "house",
    "town/roadsigns": "road sign",
    "town/monuments": "monument",
    "town/flags": "flag",
    "seasonal/christmas": "christmas item",
    "seasonal/halloween": "halloween item",
    "household/tools": "tool",
    "clothes": "clothing",
    "space/planets": "planet",
    "vehicles": "vehicle",
    "sports": "sports equipment",
    "hobbies/music": "musical instrument",
}


def stamp_label(folder: str) -> str | None:
    best = None
    for prefix, name in STAMP_CLASSES.items():
        if (folder == prefix or folder.startswith(prefix + "/")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, name)
    return best[1] if best else None
