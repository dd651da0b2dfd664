"""Where training metrics go: RUN_DIR/log.jsonl (always), the rich console,
and TensorBoard when the ``tensorboard`` package is installed (optional: the
project does not depend on it). Only the main process logs."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from react.progress import console

LOG_FILE = "log.jsonl"


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / LOG_FILE
        self.writer = None
        if enabled and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append one JSON line (flushed: a killed run keeps its log up to the kill)."""
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            step = record.get("step", 0)
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()

    def print(self, message: str) -> None:
        if self.enabled:
            console.log(message)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + "/")
        elif isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
            flat |= {f"{name}/{i}": v for i, v in enumerate(value)}
        else:
            flat[name] = value
    return flat


def gate_summary(gates: dict[str, list[float]]) -> str:
    """``L6 .03/.11  L7 ...``: tanh(alpha) of the attention and MLP gate per block."""
    return "  ".join(f"L{layer} {a:+.2f}/{m:+.2f}" for layer, (a, m) in gates.items())
