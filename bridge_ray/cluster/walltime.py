"""Walltime awareness: a job on a SLURM cluster knows when its allocation ends.

The bootstrap puts two variables into the environment of every Ray node before
``ray start``, so every driver, task and Ray Train worker inherits them:

- ``BRIDGE_RAY_DEADLINE``: the allocation's end, as UNIX seconds;
- ``MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP``: the same end minus
  ``SAFETY_MARGIN_S``, in UNIX seconds, which verl's PPO trainer reads in
  ``should_save_ckpt_esi`` (verl 0.9.1): it force-saves a checkpoint when
  ``remaining <= 60 s (save) + longest step + trainer.esi_redundant_time``
  (only when ``trainer.save_freq > 0``).

bridge-ray's SFT loop asks :func:`should_checkpoint_now` after each step, with the
same rule. A run resubmitted on a new allocation resumes from that checkpoint.
Unlimited allocations (and local clusters) have no deadline: nothing changes.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

DEADLINE_ENV = "BRIDGE_RAY_DEADLINE"
VERL_ENV = "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"
# Room between a finished checkpoint and the end: flushing to shared storage, SLURM's SIGTERM.
SAFETY_MARGIN_S = 60.0
SAVE_S = 60.0
_LEFT_RE = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")


def parse_time_left(text: str) -> float | None:
    """Seconds in SLURM's ``[days-][hours:]minutes:seconds``; None for UNLIMITED/NOT_SET/INVALID."""
    match = _LEFT_RE.match(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def slurm_end_time(job_id: int | str) -> float | None:
    """UNIX time at which SLURM ends the job (now + its time left), or None if unlimited."""
    out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%L"], capture_output=True, text=True)
    left = parse_time_left(out.stdout) if out.returncode == 0 else None
    return None if left is None else time.time() + left


def deadline_env(end_time: float | None) -> dict[str, str]:
    """The variables a job needs to know the deadline (empty when there is none)."""
    if end_time is None:
        return {}
    return {DEADLINE_ENV: str(int(end_time)), VERL_ENV: str(int(end_time - SAFETY_MARGIN_S))}


def slurm_env(job_id: int | str) -> dict[str, str]:
    """:func:`deadline_env` for a SLURM job."""
    return deadline_env(slurm_end_time(job_id))


def deadline() -> float | None:
    """The allocation's end (UNIX seconds) from ``BRIDGE_RAY_DEADLINE``, or None."""
    value = os.environ.get(DEADLINE_ENV)
    return float(value) if value else None


def seconds_left() -> float | None:
    """Seconds until the allocation ends, or None without a deadline."""
    end = deadline()
    return None if end is None else end - time.time()


def should_checkpoint_now(step_s: float, save_s: float = SAVE_S) -> bool:
    """Whether the next step plus a save would run past the deadline (verl's ESI rule).

    Args:
        step_s: the longest step so far, in seconds.
        save_s: how long a checkpoint takes to save.

    Example:
        >>> if walltime.should_checkpoint_now(step_s=max_step_s):
        ...     save_checkpoint(); break
    """
    left = seconds_left()
    return left is not None and left <= step_s + save_s + SAFETY_MARGIN_S
