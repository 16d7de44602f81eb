"""How much CPU a Ray task gets on a busy machine: Ray's default worker niceness vs bridge-ray's.

Ray starts every task and actor at nice 15 (``worker_niceness``) unless ``RAY_worker_niceness``
is set for ``ray start``; bridge-ray sets it to 0 (``bridge_ray.cluster.processes.worker_niceness``).
This starts BUSY plain busy loops (another user's work, a build, the other pytest worker), then,
per side, a one-CPU local Ray whose one task spins for SECONDS of wall time and reports the CPU
time it got. A plain process at nice 0 spinning beside the same loops (what ``torchrun`` or
``python`` started from a shell gets) is the reference. Sides alternate; each repeats REPS times.

    .venv/bin/python benchmarks/worker_share.py --busy 2 --seconds 6 --reps 3 --out benchmarks/results/X.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIDES = ("ray-default", "bridge-ray", "plain-process")


def spin(seconds: float) -> dict:
    """Spin for ``seconds`` of wall time; the share of one core this process got, and its niceness."""
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        pass
    return {"share_of_a_core": (time.process_time() - cpu) / (time.perf_counter() - start), "nice": os.nice(0)}


def run_side(side: str, seconds: float) -> dict:
    """One measurement, in this process (``--side``): a Ray task for the Ray sides, else a plain spin."""
    if side == "plain-process":
        return spin(seconds)
    from bridge_ray.cluster import processes

    os.environ.pop(processes.NICENESS_ENV, None)
    if side == "bridge-ray":
        os.environ.update(processes.worker_niceness({}))  # what bridge-ray puts in `ray start`'s environment
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ray.get(ray.remote(lambda: 0).remote())  # the worker is up before the clock starts
        return ray.get(ray.remote(num_cpus=1)(spin).remote(seconds))
    finally:
        ray.shutdown()


def measure(side: str, seconds: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--side", side, "--seconds", str(seconds)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy loops beside the measured process")
    parser.add_argument("--seconds", type=float, default=6.0, help="wall time each measured spin runs")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.seconds)))
        return
    loops = [subprocess.Popen(["bash", "-c", "while :; do :; done"]) for _ in range(args.busy)]
    rows = []
    try:
        for rep in range(args.reps):
            order = SIDES if rep % 2 == 0 else SIDES[::-1]
            for side in order:
                rows.append({"rep": rep, "side": side, **measure(side, args.seconds)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for loop in loops:
            loop.kill()
    medians = {side: statistics.median(r["share_of_a_core"] for r in rows if r["side"] == side) for side in SIDES}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    summary = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": datetime.now(timezone.utc).isoformat(),
               "commit": commit, "busy_loops": args.busy, "seconds": args.seconds, "rows": rows,
               "median_share_of_a_core": medians,
               "bridge_ray_over_ray_default": medians["bridge-ray"] / medians["ray-default"],
               "bridge_ray_over_plain_process": medians["bridge-ray"] / medians["plain-process"]}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
