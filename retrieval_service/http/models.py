"""Request and response bodies of the service's own API (``/v1/...``).

Unknown fields are refused (a typo in an option must not be silently
ignored); the clip-retrieval compatibility endpoint has its own, lenient
model in ``compat_models.py``. The request models state every limit the service
enforces -- ranges, lengths, "exactly one of", the operator's configured
maxima (``request_models(cfg)`` builds them per service) -- so the OpenAPI
schema is the contract: a request it allows is answered 2xx unless the index
or an image's content says otherwise, and one it forbids gets a 422 naming the
field (tests/test_api_fuzz.py holds the service to that with schemathesis)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator

from retrieval_service.config import config_default
from retrieval_service.spec import DEFAULT_DEDUP_THRESHOLD, DEFAULT_EXCLUDE_THRESHOLD, Limits

# At least one character that is not whitespace as str.strip() sees it: the characters listed are exactly
# those for which str.isspace() is true. Not \S: regex engines disagree on U+001C..U+001F (the fuzzer's
# generator took "\x1e" for text, which strip() removes).
TEXT_PATTERN = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# One class-name placeholder ({}, {c}, {class} or {classname}) and no other brace (react/templates.py).
TEMPLATE_PATTERN = r"^[^{}]*\{(?:c|class|classname)?\}[^{}]*$"
EMBEDDING_MAX_ABS = 1e6  # a component beyond this is no embedding (and overflows float32 norms)
EMBEDDING_MIN_ABS = 1e-6  # at least one component this large: the vector has a direction
MAX_PER_CLASS = 1 << 31  # per_class beyond any subset's size; bounded so the schema states a maximum


def _json_integer(value):
    """JSON Schema's integer: 5 and 5.0, but not true or "5" (pydantic's lax int takes both; its strict
    int refuses 5.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("Input should be a valid integer")
    return value


def json_int(**constraints) -> type:
    """An integer field as JSON Schema's: 5 or 5.0, not true or "5"; ``constraints`` (ge, le) sit on the
    integer itself, so the OpenAPI schema states them as minimum/maximum."""
    return Annotated[int, Strict(False), Field(**constraints), BeforeValidator(_json_integer)]


class StrictModel(BaseModel):
    # strict: a JSON 0 is no boolean and false no integer (the schema says so; lax mode would accept them)
    model_config = ConfigDict(extra="forbid", regex_engine="python-re", strict=True)


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": "..."}``; request validation adds ``detail``."""

    error: str
    detail: Optional[list[dict]] = None


ERROR_DESCRIPTIONS = {
    400: "malformed JSON, or a value the schema cannot state (an undecodable image, an embedding whose length "
         "is not the named index's dimension, a modality the index lacks, classes x templates over the limit)",
    401: "missing or invalid API key (only when the service runs with --api-key-file)",
    403: "forbidden (image_url fetching disabled; a stored image path outside the corpus)",
    404: "unknown index, job or row",
    405: "method not allowed (the Allow header lists the allowed ones)",
    409: "conflict: the index has no loadable model for text/image queries, a reload failed (the previous "
         "index keeps serving), a job's result is not ready, or a task's aliases contradict its classes (a key "
         "that is no class, an alias that is another class's name or given for two classes)",
    410: "the job's result file is gone",
    413: "request body, image or image size over the service's limits",
    422: "the request does not match the schema (type, range, length, exactly-one-of)",
    429: "too many queued or running jobs; retry later",
    503: "the indices are still loading, or failed to load (the message says why)",
    504: "an image_url did not answer in time",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error statuses it can answer, each an :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


def _one_of(fields: dict[str, dict], exactly: bool) -> dict:
    """JSON Schema for "exactly one" (oneOf) or "at least one" (anyOf) of ``fields`` present and not null."""
    branches = [{"required": [name], "properties": {name: schema}} for name, schema in fields.items()]
    return {"oneOf" if exactly else "anyOf": branches}


def check_embedding(values: Optional[list[float]]) -> Optional[list[float]]:
    if values is not None and not any(abs(v) >= EMBEDDING_MIN_ABS for v in values):
        raise ValueError(f"all components are below {EMBEDDING_MIN_ABS:g} in magnitude (no direction)")
    return values


def embedding_field(dim: Optional[int], description: str, **kw):
    """An embedding: finite bounded numbers, at least one not ~0; exactly ``dim`` of them when every
    served index has that dimension."""
    item = Field(ge=-EMBEDDING_MAX_ABS, le=EMBEDDING_MAX_ABS, allow_inf_nan=False)
    extra = {"contains": {"anyOf": [{"minimum": EMBEDDING_MIN_ABS}, {"maximum": -EMBEDDING_MIN_ABS}]}}
    if dim is None:
        description += " (as many values as the named index's dimension)"
    return (Optional[list[Annotated[float, item]]],
            Field(None, min_length=dim or 1, max_length=dim, description=description, json_schema_extra=extra, **kw))


def request_models(max_search_k: int = config_default("max_search_k"), limits: Limits = Limits(),
                   dim: Optional[int] = None, template_sets: Optional[dict[str, int]] = None,
                   default_set: str = "imagenet") -> SimpleNamespace:
    """The request models with this service's limits: ``max_search_k`` (k of one search), ``limits``
    (task retrieval and text length), ``dim`` (every index's dimension, None when they differ),
    ``template_sets`` (name -> number of templates; default: react.templates' sets)."""
    text_chars = limits.max_text_chars
    if template_sets is None:
        from react.templates import DEFAULT_TEMPLATES, TEMPLATE_SETS

        template_sets, default_set = {n: len(t) for n, t in TEMPLATE_SETS.items()}, DEFAULT_TEMPLATES
    # A named set larger than --max-templates is refused (400): the schema offers only those that fit, and
    # when the default set does not fit, templates must be given.
    sets = tuple(n for n, count in template_sets.items() if count <= limits.max_templates)
    default_fits = template_sets.get(default_set, 0) <= limits.max_templates
    template_list = Annotated[list[Annotated[str, Field(max_length=text_chars, pattern=TEMPLATE_PATTERN)]],
                              Field(min_length=1, max_length=limits.max_templates)]
    if sets and default_fits:
        templates_type, templates_default = Union[Literal[sets], template_list, None], None  # type: ignore
    elif sets:
        templates_type, templates_default = Union[Literal[sets], template_list], ...  # type: ignore
    else:
        templates_type, templates_default = template_list, ...
    emb_type, emb_field = embedding_field(dim, "a query vector in the index's embedding space")

    class SearchRequest(StrictModel):
        """Exactly one of ``text``, ``image`` (base64) or ``embedding``."""

        model_config = ConfigDict(extra="forbid", regex_engine="python-re", strict=True, json_schema_extra=_one_of({
            "text": {"type": "string"}, "image": {"type": "string"}, "embedding": {"type": "array"}}, exactly=True))

        text: Optional[str] = Field(None, min_length=1, max_length=text_chars, pattern=TEXT_PATTERN)
        image: Optional[str] = Field(None, min_length=1, description="base64 image bytes (a data: URL is accepted "
                                     "too); must decode to an image within the size and pixel limits")
        embedding: emb_type = emb_field
        k: json_int(ge=1, le=max_search_k) = Field(10, description="results to return (clamped to the index size)")
        modality: Literal["image", "text"] = Field("image", description="search the image index (T2I) or the "
                                                   "text index")
        index: Optional[str] = Field(None, description="index name (default: the first one served)")

        _embedding = field_validator("embedding")(classmethod(lambda cls, v: check_embedding(v)))

        @model_validator(mode="after")
        def _exactly_one(self):
            given = [f for f in ("text", "image", "embedding") if getattr(self, f) is not None]
            if len(given) != 1:
                raise ValueError(f"give exactly one of text, image, embedding (got {', '.join(given) or 'none'})")
            return self

    class_name = Annotated[str, Field(min_length=1, max_length=text_chars, pattern=TEXT_PATTERN)]

    class RetrieveRequest(StrictModel):
        classes: list[class_name] = Field(
            ..., min_length=1, max_length=limits.max_classes,
            description=f"the task's class names (repeats are merged; classes x templates at most "
                        f"{limits.max_queries} queries)")
        templates: templates_type = Field(  # type: ignore[valid-type]
            templates_default, description=f"a named set or a list with one {{}} each; default {default_set}"
            + ("" if default_fits else f" (not on this service: more than {limits.max_templates} templates)"))
        k: json_int(ge=1, le=limits.max_k) = Field(50, description="results per query")
        mode: Literal["t2i", "t2t", "both"] = "t2i"
        index: Optional[str] = None
        threshold: Optional[float] = Field(None, ge=-1.0, le=1.0, description="drop hits below this cosine "
                                           "similarity")
        dedup_threshold: Optional[float] = Field(DEFAULT_DEDUP_THRESHOLD, gt=0.0, le=1.0,
                                                 description="collapse retrieved images at least this similar; "
                                                             "null: off")
        include_queries: bool = Field(True, description="list the queries that found each pair")
        inline: bool = Field(False, description="answer small tasks in the response body instead of as a job")
        exclude: list[Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")]] = Field(
            [], max_length=32, description="decontamination: names of this service's exclusion sets (react serve "
                                           "--exclude-set NAME=DATASET); retrieved images within exclude_threshold "
                                           "cosine of any of their images are dropped, counted per class")
        exclude_threshold: float = Field(DEFAULT_EXCLUDE_THRESHOLD, gt=0.0, le=1.0,
                                         description="cosine similarity at which a retrieved image counts as a "
                                                     "copy of an excluded one")
        aliases: dict[Annotated[str, Field(min_length=1, max_length=text_chars)], Annotated[list[class_name], Field(min_length=1, max_length=limits.max_aliases)]] = \
            Field({}, max_length=limits.max_classes, description="more names searched per class: {class: [alias, "
                  "...]}; each alias x every template is an extra query whose pairs are labelled with the class "
                  "(409 if a key is not one of classes, or an alias is another class's name or given for two)")
        per_class: Optional[json_int(ge=1, le=MAX_PER_CLASS)] = Field(  # type: ignore[valid-type]
            None, description="keep at most this many pairs per class after merging, exclusion and collapse "
                              "(its best by similarity); null: no quota. k stays per query")

        examples: example_images_type(limits) = Field(  # type: ignore[valid-type]
            None, max_length=limits.max_classes,
            description=f"example images as queries: class name (one of classes) -> base64 images (jpg, png, webp; "
                        f"a data: URL is accepted too), 1 to {limits.max_examples_per_class} a class, each at most "
                        f"{limits.max_example_bytes} bytes, {limits.max_examples} in all; each is encoded with the "
                        f"index's model, searched on the image index, and its hits merged under the class "
                        f"(queries column: example:<class>#<i>)")
        example_mode: Optional[Literal["mix", "only"]] = Field(
            None, description="mix (default): text and example queries; only: a class with examples is searched "
                              "by its images alone")

    return SimpleNamespace(SearchRequest=SearchRequest, RetrieveRequest=RetrieveRequest, dim=dim)


def example_images_type(limits: Limits) -> type:
    """``examples``' type: {class name: [base64 image, ...]} with the task's limits stated in the schema."""
    b64 = Annotated[str, Field(min_length=1, max_length=(limits.max_example_bytes * 4) // 3 + 8)]
    # No pattern on the key: JSON Schema would leave a non-matching key's value unchecked (patternProperties);
    # a key that names none of the task's classes is a 400 anyway.
    name = Annotated[str, Field(min_length=1, max_length=limits.max_text_chars)]
    return Optional[dict[name, Annotated[list[b64], Field(min_length=1, max_length=limits.max_examples_per_class)]]]


_DEFAULT = request_models()
SearchRequest = _DEFAULT.SearchRequest      # with the default limits (clients, docs); the app builds its own
RetrieveRequest = _DEFAULT.RetrieveRequest


class Ready(BaseModel):
    ready: bool
    indices: list[str]


class Deleted(BaseModel):
    deleted: str


class SearchHit(BaseModel):
    row: int
    key: Optional[str]
    url: Optional[str]
    caption: Optional[str]
    similarity: float
    image_path: Optional[str] = None


class SearchResponse(BaseModel):
    index: str
    modality: str
    query: Literal["text", "image", "embedding"]
    k: int
    results: list[SearchHit]


class ClassCoverage(BaseModel):
    """One row of a task's coverage table (retrieval_service.coverage.ClassStats)."""

    model_config = ConfigDict(extra="allow")  # later columns pass through

    name: str
    queries: int = Field(description="queries (templates) formed for the class")
    hits: int = Field(description="(query, pair) hits above the threshold, before merging")
    unique: int = Field(description="subset rows labelled with the class")
    exclusive: int = Field(description="of those, rows no other class retrieved")
    coverage: Optional[float] = Field(description="mean similarity of the class's 10 best unique pairs")
    p10: Optional[float]
    p50: Optional[float]
    p90: Optional[float]
    max: Optional[float]
    low_coverage: bool = Field(description="relative rule: far below the task's median coverage (or nothing found)")
    excluded: int = Field(0, description="pairs dropped as copies of evaluation images")
    not_covered: Optional[bool] = Field(None, description="absolute rule: coverage below the index's calibrated "
                                                          "cut (null: the index has no calibration)")
    pairs_above: Optional[int] = Field(None, description="estimated corpus pairs at or above the count's "
                                                         "similarity (summary.count_similarity), over the "
                                                         "class's queries")
    pairs_above_lower_bound: bool = Field(False, description="pairs_above is a lower bound (counted from the "
                                                             "top-k tail with the k-th hit still above the cut)")
    k_too_small: bool = Field(False, description="a query of the class has more than k pairs above the cut")
    almost_nothing: bool = Field(False, description="fewer than 10 pairs above the cut: the corpus has "
                                                    "(almost) nothing for the class")


class CoverageCalibration(BaseModel):
    """What similarities mean on one modality index (index.calibration): quantiles keyed by probability."""

    model_config = ConfigDict(extra="allow")

    direction: Literal["t2i", "t2t"]
    sample: int = Field(description="corpus rows whose captions were used as queries")
    top_n: int
    cut_quantile: float
    cut: float = Field(description="the absolute rule's cut: the cut_quantile quantile of `covered`")
    covered: dict[str, float] = Field(description="mean of a caption query's top_n best other rows")
    null: Optional[dict[str, float]] = Field(None, description="a caption against a random other row")
    matched: Optional[dict[str, float]] = Field(None, description="a caption against its own image (t2i)")


class TaskSummary(BaseModel):
    model_config = ConfigDict(extra="allow")  # counts and timings (retrieval_service.task)

    classes: int
    queries: int
    k: int
    mode: str
    rows: int
    coverage_cut: Optional[float] = Field(None, description="the absolute rule's cut (the highest of the searched "
                                                            "indices' cuts); null: no calibration")
    count_similarity: Optional[dict[str, float]] = Field(None, description="per modality index, the similarity "
                                                                           "pairs_above counts from: the task's "
                                                                           "threshold, else the calibrated cut")
    count_method: Optional[str] = Field(None, description="range search, or top-k tail (lower bounds)")


class TaskReport(BaseModel):
    """A task's coverage report: the per-class table, warnings, and the rules and calibration behind the flags."""

    model_config = ConfigDict(extra="allow")

    summary: TaskSummary
    classes: list[ClassCoverage]
    warnings: list[str]
    low_coverage_rule: str
    absolute_coverage_rule: Optional[str] = None
    calibration: Optional[dict[str, CoverageCalibration]] = None


class JobInfo(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: Optional[str] = None
    done: int = 0
    total: int = 0
    progress: float = 0.0
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    error: Optional[str] = None
    rows: Optional[int] = None
    report: Optional[TaskReport] = None
    result_url: Optional[str] = None


class InlineResult(BaseModel):
    rows: list[dict]
    report: TaskReport


class IndexInfo(BaseModel):
    name: str
    rows: int
    dim: int
    model: Optional[str]
    model_id: Optional[str]
    model_loaded: bool
    model_error: Optional[str]
    modalities: dict
    generation: int
    loaded_at: str
    exclude_sets: dict[str, int] = Field({}, description="exclusion sets (react serve --exclude-set) and their "
                                                         "embedded image views (each image and its mirror)")


class IndexImages(BaseModel):
    """Whether an index's corpus images can be served from this machine (``GET /v1/indices/{name}/images``)."""

    index: str
    local: bool
    form: Optional[str] = Field(None, description="the corpus form the embeddings were made from")
    reason: Optional[str] = Field(None, description="why images are not served (then use each row's url)")
    image_url: Optional[str] = Field(None, description="template of a row's image URL, {row} replaced by rows[i].row")
