"""The embedded default: a real corpus from registry packages and a small base CLIP."""
from react.embedded.corpus import fetch_embedded

__all__ = ["fetch_embedded"]
