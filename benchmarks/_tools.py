"""What the benchmark scripts share (each runs as ``python benchmarks/NAME.py``, so this folder is on sys.path)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def exe(name: str) -> str:
    """A console script beside this interpreter (a venv), else on PATH (the GPU host's /tmp/site/bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every descendant of ``pid``, wherever it went: torchrun starts its
    workers in sessions of their own, and one outlived a killed run, holding 50 GB of the GPU (2026-12-06)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)


def run_logged(cmd: list[str], log: Path, env: dict, timeout_s: float, cwd: Path, mode: str = "w") -> int:
    """Run ``cmd`` in its own process group with output to ``log``; after ``timeout_s`` (then 124), Ctrl-C or
    SIGTERM, nothing it started outlives it."""
    with open(log, mode) as f:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return 124
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
