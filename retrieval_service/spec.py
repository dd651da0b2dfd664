"""What a task is: class names, templates, k, mode and thresholds, checked against limits.

    spec = validate_spec(["cat", "dog"], "imagenet", k=50, mode="t2i")

The one definition of a task's defaults (``TaskSpec``'s fields, ``Limits``,
``DEFAULT_DEDUP_THRESHOLD``, ``DEFAULT_MARGIN``): ``react retrieve``, ``react
serve`` and the HTTP request models all read them from here. Light on
purpose -- no numpy, faiss or Arrow -- so the command line can import it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from react.errors import ReactError

MODES = ("t2i", "t2t", "both")
MODE_INDEX = {"t2i": ("image",), "t2t": ("text",), "both": ("image", "text")}
# Retrieved images whose embeddings have at least this cosine similarity are collapsed (retrieval_service.dedup;
# clip-retrieval's ``deduplicate`` threshold).
DEFAULT_DEDUP_THRESHOLD = 0.94
DEFAULT_MARGIN = 0.05  # the low-coverage rule's margin, in cosine (retrieval_service.coverage)
# A retrieved image this close (cosine) to an excluded evaluation image is dropped (retrieval_service.exclude);
# calibrated on planted copies by benchmarks/decontam_calibrate.py (docs/service.md).
DEFAULT_EXCLUDE_THRESHOLD = 0.95
# Example images as queries (retrieval_service.examples): "mix" searches a class's text queries and its example
# images, "only" searches just the images for the classes that have examples (the others keep their text queries).
EXAMPLE_MODES = ("mix", "only")


@dataclass(frozen=True)
class Limits:
    """What one task may ask for; the service and the CLI enforce the same numbers."""

    max_classes: int = 10_000
    max_templates: int = 200
    max_queries: int = 1_000_000
    max_k: int = 1000
    max_text_chars: int = 500
    max_aliases: int = 100  # per class
    max_examples_per_class: int = 16         # example images of one class (retrieval_service.examples)
    max_examples: int = 1000                 # example images of one task
    max_example_bytes: int = 8 << 20         # one example image (the service's image upload limit)


class AliasConflict(ReactError):
    """Aliases that contradict the classes (an alias naming another class, a key naming none). No JSON
    Schema can state a relation between two fields, so the HTTP API answers it as a conflict (409)."""

    status = 409


@dataclass
class TaskSpec:
    classes: list[str]
    templates: list[str]
    k: int = 50
    mode: str = "t2i"
    threshold: float | None = None          # drop hits below this cosine similarity
    dedup_threshold: float | None = DEFAULT_DEDUP_THRESHOLD  # None: keep near-duplicate images
    coverage_margin: float = DEFAULT_MARGIN
    include_queries: bool = True            # the `queries` column (large for big tasks)
    exclude: list[str] = field(default_factory=list)  # exclusion sets (evaluation datasets) to decontaminate against
    exclude_threshold: float = DEFAULT_EXCLUDE_THRESHOLD
    # queries encoded and searched per step: a batched IVF scan reads each probed list once per
    # step, so at 10M rows 8,192 ran ~1.6x the q/s of 2,048 (docs/scale.md); 16 MiB of queries at d=512
    chunk: int = 8192
    batch_size: int = 256                   # texts per encoder batch
    aliases: dict[str, list[str]] = field(default_factory=dict)  # class -> more names searched for it
    per_class: int | None = None            # keep at most this many pairs per class (its best); None: no quota
    warnings: list[str] = field(default_factory=list)  # raised while validating (e.g. merged duplicates)
    # class name -> encoded example images (jpg/png/webp bytes), searched image -> image (retrieval_service.examples)
    examples: dict[str, list[bytes]] = field(default_factory=dict)
    example_mode: str = "mix"               # see EXAMPLE_MODES

    def names(self) -> list[tuple[str, int]]:
        """Every searched name and the class it counts for: the class names first (query ``c * n_templates
        + t`` is still class c's), then each class's aliases in class order."""
        out = [(c, i) for i, c in enumerate(self.classes)]
        return out + [(a, i) for i, c in enumerate(self.classes) for a in self.aliases.get(c, ())]

    @property
    def n_queries(self) -> int:
        """Text queries searched (names and aliases x templates; "only" drops those of classes with
        examples) plus example images."""
        searched = [c for _, c in self.names()
                    if not (self.example_mode == "only" and self.classes[c] in self.examples)]
        return len(searched) * len(self.templates) + self.n_examples

    @property
    def n_examples(self) -> int:
        return sum(len(v) for v in self.examples.values())

    def queries(self) -> list[str]:
        return [t.format(name) for name, _ in self.names() for t in self.templates]

    def to_json(self) -> dict:
        examples, self.examples = self.examples, {}  # image bytes stay out of the report: counts instead
        try:
            out = asdict(self)
        finally:
            self.examples = examples
        out.pop("warnings")
        out["examples"] = {c: len(v) for c, v in examples.items()}
        return out


def validate_spec(classes: Sequence, templates: Sequence | None, k: int, mode: str, threshold: float | None = None,
                  dedup_threshold: float | None = DEFAULT_DEDUP_THRESHOLD, limits: Limits = Limits(),
                  aliases: dict | None = None, per_class: int | None = None, **extra) -> TaskSpec:
    """A checked :class:`TaskSpec`; ReactError naming the first bad field.

    Class names are stripped; exact repeats are merged (ImageNet's list has
    two "crane"s) with a warning, since a row cannot carry one name twice.
    ``aliases`` maps a class to more names searched for it (:func:`check_aliases`);
    ``per_class`` caps each class's pairs after merging (its best are kept)."""
    from react.templates import get_templates, normalize_templates

    if not isinstance(classes, (list, tuple)) or not classes:
        raise ReactError("classes: need a non-empty list of class names")
    if len(classes) > limits.max_classes:
        raise ReactError(f"classes: {len(classes)} given, at most {limits.max_classes} allowed")
    names: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            raise ReactError(f"classes[{i}]: empty or not a string")
        c = " ".join(c.split())
        if len(c) > limits.max_text_chars:
            raise ReactError(f"classes[{i}]: {len(c)} characters, at most {limits.max_text_chars} allowed")
        if c in seen:
            warnings.append(f"class {c!r} given twice; merged")
            continue
        seen.add(c)
        names.append(c)
    if templates is None or isinstance(templates, str):
        tmpl = get_templates(templates)
    else:
        if not templates:
            raise ReactError("templates: empty list")
        if any(not isinstance(t, str) for t in templates):
            raise ReactError("templates: every template must be a string")
        tmpl = normalize_templates(list(templates))
    if len(tmpl) > limits.max_templates:
        raise ReactError(f"templates: {len(tmpl)} given, at most {limits.max_templates} allowed")
    if any(len(t) > limits.max_text_chars for t in tmpl):
        raise ReactError(f"templates: a template is longer than {limits.max_text_chars} characters")
    alias_map = check_aliases(aliases or {}, names, limits, warnings)
    n_names = len(names) + sum(len(v) for v in alias_map.values())
    if n_names * len(tmpl) > limits.max_queries:
        what = f"{len(names)} classes" + (f" + {n_names - len(names)} aliases" if n_names > len(names) else "")
        raise ReactError(f"{what} x {len(tmpl)} templates = {n_names * len(tmpl)} queries, "
                         f"at most {limits.max_queries} allowed")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise ReactError(f"k must be an integer in [1, {limits.max_k}], got {k!r}")
    if mode not in MODES:
        raise ReactError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ReactError(f"per_class must be a positive integer, got {per_class!r}")
        # k is per query: a class gathers at most k x its queries x the indices searched, before merging.
        most_aliases = max((len(v) for v in alias_map.values()), default=0)
        most = k * len(tmpl) * (1 + most_aliases) * len(MODE_INDEX[mode])
        if per_class >= most:
            warnings.append(f"per_class {per_class} >= {most} (k x queries per class): the quota cannot cut anything")
    if threshold is not None and not -1.0 <= float(threshold) <= 1.0:
        raise ReactError(f"threshold must lie in [-1, 1], got {threshold}")
    if dedup_threshold is not None and not 0.0 < float(dedup_threshold) <= 1.0:
        raise ReactError(f"dedup_threshold must lie in (0, 1], got {dedup_threshold}")
    exclude_threshold = extra.get("exclude_threshold", DEFAULT_EXCLUDE_THRESHOLD)
    if not 0.0 < float(exclude_threshold) <= 1.0:
        raise ReactError(f"exclude_threshold must lie in (0, 1], got {exclude_threshold}")
    if extra.get("examples") or "example_mode" in extra:
        extra["examples"], extra["example_mode"] = validate_examples(
            extra.get("examples") or {}, extra.get("example_mode"), names, limits)
    return TaskSpec(names, tmpl, k, mode, threshold, dedup_threshold, aliases=alias_map, per_class=per_class,
                    warnings=warnings, **extra)


def check_aliases(aliases: dict, classes: list[str], limits: Limits, warnings: list[str]) -> dict[str, list[str]]:
    """``{class: [alias, ...]}`` with whitespace normalized. An alias that repeats, or is its own class's
    name, is merged with a warning; a key naming no class of the task, an alias that is another class's
    name or an alias given to two classes is refused (:class:`AliasConflict`): its hits could not be
    labelled with one class."""
    if not isinstance(aliases, dict):
        raise ReactError("aliases: need an object mapping a class name to a list of aliases")
    known = {c.casefold(): c for c in classes}
    owner: dict[str, str] = {}  # casefolded alias -> its class
    out: dict[str, list[str]] = {}
    for key, given in aliases.items():
        if not isinstance(key, str):
            raise ReactError("aliases: a key is not a string")
        cls = " ".join(key.split())
        if cls not in classes:
            raise AliasConflict(f"aliases: {cls!r} is not a class of the task")
        if isinstance(given, str) or not isinstance(given, (list, tuple)):
            raise ReactError(f"aliases[{cls!r}]: need a list of strings")
        if len(given) > limits.max_aliases:
            raise ReactError(f"aliases[{cls!r}]: {len(given)} given, at most {limits.max_aliases} allowed")
        kept = out.setdefault(cls, [])
        for i, alias in enumerate(given):
            if not isinstance(alias, str) or not alias.strip():
                raise ReactError(f"aliases[{cls!r}][{i}]: empty or not a string")
            alias = " ".join(alias.split())
            if len(alias) > limits.max_text_chars:
                raise ReactError(f"aliases[{cls!r}][{i}]: {len(alias)} characters, at most "
                                 f"{limits.max_text_chars} allowed")
            folded = alias.casefold()
            if known.get(folded, cls) != cls:
                raise AliasConflict(f"aliases[{cls!r}]: {alias!r} is the name of another class, "
                                    f"{known[folded]!r}; its pairs cannot count for both")
            if owner.get(folded, cls) != cls:
                raise AliasConflict(f"aliases: {alias!r} is given for both {owner[folded]!r} and {cls!r}")
            if folded == cls.casefold() or folded in owner:
                warnings.append(f"alias {alias!r} of class {cls!r} repeats a name already searched; merged")
                continue
            owner[folded] = cls
            kept.append(alias)
        if len(kept) > limits.max_aliases:
            raise ReactError(f"aliases[{cls!r}]: {len(kept)} given, at most {limits.max_aliases} allowed")
    return {c: v for c, v in out.items() if v}


def validate_examples(examples, example_mode: str | None, names: list[str],
                      limits: Limits = Limits()) -> tuple[dict[str, list[bytes]], str]:
    """Checked ``(examples, example_mode)``: every key one of the task's class names (spaces normalized
    as class names are), every class 1..max_examples_per_class images of at most max_example_bytes.
    Only sizes are checked here (no imaging library): decoding is retrieval_service.examples'."""
    mode = "mix" if example_mode is None else example_mode
    if mode not in EXAMPLE_MODES:
        raise ReactError(f"example_mode must be one of {', '.join(EXAMPLE_MODES)}, got {example_mode!r}")
    if not isinstance(examples, dict):
        raise ReactError("examples: need a mapping of class name -> list of images")
    known = set(names)
    out: dict[str, list[bytes]] = {}
    for key, images in examples.items():
        name = " ".join(str(key).split())
        if name not in known:
            raise ReactError(f"examples: {key!r} is not one of the task's classes")
        if name in out:
            raise ReactError(f"examples: class {name!r} given twice")
        if not isinstance(images, (list, tuple)) or not images:
            raise ReactError(f"examples[{name!r}]: need a non-empty list of images")
        if len(images) > limits.max_examples_per_class:
            raise ReactError(f"examples[{name!r}]: {len(images)} images, at most {limits.max_examples_per_class} "
                             "allowed")
        for i, raw in enumerate(images):
            if not isinstance(raw, (bytes, bytearray)) or not raw:
                raise ReactError(f"examples[{name!r}][{i}]: empty or not image bytes")
            if len(raw) > limits.max_example_bytes:
                raise ReactError(f"examples[{name!r}][{i}]: {len(raw)} bytes, at most {limits.max_example_bytes} "
                                 "allowed")
        out[name] = [bytes(r) for r in images]
    total = sum(len(v) for v in out.values())
    if total > limits.max_examples:
        raise ReactError(f"examples: {total} images, at most {limits.max_examples} allowed")
    # Keep the task's class order, so the query plan (and its labels) does not depend on the mapping's order.
    return {c: out[c] for c in names if c in out}, mode
