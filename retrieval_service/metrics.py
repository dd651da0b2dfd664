"""Prometheus metrics: requests per endpoint, latency per endpoint and per stage.

Each app owns its registry (no process-global state), so several apps -- tests,
reloads -- never collide on metric names."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STAGES = ("decode", "encode", "search", "metadata", "exclude", "dedup", "merge")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("react_requests", "HTTP requests", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("react_request_seconds", "HTTP request latency", ["endpoint"], buckets=BUCKETS,
                                 registry=self.registry)
        self.stage = Histogram("react_stage_seconds", "Time per processing stage", ["stage"], buckets=BUCKETS,
                               registry=self.registry)
        self.jobs = Gauge("react_jobs", "Retrieval jobs by state", ["state"], registry=self.registry)
        self.batch_size = Histogram("react_batch_size", "Queries per batched call (cross-request batching)",
                                    ["batcher"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.index_reloads = Counter("react_index_reloads", "Index reloads", ["index", "outcome"],
                                     registry=self.registry)

    def observe_batch(self, batcher: str, size: int) -> None:
        self.batch_size.labels(batcher).observe(size)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)
