"""The one exception type users see: a one-line message naming the culprit."""
from __future__ import annotations


class ReactError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits 2;
    every other exception is a bug and keeps its traceback."""
