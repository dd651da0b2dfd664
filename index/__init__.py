"""Stage: the knowledge base -- corpus embeddings and the FAISS indices over
them (``react embed``, ``react index {build,tune,eval}``; the CLI is index/cli.py).

Reads a corpus (a corpus directory or parquet with ``image_path``, webdataset
shards, or an image folder with captions) and a model. Writes an embedding
folder in the clip-retrieval / LAION layout (``img_emb/``, ``text_emb/``,
``metadata/``, ``embed.json``) and, from it, an index folder (faiss index
file(s), row metadata, ``index.json``). Defaults live in ``index.defaults``.

Public functions (the door; imported lazily, so ``import index`` stays cheap):

- ``embed_corpus(corpus, model, out, ...)``: what ``react embed`` runs.
- ``write_embedding_folder(out, img, txt, metadata=None, ...)``: the same layout
  from vectors computed elsewhere.
- ``check_embeddings(emb_dir) -> dict``: validates every part (alignment, dtype,
  dims, norms, unique keys); ReactError naming the part.
- ``read_corpus(path) -> Corpus``: the three input forms.
- ``build_index(emb_dir, out, modality="both", factory="auto", target_recall=0.95,
  k=50, ...)``: what ``react index build`` runs.
- ``retune_index(index_dir, ...)`` / ``evaluate_index(index_dir, ...)``:
  ``react index tune`` / ``react index eval``.
- ``Searcher(index_dir)``: batched ``search(queries, k) -> (scores, rows)`` and
  ``metadata(rows)`` over a built index folder.
"""
from __future__ import annotations

from typing import Any

__all__ = ["embed_corpus", "write_embedding_folder", "check_embeddings", "read_corpus", "build_index",
           "retune_index", "evaluate_index", "Searcher"]

_LAZY = {"embed_corpus": "index.embed", "write_embedding_folder": "index.embed", "check_embeddings": "index.embed",
         "read_corpus": "index.readers", "build_index": "index.build", "retune_index": "index.evaluate",
         "evaluate_index": "index.evaluate", "Searcher": "index.searcher"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'index' has no attribute {name!r}")
