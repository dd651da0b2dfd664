"""Request and response bodies of the service's own API (``/v1/...``).

Unknown fields are refused (a typo in an option must not be silently
ignored); the clip-retrieval compatibility endpoint has its own, lenient
model in ``compat.py``. Limits that the operator configures (k, text length,
class count) are checked in the handlers, which know the configuration."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from retrieval_service.dedup import DEFAULT_DEDUP_THRESHOLD


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Strict):
    """Exactly one of ``text``, ``image`` (base64) or ``embedding``."""

    text: Optional[str] = None
    image: Optional[str] = Field(None, description="base64 image bytes (a data: URL is accepted too)")
    embedding: Optional[list[float]] = None
    k: int = Field(10, description="results to return (clamped to the index size)")
    modality: Literal["image", "text"] = Field("image", description="search the image index (T2I) or the text index")
    index: Optional[str] = Field(None, description="index name (default: the first one served)")


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


class RetrieveRequest(Strict):
    classes: list[str] = Field(..., description="the task's class names")
    templates: Union[str, list[str], None] = Field(
        None, description="a named set (imagenet, simple, classname) or a list with one {} each; default imagenet")
    k: int = Field(50, description="results per query")
    mode: Literal["t2i", "t2t", "both"] = "t2i"
    index: Optional[str] = None
    threshold: Optional[float] = Field(None, description="drop hits below this cosine similarity")
    dedup_threshold: Optional[float] = Field(DEFAULT_DEDUP_THRESHOLD,
                                             description="collapse retrieved images at least this similar; null: off")
    include_queries: bool = Field(True, description="list the queries that found each pair")
    inline: bool = Field(False, description="answer small tasks in the response body instead of as a job")


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
    report: Optional[dict] = None
    result_url: Optional[str] = None


class InlineResult(BaseModel):
    rows: list[dict]
    report: dict


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


class IndexImages(BaseModel):
    """Whether an index's corpus images can be served from this machine (``GET /v1/indices/{name}/images``)."""

    index: str
    local: bool
    form: Optional[str] = Field(None, description="the corpus form the embeddings were made from")
    reason: Optional[str] = Field(None, description="why images are not served (then use each row's url)")
    image_url: Optional[str] = Field(None, description="template of a row's image URL, {row} replaced by rows[i].row")
