"""The retrieval stage: a task's class names in, the image-text subset to customize on out.

For every class and template the query ``template.format(class)`` is encoded
with the index's own model and searched (REACT eq. 2.1); the hits are merged
into one row per corpus pair, near-duplicate images collapsed, and every
class's coverage checked (a low-coverage warning for a domain the corpus
barely covers).

Reads: index folders (``react index build``: the faiss index, ``index.json``,
the row metadata, and through it the embedding folder and the model).
Writes: the subset parquet (``key``, ``url``, ``caption``, ``similarity``,
``classes`` + ``queries``, ``hits``, ``duplicates``, ``row``, ``image_path``;
img2dataset reads it as it is) with the task report (summary, per-class
statistics, warnings) in its schema metadata, and ``--json`` the report alone.

Entry points:

- ``react retrieve`` / ``react serve`` (``cli.add_parsers``, registered in
  pyproject.toml): one task in-process or through a server; the HTTP service.
- ``spec.validate_spec`` -> ``task.TaskRetriever(searcher, model).run(spec)``
  -> ``task.write_subset``; ``task.read_subset_report`` reads the report back.
- ``http.app.create_app(ServiceConfig(...))``: the FastAPI app ``react serve`` runs.
- ``client.ServiceClient``: a running service's task API, as ``react retrieve --server`` uses it.

Layout: the core knows nothing of HTTP -- ``spec`` (what a task is, its
defaults), ``task`` (running one), ``merge``, ``dedup``, ``coverage``;
``service`` (what a server holds: ``registry`` of loaded indices, ``jobs``,
``metrics``, ``batcher`` + ``batched`` for single queries), ``queries``,
``images`` (query images), ``corpus_images`` (rows' images), ``config``,
``errors``. ``http/`` is the FastAPI layer on top: the app factory, one
router module per concern, the request/response models and the middleware.
"""
