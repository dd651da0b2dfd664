"""Request and response bodies of clip-retrieval's back-end API (``/knn-service``, ``/metadata``).

Lenient where the service's own models are strict: unknown options are
accepted (and answered with a warning), as clip-retrieval's clients expect.
``compat_models`` states this service's limits in them, as
``models.request_models`` does for ``/v1``.
"""
# No `from __future__ import annotations`: see app.py (request models built per service).
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval_service.config import config_default
from retrieval_service.http.models import TEXT_PATTERN, _one_of, check_embedding, embedding_field, json_int
from retrieval_service.spec import Limits

# Options clip-retrieval has and this service accepts without acting on them (value that means "off").
IGNORED_OPTIONS = {"use_safety_model": False, "use_violence_detector": False, "aesthetic_score": None,
                   "aesthetic_weight": None, "use_mclip": False}


def compat_models(max_k: int = config_default("max_search_k"), text_chars: int = Limits().max_text_chars,
                  dim: Optional[int] = None) -> tuple[type, type]:
    """``KnnRequest`` and ``MetadataRequest`` stating this service's limits (see models.request_models)."""
    emb_type, emb_field = embedding_field(dim, "a query vector in the index's embedding space")

    class KnnRequest(BaseModel):
        """At least one of ``text``, ``image``, ``image_url``, ``embedding_input`` (an empty string counts as
        absent); when several are given the first in that order is used, as clip-retrieval does."""

        # Unknown options: ignored with a warning, never an error.
        model_config = ConfigDict(extra="allow", regex_engine="python-re", strict=True, json_schema_extra=_one_of({
            "text": {"type": "string", "pattern": TEXT_PATTERN}, "image": {"type": "string", "minLength": 1},
            "image_url": {"type": "string", "minLength": 1}, "embedding_input": {"type": "array"}}, exactly=False))

        # "" counts as absent; anything else needs a character that is not whitespace
        text: Union[Literal[""], Annotated[str, Field(max_length=text_chars, pattern=TEXT_PATTERN)], None] = None
        image: Optional[str] = Field(None, description="base64 image bytes; must decode to an image within the "
                                     "size and pixel limits")
        image_url: Optional[str] = Field(None, description="fetched only on a service started with "
                                         "--allow-image-url (else 403)")
        embedding_input: emb_type = emb_field
        modality: Literal["image", "text"] = "image"
        num_images: json_int(ge=1, le=max_k) = Field(40, description="results returned")
        num_result_ids: Optional[json_int(ge=1, le=max_k)] = Field(None,
                                              description="results searched (before deduplication)")
        indice_name: Optional[str] = None
        deduplicate: bool = True
        use_safety_model: Optional[bool] = False
        use_violence_detector: Optional[bool] = False
        aesthetic_score: Optional[float | str] = None
        aesthetic_weight: Optional[float | str] = None
        use_mclip: Optional[bool] = False

        _embedding = field_validator("embedding_input")(classmethod(lambda cls, v: check_embedding(v)))

        @model_validator(mode="after")
        def _one_query(self):
            if not (self.text or self.image or self.image_url or self.embedding_input is not None):
                raise ValueError("give one of text, image, image_url, embedding_input")
            return self

    class MetadataRequest(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)

        ids: list[json_int(ge=0)] = Field(..., max_length=max_k,
                                                       description="rows of the index (an unknown row: 404)")
        indice_name: Optional[str] = None

    return KnnRequest, MetadataRequest


KnnRequest, MetadataRequest = compat_models()  # the default limits; the app builds its own


class KnnHit(BaseModel):
    url: Optional[str]
    caption: Optional[str]
    similarity: float
    id: int
    key: Optional[str] = None
    warning: Optional[str] = None


class MetadataRow(BaseModel):
    id: int
    metadata: dict
