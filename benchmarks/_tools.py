"""What the benchmark scripts share (each runs as ``python benchmarks/NAME.py``, so this folder is on sys.path)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def exe(name: str) -> str:
    """A console script beside this interpreter (a venv), else on PATH (the GPU host's /tmp/site/bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)
