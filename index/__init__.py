"""The knowledge base: corpus embeddings (and, later, FAISS indices over them).

Public API (imported lazily, so ``import index`` stays cheap):

- ``embed_corpus(corpus, model, out, *, pretrained=None, part_size=100000,
  batch_size=256, workers=None, device=None, resume=False, overwrite=False)``:
  what ``react embed`` runs; writes the clip-retrieval / LAION layout
  (``img_emb/``, ``text_emb/``, ``metadata/``, ``embed.json``).
- ``check_embeddings(emb_dir) -> dict``: validates every part of an embedding
  folder (alignment, dtype, dims, norms, unique keys); ReactError naming the part.
- ``read_corpus(path) -> Corpus``: the three input forms (corpus parquet,
  webdataset shards, image folder with captions).
"""
from __future__ import annotations

from typing import Any

__all__ = ["embed_corpus", "check_embeddings", "read_corpus"]

_LAZY = {"embed_corpus": "index.embed", "check_embeddings": "index.embed", "read_corpus": "index.readers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'index' has no attribute {name!r}")
