"""Let ``python demo/demo_pt.py`` (upstream's quick start) work with whatever ``python`` a user has.

Run as files, the demo scripts first call ``enter_project()``: the repository root goes on ``sys.path``, and when
this interpreter lacks the project's packages, ``bash run.sh setup`` makes the project's environment (``.venv``, or
``$VENV``; instant when it exists) and the script starts again in it with the same arguments. Standard library only:
it runs before anything is installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the demos import that a bare Python lacks; their presence means this interpreter is the project's.
NEEDED = ("torch", "transformers", "trl", "accelerate", "datasets")


def enter_project() -> None:
    """Put the repository on the path; re-run this script in the project's environment if this one lacks it."""
    sys.path.insert(0, str(ROOT))
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = Path(os.environ.get("VENV", ROOT / ".venv"))
    venv = venv if venv.is_absolute() else ROOT / venv
    python = venv / "bin" / "python"
    if Path(sys.executable).resolve() == python.resolve():
        raise SystemExit(f"{python} lacks {', '.join(missing)}: run bash run.sh setup")
    print(
        f"[demo] {sys.executable} lacks {', '.join(missing)}: using the project's environment {venv} "
        "(bash run.sh setup makes it on first use)",
        flush=True,
    )
    subprocess.run(["bash", str(ROOT / "run.sh"), "setup"], check=True)
    os.execv(python, [str(python), *sys.argv])
