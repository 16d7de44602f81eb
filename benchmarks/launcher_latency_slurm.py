"""Launcher latency on SLURM: allocation start → every node joined, vs the seed's fixed waits.

For 1, 2 and 4 nodes, ``bridge_ray.up(slurm=...)`` brings up a cluster in one allocation
and is torn down again. Times come from the nodes themselves: ``allocated_at`` is the
first line of the batch script, ``head up`` the moment the Jobs API answered, ``ready_at``
the barrier seeing every node. The baseline is what the seed's scripts slept, whether or
not the nodes were up by then: 10 s after the head plus 5 s per worker node.

Needs a SLURM with 4 idle nodes (emulated ones work: several slurmd on one host):

    bash tests/slurm/slurm-ci.sh up local 4
    .venv/bin/python benchmarks/launcher_latency_slurm.py --reps 3 > /tmp/latency_slurm.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

SIZES = (1, 2, 4)


def seed_fixed_wait_s(nodes: int) -> float:
    """What the seed's sbatch scripts slept before using the cluster: 10 s + 5 s per worker node."""
    return 10.0 + 5.0 * (nodes - 1)


def one_cycle(nodes: int) -> dict:
    import bridge_ray

    events: dict[str, float] = {}
    submitted = time.time()
    record = bridge_ray.up(f"bench-slurm-{nodes}", slurm=dict(
        nodes=nodes, cpus_per_task=1, progress=lambda phase, _detail, t: events.setdefault(phase, t)))
    ready = time.time()
    t = time.perf_counter()
    bridge_ray.down(record.name)
    allocated = record.slurm["allocated_at"]
    return {"submit_to_allocated_s": allocated - submitted,
            "alloc_to_head_up_s": events["head up"] - allocated,
            "alloc_to_all_joined_s": record.slurm["ready_at"] - allocated,
            "up_total_s": ready - submitted, "down_s": time.perf_counter() - t}


def _median(cycles: list[dict], key: str) -> float:
    return round(statistics.median(c[key] for c in cycles), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    idle = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if idle.count("idle") < max(SIZES):
        raise SystemExit(f"needs {max(SIZES)} idle SLURM nodes: bash tests/slurm/slurm-ci.sh up local {max(SIZES)}")
    os.environ["BRIDGE_RAY_HOME"] = tempfile.mkdtemp(prefix="bench-slurm-home-")
    results = []
    for nodes in SIZES:
        cycles = [one_cycle(nodes) for _ in range(args.reps)]
        keys = ("submit_to_allocated_s", "alloc_to_head_up_s", "alloc_to_all_joined_s", "up_total_s", "down_s")
        results.append({"nodes": nodes, **{k: _median(cycles, k) for k in keys},
                        "seed_fixed_wait_s": seed_fixed_wait_s(nodes),
                        "alloc_to_all_joined_all_s": [round(c["alloc_to_all_joined_s"], 2) for c in cycles]})
    version = subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.machine()}, "
        f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "slurm": f"{version}, {max(SIZES)} slurmd on one host (emulated nodes), 1 CPU per node",
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "reps": args.reps,
        "medians_per_size": results}, indent=2))


if __name__ == "__main__":
    main()
