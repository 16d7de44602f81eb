"""How long `bridge-ray submit RECIPE --dry-run` takes, start to exit, beside `ray job submit --help`.

The dry run reads the cluster's record, builds the job's runtime_env and entrypoint and prints
them; it submits nothing and asks the head nothing. Its cost is the Python start-up and what
bridge-ray imports on the way (the goal, issue 14: under 1 s on the 2-core dev machine). `ray
job submit --help` is the floor a user would otherwise pay: Ray's CLI importing itself. The
two commands alternate, ``--reps`` times each; wall time from this process's clock around each
subprocess. A local cluster is started for the record (and taken down after).

    .venv/bin/python benchmarks/submit_dry_run.py --reps 7 > /tmp/dry_run.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--recipe", default="recipes/hello_cluster.py")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="dry-run-bench-")
    env = {**os.environ, "BRIDGE_RAY_HOME": home}
    br = str(BIN / "bridge-ray")
    subprocess.run([br, "up", "--name", "bench", "--num-cpus", "1"], env=env, check=True, stdout=subprocess.DEVNULL)
    sides = {"bridge_ray_dry_run": [br, "submit", args.recipe, "--name", "bench", "--dry-run"],
             "ray_job_submit_help": [str(BIN / "ray"), "job", "submit", "--help"]}
    times: dict[str, list[float]] = {name: [] for name in sides}
    try:
        for rep in range(args.reps):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for name in order:
                times[name].append(timed(sides[name], env))
    finally:
        subprocess.run([br, "down", "--name", "bench", "--force"], env=env, stdout=subprocess.DEVNULL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "machine": f"{platform.node()} ({os.cpu_count()} cores)", "date": time.strftime("%Y-%m-%d"), "commit": commit,
        "recipe": args.recipe, "reps": args.reps, "seconds": times, "median_s": medians,
        "ratio_dry_run_over_ray_help": medians["bridge_ray_dry_run"] / medians["ray_job_submit_help"],
    }, indent=2))


if __name__ == "__main__":
    main()
