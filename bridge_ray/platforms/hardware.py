"""What a node's GPU and Python offer the fast training paths, asked once per node.

``probe()`` answers for this process (imports, its first visible GPU). ``probe_workers()`` runs
it as a one-GPU Ray task on a fresh worker process that exits afterwards (its CUDA context with
it), so a driver can choose settings before training starts. The probe costs 15-19 s on an H100
host (CUDA start, torch, transformers, liger, Triton imports), so each node keeps its answer in
the cluster's temp dir, keyed by the Python and its package folders' change times
(``cached_probe()``): the next run on the same cluster reads it unless something was installed
or removed. SFT's driver starts it (``start_probe_workers()``) before its preflight and reads it after, so a
first run's probe overlaps the data and path checks (measured cold on an H100: probe 18.6 s, preflight 4.8 s).

``varlen_kernel_importable()`` and ``varlen_capable()`` are the two conditions of torch's varlen
kernel (``bridge_ray.platforms.attention``); PPO's preflight asks them without holding a GPU,
reading compute capabilities from ``nvidia-smi``. SFT's choice of settings from a probe is
``bridge_ray.sft.hardware``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bridge_ray.cluster.processes import TEMP_DIR_ENV
from bridge_ray.platforms.env import VARLEN_MIN_CAPABILITY

CACHE_FILE = "bridge-ray-hardware.json"  # in the node's Ray temp dir: private, gone with the cluster


@dataclass(frozen=True)
class Hardware:
    """What a training worker's host offers the fast paths (``probe()``).

    ``gpu`` is the device name (None on CPU); each flag says whether that piece imports and,
    for ``torch_varlen``, whether the GPU runs torch's varlen kernel (``varlen_capable``).
    """

    gpu: Optional[str] = None
    flash_attn: bool = False
    torch_varlen: bool = False
    liger: bool = False
    triton: bool = False


def varlen_capable(capability: tuple[int, int]) -> bool:
    """Whether a CUDA GPU of this compute capability runs torch's varlen flash kernel (Ampere or newer)."""
    return tuple(capability) >= VARLEN_MIN_CAPABILITY


def varlen_kernel_importable() -> bool:
    """Whether this Python's torch has its varlen kernel (torch >= 2.10), found without importing torch."""
    try:
        return importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except ImportError:
        return False


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # a broken install (undefined symbols, wrong CUDA) counts as absent
        return False
    return True


def probe() -> Hardware:
    """What this process can use: its first visible GPU, flash-attn, torch's varlen kernel, liger, triton."""
    import torch

    if not torch.cuda.is_available():
        return Hardware()
    return Hardware(
        gpu=torch.cuda.get_device_name(0),
        flash_attn=_imports("flash_attn"),
        torch_varlen=varlen_capable(torch.cuda.get_device_capability(0)) and _imports("torch.nn.attention.varlen"),
        liger=_imports("liger_kernel.transformers"),
        triton=_imports("triton"),
    )


def software_key() -> str:
    """This Python and the folders it imports from, with their change times (installing or removing a
    package changes its folder's). Folders in the Ray temp dir (a job's working_dir) are left out."""
    temp = os.environ.get(TEMP_DIR_ENV) or None
    folders = [p for p in sys.path if p and os.path.isdir(p) and not (temp and p.startswith(temp))]
    stamp = [sys.executable, *(f"{p}@{os.stat(p).st_mtime_ns}" for p in folders)]
    return hashlib.sha256("\n".join(stamp).encode()).hexdigest()


def cached_probe() -> Hardware:
    """``probe()``, or the answer this node gave for the same software earlier in the cluster's life."""
    temp = os.environ.get(TEMP_DIR_ENV)
    if not temp:
        return probe()
    path, key = Path(temp) / CACHE_FILE, software_key()
    try:
        cached = json.loads(path.read_text())
        if cached["key"] == key:
            return Hardware(**cached["hardware"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: probe again and replace it
    hardware = probe()
    partial = path.with_name(f"{CACHE_FILE}.{os.getpid()}")
    try:
        partial.write_text(json.dumps({"key": key, "hardware": dataclasses.asdict(hardware)}))
        os.replace(partial, path)
    except OSError:
        pass  # a read-only temp dir: the next run probes again
    return hardware


def start_probe_workers():
    """Start ``cached_probe()`` in a Ray task holding one of the GPUs the workers will use (connected driver
    only); ``ray.get`` of the returned ref is the answer. Started early, it overlaps the driver's other checks."""
    import ray

    return ray.remote(num_cpus=0, num_gpus=1, max_calls=1)(cached_probe).remote()


def probe_workers() -> Hardware:
    """``cached_probe()`` in a Ray task holding one of the GPUs the workers will use (connected driver only)."""
    import ray

    return ray.get(start_probe_workers())


def liger_missing(setting: str, fix: str, hardware: Hardware) -> str | None:
    """The one line for ``setting`` (which asks for liger-kernel) when the probed GPU workers lack it, else None."""
    if hardware.gpu is None or hardware.liger:
        return None
    return f"{setting} needs liger-kernel on the workers ({hardware.gpu} has none): pip install liger-kernel there, or set {fix}"
