"""The retrieval service's HTTP layer: FastAPI over the core (``retrieval_service.service``).

- ``app``: ``create_app(cfg)`` -- the service state, the routers, the middleware;
- routers, one module per concern: ``health`` (``/healthz``, ``/readyz``,
  ``/metrics``), ``indices`` (``/v1/indices`` + reload), ``search``
  (``/v1/search``), ``tasks`` (``/v1/retrieve``, ``/v1/jobs``), ``compat``
  (clip-retrieval's ``/knn-service``, ``/indices-list``, ``/metadata``),
  ``browse`` (the page under ``static/`` and the rows' images);
- ``models`` and ``compat_models``: the typed request and response bodies (the
  OpenAPI schema); ``errors``: every failure as JSON; ``middleware``: API keys,
  body size and metrics (``Guard``), batcher announcements (``Announce``).
"""
