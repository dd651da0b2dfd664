"""Prompt templates for zero-shot classification.

A template is a sentence with one ``{}`` placeholder for the class name.
Named sets live here; ``get_templates`` also reads a text file with one
template per line, accepting CLIP_benchmark's ``{c}`` spelling too.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from react.errors import ReactError

# The 80 prompts of the CLIP paper's ImageNet ensemble.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# A short set for quick runs and for retrieval queries.
SIMPLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of the {}.",
    "a drawing of a {}.",
    "a cartoon {}.",
)

# The bare class name: what a caption-free baseline would use.
CLASSNAME_TEMPLATES: tuple[str, ...] = ("{}",)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet": IMAGENET_TEMPLATES,
    "simple": SIMPLE_TEMPLATES,
    "classname": CLASSNAME_TEMPLATES,
}
DEFAULT_TEMPLATES = "imagenet"

# CLIP_benchmark writes "{c}"; some files use a named "{classname}".
_NAMED_PLACEHOLDER = re.compile(r"\{(?:c|classname|class)\}")


def normalize_template(template: str, where: str = "template") -> str:
    """Return ``template`` with its one class-name placeholder spelled ``{}``."""
    text = _NAMED_PLACEHOLDER.sub("{}", template.strip())
    if text.count("{}") != 1:
        raise ReactError(f"{where}: a template needs exactly one {{}} or {{c}} placeholder: {template!r}")
    # Any other brace would break str.format later; fail here, naming the line.
    if text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
        raise ReactError(f"{where}: stray brace in template: {template!r}")
    return text


def normalize_templates(templates: Sequence[str], where: str = "templates") -> list[str]:
    out = [normalize_template(t, where) for t in templates if t.strip()]
    if not out:
        raise ReactError(f"{where}: no templates")
    return out


def read_template_file(path: str | Path) -> list[str]:
    """One template per line; blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReactError(f"cannot read templates file {path}: {exc.__class__.__name__}") from None
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return normalize_templates(lines, str(path))


def get_templates(name_or_file: str | Path | Sequence[str] | None = None) -> list[str]:
    """A named set (``imagenet``, ``simple``, ``classname``), a text file, or a list.

    ``None`` gives the default set (the 80 ImageNet prompts)."""
    if name_or_file is None:
        return list(TEMPLATE_SETS[DEFAULT_TEMPLATES])
    if not isinstance(name_or_file, (str, Path)):
        return normalize_templates(list(name_or_file))
    key = str(name_or_file)
    if key.lower() in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[key.lower()])
    if Path(key).is_file():
        return read_template_file(key)
    names = ", ".join(sorted(TEMPLATE_SETS))
    raise ReactError(f"unknown templates {key!r}: not a template set ({names}) nor a file")


def describe_templates(name_or_file: str | Path | Sequence[str] | None) -> str:
    """A short label for logs: the set name, the file name, or 'custom'."""
    if name_or_file is None:
        return DEFAULT_TEMPLATES
    if isinstance(name_or_file, (str, Path)):
        return str(name_or_file)
    return "custom"
