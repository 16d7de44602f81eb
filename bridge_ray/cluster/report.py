"""What a job sees of its cluster: nodes, resources, and each node's environment.

Runs inside a Ray job (the driver is already pointed at the cluster).
"""
from __future__ import annotations

import os
import socket

from bridge_ray.jobs.runtime_env import ENV_NAMES, ENV_PREFIXES, is_secret


def _node_env(extra: tuple[str, ...]) -> dict:
    import ray

    seen = {k: ("***" if is_secret(k) else v) for k, v in os.environ.items()
            if k.startswith(ENV_PREFIXES) or k in ENV_NAMES or k in extra}
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "env": seen,
            "nice": os.nice(0)}


def probe_nodes(extra_env: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """Run one task on each alive node; return what each saw (secrets redacted) and its niceness."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)
    task = ray.remote(num_cpus=0)(_node_env)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(tuple(extra_env)) for n in nodes]
    return ray.get(refs, timeout=120)


def cluster_report(extra_env: tuple[str, ...] | list[str] = ()) -> str:
    """A printable report of the cluster's nodes, resources and per-node env."""
    import ray

    seen = probe_nodes(extra_env)
    total = ray.cluster_resources()
    lines = [f"cluster: {len(seen)} node(s), CPU {total.get('CPU', 0):g}, GPU {total.get('GPU', 0):g}"]
    for node in ray.nodes():
        if node["Alive"]:
            res = node["Resources"]
            lines.append(f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): CPU {res.get('CPU', 0):g} GPU {res.get('GPU', 0):g}")
    for item in seen:
        env = " ".join(f"{k}={v}" for k, v in sorted(item["env"].items())) or "(no bridge-ray env vars)"
        lines.append(f"task on {item['host']} ({item['node_id'][:8]}, nice {item['nice']}): {env}")
    return "\n".join(lines)
