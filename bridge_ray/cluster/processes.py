"""Find and stop exactly one cluster's processes, never another Ray's.

Ray's daemons carry the cluster's own temp dir on their command line; job drivers
and workers are their descendants. ``plain ray stop`` would kill every Ray of the
user on the machine, so bridge-ray never calls it.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    stat = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    # The command name sits in parentheses and may hold spaces: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def find_pids(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``, plus all their descendants."""
    pids = _all_pids()
    needle = marker.encode()
    found = {p for p in pids if needle in _read(Path(f"/proc/{p}/cmdline"))}
    children: dict[int, list[int]] = {}
    for p in pids:
        children.setdefault(_ppid(p), []).append(p)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def _alive(pid: int) -> bool:
    state = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace").rsplit(")", 1)[-1].split()
    return bool(state) and state[0] != "Z"


def terminate(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s``, then SIGKILL what is left. Returns the pids signalled."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in pids if _alive(p)]
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in live):
            time.sleep(0.05)
    return pids
