"""Where a training step's time goes: torch's profiler around chosen steps, on rank 0.

``BRIDGE_RAY_PROFILE_STEPS=5-6`` (or ``5``) in the job's environment
(``bridge-ray submit … --env BRIDGE_RAY_PROFILE_STEPS=5-6``) profiles those steps of an SFT or
pretraining run and writes ``<output_dir>/profile/``:

    summary.json        wall time, GPU busy time (the union of kernel and copy intervals) and its share
    ops.txt             torch's operator table, by self device time on GPUs (CPU time on CPU)
    trace-rank0.json.gz the Chrome/Perfetto trace (open at https://ui.perfetto.dev)

A GPU that is busy for most of the step is the GPU's limit (kernels, their shapes); idle gaps are
host time: Python, kernel launches, synchronisations. Process CPU time cannot tell these apart: a host
thread waiting on the GPU spins, and the spin counts as CPU time.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import time
from pathlib import Path

from bridge_ray.errors import ConfigError

PROFILE_STEPS_ENV = "BRIDGE_RAY_PROFILE_STEPS"
PROFILE_DIR = "profile"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def parse_steps(text: str) -> tuple[int, int]:
    """``"5"`` -> (5, 5), ``"5-6"`` -> (5, 6).

    Raises:
        ConfigError: anything else, naming the variable and the form it takes.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    first, last = (int(match.group(1)), int(match.group(2) or match.group(1))) if match else (0, 0)
    if not match or first < 1 or last < first:
        raise ConfigError(f"{PROFILE_STEPS_ENV}={text!r}: give one step or a range of steps, e.g. "
                          f"{PROFILE_STEPS_ENV}=5 or {PROFILE_STEPS_ENV}=5-6 (steps count from 1)")
    return first, last


def busy_seconds(trace_events: list[dict]) -> float | None:
    """The union of the device's kernel/copy intervals in a Chrome trace, in seconds; None without any."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace_events
                   if e.get("cat") in DEVICE_CATEGORIES and "dur" in e)
    if not spans:
        return None
    busy, (start, end) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy, start, end = busy + end - start, s, e
        else:
            end = max(end, e)
    return (busy + end - start) / 1e6


class StepProfiler:
    """Profiles steps ``first``..``last`` on rank 0; ``before(step)`` / ``after(step)`` around each step."""

    def __init__(self, first: int, last: int, output_dir: str | Path, rank: int):
        self.first, self.last, self.rank = first, last, rank
        self.out = Path(output_dir) / PROFILE_DIR
        self.profiler = None
        self.started = 0.0

    @classmethod
    def from_env(cls, environ, output_dir, rank: int) -> "StepProfiler | None":
        text = environ.get(PROFILE_STEPS_ENV)
        return cls(*parse_steps(text), output_dir, rank) if text and rank == 0 else None

    def covers(self, step: int) -> bool:
        """Whether ``step`` is one of the profiled steps (its timings carry the profiler's cost)."""
        return self.first <= step <= self.last

    def before(self, step: int) -> None:
        """Start profiling when ``step`` is the first profiled step."""
        if step != self.first or self.profiler is not None:
            return
        import torch
        from torch.profiler import ProfilerActivity, profile

        self.cuda = torch.cuda.is_available()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.profiler = profile(activities=activities)
        self.profiler.__enter__()
        self.started = time.perf_counter()

    def after(self, step: int, last_of_run: bool = False) -> None:
        """Stop and write the profile when ``step`` is the last profiled one, or the run's last step
        (a run that ends inside the range keeps what was profiled)."""
        if self.profiler is None or (step != self.last and not last_of_run):
            return
        self.last = step
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self.started
        self.profiler.__exit__(None, None, None)
        self.out.mkdir(parents=True, exist_ok=True)
        raw = self.out / "trace-rank0.json"
        self.profiler.export_chrome_trace(str(raw))
        events = json.loads(raw.read_text()).get("traceEvents", [])
        with open(raw, "rb") as src, gzip.open(self.out / "trace-rank0.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=40)
        (self.out / "ops.txt").write_text(table + "\n")
        busy = busy_seconds(events)
        summary = {"steps": [self.first, self.last], "wall_s": wall, "gpu_busy_s": busy,
                   "gpu_busy_share": busy / wall if busy is not None else None}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        steps = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        gpu = f"GPU busy {busy:.2f} s ({busy / wall:.0%})" if busy is not None else "no GPU kernels"
        print(f"[bridge-ray] profile of step(s) {steps} (rank 0): {wall:.2f} s wall, {gpu} -> {self.out}", flush=True)
        self.profiler = None
