"""What ``react download`` asks img2dataset for: defaults chosen for
customization, and the few settings a resumed download must share."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field

from react.errors import ReactError

DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
SAFETY_MODES = ("off", "metadata", "classifier")
RESIZE_MODES = ("keep_ratio", "keep_ratio_largest", "center_crop", "border", "no")
# img2dataset's own default: X-Robots-Tag directives that opt an image out.
OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


def machine_processes() -> int:
    """One img2dataset process per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class DownloadOptions:
    # the shards' layout: a resumed or retried download must keep these
    image_size: int = 256               # the smaller side, aspect ratio kept (keep_ratio)
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True  # never upscale a small image
    encode_quality: int = 95            # jpeg
    shard_size: int = 10000             # samples per shard (img2dataset's number_sample_per_shard)
    keep: tuple[str, ...] | None = None  # subset columns for .json; None: SHARD_KEPT_COLUMNS present
    # fetching: free to change between runs
    timeout: float = 10.0               # seconds per request
    retries: int = 2                    # further attempts per url
    processes: int | None = None        # None: one per core
    threads: int = 32                   # per process; downloads are I/O bound
    distributor: str = "multiprocessing"
    spark_master: str | None = None     # pyspark: None = local[processes]
    # honest: img2dataset's User-Agent names itself and this token, and opt-outs
    # addressed to the token ("X-Robots-Tag: img2dataset: noai") are honoured too
    user_agent_token: str = "img2dataset"
    disallowed_header_directives: tuple[str, ...] = field(default=OPT_OUT_DIRECTIVES)
    warn_below: float = 0.5             # warn for a class keeping less than this fraction
    # the safety filter (download/safety.py); part of the layout: the shards hold what it let through
    safety: str = "off"                 # off | metadata (punsafe/NSFW columns) | classifier (scores the images)
    max_punsafe: float = 0.5            # drop a row whose probability of being unsafe is above this
    safety_strict: bool = False         # metadata: also drop NSFW=UNSURE and rows with no score
    safety_scorer: str = "nudenet"      # classifier: a registered scorer or MODULE:FACTORY

    def validate(self) -> None:
        positive = {"--image-size": self.image_size, "--shard-size": self.shard_size, "--threads": self.threads,
                    "--timeout": self.timeout}
        if self.processes is not None:
            positive["--processes"] = self.processes
        for name, value in positive.items():
            if not value > 0:
                raise ReactError(f"{name} must be positive, got {value}")
        if not 1 <= self.encode_quality <= 100:
            raise ReactError(f"--quality must be in [1, 100], got {self.encode_quality}")
        if self.retries < 0:
            raise ReactError(f"--retries must be >= 0, got {self.retries}")
        if not 0 <= self.warn_below <= 1:
            raise ReactError(f"--warn-below must be in [0, 1], got {self.warn_below}")
        if self.safety not in SAFETY_MODES:
            raise ReactError(f"--safety must be one of {', '.join(SAFETY_MODES)}, got {self.safety!r}")
        if not 0 <= self.max_punsafe <= 1:
            raise ReactError(f"--max-punsafe must be in [0, 1], got {self.max_punsafe}")
        if self.safety_strict and self.safety != "metadata":
            raise ReactError(f"--safety-strict needs --safety metadata (got --safety {self.safety})")
        if self.resize_mode not in RESIZE_MODES:
            raise ReactError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}")
        if self.distributor not in DISTRIBUTORS:
            raise ReactError(f"--distributor must be one of {', '.join(DISTRIBUTORS)}, got {self.distributor!r}")
        package = {"pyspark": "pyspark", "ray": "ray"}.get(self.distributor)
        # img2dataset's ray distributor silently does nothing without ray: refuse instead
        if package and importlib.util.find_spec(package) is None:
            raise ReactError(f"--distributor {self.distributor} needs the {package} package "
                             f"(pip install {package}), which is not installed")
        if self.spark_master is not None:
            if self.distributor != "pyspark":
                raise ReactError(f"--spark-master needs --distributor pyspark (got --distributor {self.distributor})")
            from download.spark import check_master

            check_master(self.spark_master)  # an unreachable master fails here, before any work

    def layout(self, kept: list[str]) -> dict:
        """The settings every shard of one download shares."""
        return {"image_size": self.image_size, "resize_mode": self.resize_mode,
                "resize_only_if_bigger": self.resize_only_if_bigger, "encode_quality": self.encode_quality,
                "encode_format": "jpg", "shard_size": self.shard_size, "kept_columns": list(kept),
                "safety": self.safety_layout()}

    def safety_layout(self) -> dict | None:
        """The safety settings the shards were filtered with; None when off (as a
        manifest written before the filter existed reads)."""
        if self.safety == "off":
            return None
        out = {"mode": self.safety, "max_punsafe": self.max_punsafe}
        if self.safety == "metadata":
            out["strict"] = self.safety_strict
        else:
            out["scorer"] = self.safety_scorer
        return out

    def record(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def worker_processes(self) -> int:
        return self.processes or machine_processes()

    def img2dataset_kwargs(self, shards_to_do: int) -> dict:
        """Arguments of ``img2dataset.download`` besides input, output and columns."""
        processes = self.worker_processes()
        if self.distributor == "multiprocessing":
            processes = max(1, min(processes, shards_to_do))  # a process per shard at most
        return {
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "resize_only_if_bigger": self.resize_only_if_bigger,
            "encode_quality": self.encode_quality,
            "encode_format": "jpg",
            "output_format": "webdataset",
            "number_sample_per_shard": self.shard_size,
            "oom_shard_count": 5,  # 00000.tar ...
            "timeout": self.timeout,
            "retries": self.retries,
            "processes_count": processes,
            "thread_count": self.threads,
            "distributor": self.distributor,
            "user_agent_token": self.user_agent_token,
            "disallowed_header_directives": list(self.disallowed_header_directives),
            "enable_wandb": False,
            "compute_hash": "sha256",
            "max_shard_retry": 1,
        }
