"""Checks run in the job driver before an SFT run starts; on failure nothing was started.

Order: config (``validate``), cluster resources, paths on every node (a zero-CPU Ray
task pinned to each alive node), then the data schema and size (on one node). Each failure
raises one ``PreflightError``/``ConfigError`` whose message says what was found and
what to change.
"""
from __future__ import annotations

import os
from pathlib import Path

from bridge_ray.cluster.driver import alive_nodes
from bridge_ray.config import output_dir_problem
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.sft.config import SFTConfig, WorkersConfig, resolve_workers, validate


def _worker_slots(node_resources: dict, cpus: float, gpus: float) -> int:
    slots = int(node_resources.get("CPU", 0) // cpus)
    if gpus > 0:
        slots = min(slots, int(node_resources.get("GPU", 0) // gpus))
    return slots


def workers_problem(workers: WorkersConfig, nodes: list[dict], group: str) -> str | None:
    """Why the Ray Train workers do not fit the alive nodes (each worker on one node), naming the keys of
    ``group`` (``sft.workers``, ``pretrain.workers``, ``instruct.workers``) to change; None when they fit."""
    slots = sum(_worker_slots(n["Resources"], workers.cpus_per_worker, workers.gpus_per_worker) for n in nodes)
    if slots >= workers.num_workers:
        return None
    total_cpu = sum(n["Resources"].get("CPU", 0) for n in nodes)
    total_gpu = sum(n["Resources"].get("GPU", 0) for n in nodes)
    return (f"{workers.num_workers} workers x ({workers.cpus_per_worker} CPU, {workers.gpus_per_worker} GPU) do not "
            f"fit: the cluster has {total_cpu:g} CPU and {total_gpu:g} GPU on {len(nodes)} node(s), room for {slots} "
            f"worker(s); lower {group}.num_workers / cpus_per_worker / gpus_per_worker or add nodes")


def workers_fit(workers: WorkersConfig, nodes: list[dict], group: str) -> str | None:
    """Why ``group``'s workers (``num_workers=auto`` counted on ``nodes``) do not fit the alive ``nodes``; None if
    they do. ``group``: ``sft``, ``pretrain``, ``instruct``."""
    try:
        return workers_problem(resolve_workers(workers, nodes, group), nodes, f"{group}.workers")
    except PreflightError as err:  # auto on a cluster without GPUs
        return str(err)


def fits(cfg: SFTConfig, nodes: list[dict]) -> None:
    """Raise PreflightError unless the run's workers fit ``nodes`` (``submit`` asks before sending the job)."""
    if problem := workers_fit(cfg.workers, nodes, "sft"):
        raise PreflightError(problem)


def check_resources(cfg: SFTConfig, nodes: list[dict], group: str = "sft.workers") -> None:
    """Raise PreflightError unless the workers fit the alive nodes (each worker on one node)."""
    if problem := workers_problem(cfg.workers, nodes, group):
        raise PreflightError(problem)


def path_problems(cfg: SFTConfig) -> list[str]:
    """What this machine cannot read or write among the run's paths (runs on each node)."""
    problems = []
    model = Path(cfg.model.path)
    if not (model / "config.json").is_file():
        problems.append(f"model.path {model} has no config.json (a local Hugging Face model folder is needed)")
    if cfg.model.tokenizer_path and not Path(cfg.model.tokenizer_path).is_dir():
        problems.append(f"model.tokenizer_path {cfg.model.tokenizer_path} is not a folder")
    for name, files in (("data.train_files", cfg.data.train_files), ("data.val_files", cfg.data.val_files)):
        for path in files:
            if not os.access(path, os.R_OK) or not Path(path).is_file():
                problems.append(f"{name}: {path} is missing or unreadable")
    problems += [p for p in [output_dir_problem(cfg.trainer.output_dir)] if p]
    return problems


def data_report(cfg: SFTConfig) -> tuple[list[str], int]:
    """Schema and size problems of the SFT files, and the rows of every train file together (runs on one node)."""
    from bridge_ray.data import check_sft_file

    problems, train_rows = [], 0
    for path in cfg.data.train_files + cfg.data.val_files:
        try:
            check = check_sft_file(path, cfg.data.prompt_key, cfg.data.response_key, cfg.data.messages_key)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        if path in cfg.data.train_files:
            train_rows += check.num_rows
            if check.num_rows < cfg.data.global_batch_size:
                problems.append(f"data.train_files: {path} has {check.num_rows} rows, fewer than "
                                f"data.global_batch_size={cfg.data.global_batch_size}: no step could run")
    return problems, train_rows


def check_paths_on_cluster(cfg: SFTConfig, nodes: list[dict]) -> None:
    """Run ``path_problems`` on every alive node; raise PreflightError naming node and path."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(path_problems)
    refs = {n["NodeManagerAddress"]: task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(cfg) for n in nodes}
    problems = [f"on node {addr}: {p}" for addr, ref in refs.items() for p in ray.get(ref)]
    if problems:
        raise PreflightError("; ".join(problems))


def check_data_on_cluster(cfg: SFTConfig) -> int:
    """Run ``data_report`` as a Ray task; raise ConfigError listing its problems, else return the train rows."""
    import ray

    problems, train_rows = ray.get(ray.remote(num_cpus=0)(data_report).remote(cfg))
    if problems:
        raise ConfigError(problems)
    return train_rows


def preflight(cfg: SFTConfig) -> int:
    """Every check, in order, against the connected Ray cluster; returns the rows of the train files.

    Raises:
        ConfigError: bad config values or data files.
        PreflightError: the cluster lacks resources or cannot see/write a path.
    """
    validate(cfg)
    nodes = alive_nodes()
    check_resources(cfg, nodes)
    check_paths_on_cluster(cfg, nodes)
    return check_data_on_cluster(cfg)
