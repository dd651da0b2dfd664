"""Loading and saving open_clip models through one code path.

A model is named by any of:
- an open_clip architecture plus a pretrained tag (``ViT-B-32`` + ``openai``),
- a directory with ``open_clip_config.json`` + ``open_clip_model.safetensors``
  (the embedded base, an exported customized model), also as ``local-dir:DIR``,
- an architecture plus a local checkpoint file as ``pretrained``,
- a customization run directory (``react customize --out``; see RUN_FILE).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from react import plugins
from react.errors import ReactError
from react.schemas import atomic_dir

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_PREFIX = "local-dir:"

# Customized models extend open_clip's architecture. An exported model
# directory names its extension in config["react"]["architecture"]; a
# customization run directory holds RUN_FILE. The stage that rebuilds them
# registers itself (react.plugins), so the core names no stage.
RUN_FILE = "react_run.json"
RUN_FORMAT = "react-run"


@dataclass
class LoadedModel:
    """An open_clip model with its eval transform and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    name: str
    device: torch.device
    model_cfg: dict = field(default_factory=dict)
    # What indices and runs record to refuse mixing models: the open_clip name
    # and tag, or for a model directory a digest of its weights (paths move).
    identity: str = ""

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg.get("embed_dim") or self.model.text_projection.shape[1])

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, cpu: bool = True) -> torch.Tensor:
        """Preprocessed image batch -> L2-normalized float32 features on CPU
        (``cpu=False``: left on the model's device, no synchronization)."""
        with self._autocast():
            feats = self.model.encode_image(images.to(self.device, non_blocking=True))
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu() if cpu else feats

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> L2-normalized float32 features on CPU, in batches."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        if not out:
            return torch.empty(0, self.embed_dim)
        return torch.cat(out)

    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """CLIP's prompt ensemble: mean of normalized template embeddings, renormalized.

        Templates use ``{}`` for the class (``react.templates`` normalizes
        other spellings). Returns [num_classes, dim]."""
        if not classnames:
            raise ReactError("no class names given")
        if not templates:
            raise ReactError("no prompt templates given")
        prompts = [t.format(c) for c in classnames for t in templates]
        feats = self.encode_texts(prompts).view(len(classnames), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(feats, dim=-1)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_hf_path(text_cfg: dict) -> dict:
    """Re-point a bundled HF text tower at this machine's copy of its package.

    Checkpoints record the absolute path of the HF model they were built with
    (so plain ``open_clip`` loads them with ``local-dir:``); if that venv has
    moved, find the same package folder in this interpreter's site-packages.
    """
    text_cfg = dict(text_cfg)
    for key in ("hf_model_name", "hf_tokenizer_name"):
        value = text_cfg.get(key)
        if not value or not os.path.isabs(value) or os.path.exists(value):
            continue
        parts = Path(value).parts
        if "site-packages" in parts:
            import importlib.util

            rel = parts[parts.index("site-packages") + 1 :]
            spec = importlib.util.find_spec(rel[0]) if rel else None
            if spec and spec.origin:
                candidate = Path(spec.origin).parent.joinpath(*rel[1:])
                if candidate.exists():
                    text_cfg[key] = str(candidate)
                    continue
        raise ReactError(f"model text tower not found: {value} (install the package that provides it)")
    return text_cfg


def read_model_dir(path: Path) -> dict:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise ReactError(f"not a model directory (no {CONFIG_FILE}): {path}")
    if not (path / WEIGHTS_FILE).is_file():
        raise ReactError(f"model weights missing: {path / WEIGHTS_FILE}")
    try:
        config = json.loads(cfg_path.read_text())
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ReactError(f"invalid model config {cfg_path}: {exc}") from None
    return config | {"model_cfg": model_cfg}


def load_model(
    spec: str | os.PathLike,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load any open_clip model the project supports; see the module docstring."""
    import open_clip

    device = torch.device(device) if device is not None else default_device()
    spec_str = str(spec)
    local = spec_str[len(LOCAL_PREFIX) :] if spec_str.startswith(LOCAL_PREFIX) else spec_str
    local_path = Path(local).expanduser()

    if local_path.is_dir() and (local_path / RUN_FILE).is_file():
        return plugins.load(plugins.RUN_FORMATS, RUN_FORMAT, str(local_path))(local_path, device=device)
    if local_path.is_dir():
        config = read_model_dir(local_path)
        model_cfg = config["model_cfg"]
        text_cfg = _resolve_hf_path(model_cfg.get("text_cfg", {}))
        model_cfg = model_cfg | {"text_cfg": text_cfg}
        arch = (config.get("react") or {}).get("architecture")
        apply_arch = None if arch is None else plugins.load(plugins.ARCHITECTURES, arch, str(local_path))
        try:
            # An extended architecture is built bare, grown, then loaded strictly.
            model, _, preprocess = open_clip.create_model_and_transforms(
                LOCAL_PREFIX + str(local_path.resolve()), device=device, text_cfg=text_cfg,
                load_weights=arch is None,
            )
            if arch is not None:
                from safetensors.torch import load_model as load_safetensors

                apply_arch(model, config["react"])
                load_safetensors(model, str(local_path / WEIGHTS_FILE), strict=True, device=str(device))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ReactError(f"cannot load model from {local_path}: {str(exc).splitlines()[0]}") from None
        if "hf_tokenizer_name" in text_cfg:
            tokenizer = open_clip.tokenizer.HFTokenizer(
                text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
            )
        else:
            tokenizer = open_clip.get_tokenizer(LOCAL_PREFIX + str(local_path.resolve()))
        name = str(local_path)
        identity = "sha256:" + file_digest(local_path / WEIGHTS_FILE)
    else:
        if spec_str.startswith(LOCAL_PREFIX) or os.sep in spec_str or spec_str.startswith("."):
            raise ReactError(f"model directory does not exist: {local}")
        if spec_str not in open_clip.list_models() and not spec_str.startswith("hf-hub:"):
            raise ReactError(f"unknown model name: {spec_str} (see open_clip.list_models())")
        if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
            if not Path(pretrained).is_file():
                raise ReactError(f"checkpoint not found: {pretrained}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec_str, pretrained=pretrained, device=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ReactError(f"cannot load model {spec_str} ({pretrained}): {str(exc).splitlines()[0]}") from None
        tokenizer = open_clip.get_tokenizer(spec_str)
        model_cfg = open_clip.get_model_config(spec_str) or {}
        name = f"{spec_str}:{pretrained}" if pretrained else spec_str
        identity = name
    model.eval()
    return LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name,
                       device=device, model_cfg=model_cfg, identity=identity)


def file_digest(path: Path, length: int = 16) -> str:
    """Leading hex digits of a file's SHA-256, read in 16 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()[:length]


def save_model(
    model: torch.nn.Module,
    model_cfg: dict,
    out_dir: str | os.PathLike,
    preprocess_cfg: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write an open_clip ``local-dir:`` checkpoint atomically (temp dir, then rename)."""
    from safetensors.torch import save_model as save_safetensors

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
        if extra:
            config["react"] = extra
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_safetensors(model, str(tmp / WEIGHTS_FILE))
    return out
