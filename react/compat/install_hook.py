"""Write the ``.pth`` file that installs the torchvision import hook venv-wide.

Run by ``scripts/bootstrap.sh``: ``python -m react.compat.install_hook``.
"""
from __future__ import annotations

import site
import sys
from pathlib import Path

PTH_NAME = "react_torchvision_fix.pth"
# One line, as .pth files require; silent if the project is uninstalled later.
PTH_LINE = (
    'import sys; exec("try:\\n import react.compat.tv_hook\\nexcept Exception:\\n pass")\n'
)


def main() -> None:
    target = Path(site.getsitepackages()[0]) / PTH_NAME
    tmp = target.with_suffix(".tmp")
    tmp.write_text(PTH_LINE)
    tmp.replace(target)
    print(f"install_hook: wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
