"""The client side of ``react retrieve --server``: submit, follow, download atomically.

Standard library only (urllib), so the client needs nothing the server does."""
from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from react.errors import ReactError
from react.schemas import atomic_path


class ServiceClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        if not base_url.lower().startswith(("http://", "https://")):
            raise ReactError(f"--server must be an http:// or https:// URL, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.api_key, self.timeout = api_key, timeout_s

    def _request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise ReactError(f"server {self.base} answered {exc.code} on {path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ReactError(f"cannot reach server {self.base}: {reason}") from None

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._request(method, path, body) as resp:
            return json.loads(resp.read())

    def submit(self, request: dict) -> dict:
        return self.json("POST", "/v1/retrieve", request)

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None, poll_s: float = 0.5) -> dict:
        while True:
            info = self.json("GET", f"/v1/jobs/{job_id}")
            if on_progress:
                on_progress(info)
            if info["state"] == "done":
                return info
            if info["state"] in ("failed", "cancelled"):
                raise ReactError(f"job {job_id} {info['state']}: {info.get('error') or 'no reason given'}")
            time.sleep(poll_s)

    def download(self, job_id: str, out: str | Path) -> Path:
        """Stream the job's parquet to ``out`` under a temporary name, renamed when complete."""
        with self._request("GET", f"/v1/jobs/{job_id}/subset.parquet") as resp, atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh, 1 << 20)
        return Path(out)
