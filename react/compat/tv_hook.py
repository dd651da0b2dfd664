"""An import hook that applies the torchvision fix just before torchvision loads.

Installed for every interpreter of the project's venv by a ``.pth`` file
(see ``install_hook``), so the CLI, the tests, service workers and
img2dataset's subprocesses all get it without importing torch at startup.
"""
from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder


class _TorchvisionFixFinder(MetaPathFinder):
    def __init__(self) -> None:
        self.done = False

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        if fullname == "torchvision" and not self.done:
            self.done = True
            from react.compat.torchvision_ops import ensure_torchvision_ops

            ensure_torchvision_ops()
        return None  # let the normal finders import it


def install() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionFixFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFixFinder())


install()
