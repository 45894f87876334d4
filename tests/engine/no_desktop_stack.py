"""Runs `main.py` with the desktop stack made unimportable: what a GPU node without Anny, open3d or
mediapipe has. Usage: python tests/engine/no_desktop_stack.py ARGS... (the arguments of main.py).

Importing a blocked package raises ImportError, as on a machine where it is not installed. At exit it
also fails (code 3) if any of them is in sys.modules anyway.
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from pathlib import Path

BLOCKED = ("anny", "open3d", "mediapipe")


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by {Path(__file__).name})", name=fullname)
        return None


def main() -> int:
    sys.meta_path.insert(0, _Blocker())
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    sys.argv = [str(repo / "main.py"), *sys.argv[1:]]
    code = 0
    try:
        runpy.run_path(str(repo / "main.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if loaded:
        print(f"blocked modules were loaded: {loaded}", file=sys.stderr)
        return 3
    return code


if __name__ == "__main__":
    sys.exit(main())
