"""What the training workers' hosts offer the fast SFT paths, and what ``auto`` picks there.

``resolve(cfg, hardware)`` replaces every ``auto`` speed setting. On GPUs: flash-attn when it
imports, else torch's own varlen kernel (``bridge_ray.platforms.attention``), else sdpa; verl's
fused Triton lm-head + log-prob kernels when Triton imports; a token budget that suits the
attention. CPU workers get what runs on gloo: sdpa, no kernels. ``check(cfg, hardware)`` says
which explicit choice the probed workers cannot run.

Why not liger-kernel by default: verl 0.9.1 without flash-attn computes the log-probs of bf16
logits one token at a time (``logprobs_from_logits_v2``: ~75k kernel launches a step for a
global batch of 64 GSM8K rows), and liger's kernels leave that path in place. Measured on one
H100 (1B shape, 2026-12-05): liger 6.1k tokens/s, fused 26.1k, same loss.

``probe()`` answers for this process (imports, the visible GPU); ``probe_workers()`` runs
it as a one-GPU Ray task, on a fresh worker process that exits afterwards (its CUDA context
with it), so the driver can resolve a config before training starts. The probe costs 15-19 s
on an H100 host (CUDA start, torch, transformers, liger, Triton imports), so each node keeps
its answer in the cluster's temp dir, keyed by the Python and its package folders' change
times: the next run on the same cluster reads it unless something was installed or removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from bridge_ray.cluster.processes import TEMP_DIR_ENV
from bridge_ray.platforms.env import VARLEN_MIN_CAPABILITY

if TYPE_CHECKING:
    from bridge_ray.sft.config import SFTConfig

# Tokens per worker micro batch when max_tokens_per_worker="auto": varlen kernels cost O(sum of
# sample lengths^2); sdpa on a packed row builds a dense T x T mask, so it gets a smaller row.
AUTO_TOKENS_VARLEN = 16384
AUTO_TOKENS_SDPA = 4096

MIN_VARLEN_CAPABILITY = VARLEN_MIN_CAPABILITY  # torch's varlen kernel is a flash kernel: Ampere or newer


@dataclass(frozen=True)
class Hardware:
    """What a training worker's host offers the fast paths (``bridge_ray.sft.hardware.probe``).

    ``gpu`` is the device name (None on CPU); each flag says whether that piece imports and,
    for ``torch_varlen``, whether the GPU runs torch's varlen kernel (compute capability >= 8.0).
    """

    gpu: Optional[str] = None
    flash_attn: bool = False
    torch_varlen: bool = False
    liger: bool = False
    triton: bool = False


# What GPU workers are assumed to offer when nobody probed them (dry runs): a CUDA build of
# torch >= 2.10 on an Ampere-or-newer GPU, and neither flash-attn nor liger-kernel.
UNPROBED_GPU = Hardware(gpu="unprobed", torch_varlen=True, triton=True)


def _auto_attention(hw: Hardware, packed: bool) -> str:
    if hw.flash_attn:
        return "flash_attention_2"
    return "torch_varlen" if packed and hw.torch_varlen else "sdpa"


def _auto_kernels(hw: Hardware) -> str:
    return "fused" if hw.triton else "none"


def resolve(cfg: SFTConfig, hardware: Hardware | None = None) -> SFTConfig:
    """``cfg`` with every ``auto`` replaced by the fastest correct choice for ``hardware``.

    CPU workers get sdpa and no kernels whatever ``hardware`` says; GPU workers without a
    probe are taken to be ``UNPROBED_GPU``. A resolved config comes back unchanged.

    Args:
        cfg: A config whose speed fields may say ``auto``.
        hardware: What the workers' hosts offer (``bridge_ray.sft.hardware.probe``).
    """
    hw = (hardware or UNPROBED_GPU) if cfg.workers.use_gpu else Hardware()
    model, data = cfg.model, cfg.data
    if model.attn_implementation == "auto":
        model = dataclasses.replace(model, attn_implementation=_auto_attention(hw, model.use_remove_padding))
    if model.kernels == "auto":
        model = dataclasses.replace(model, kernels=_auto_kernels(hw))
    if data.max_tokens_per_worker == "auto":
        tokens = (AUTO_TOKENS_SDPA if model.attn_implementation in ("sdpa", "eager") else AUTO_TOKENS_VARLEN)
        data = dataclasses.replace(data, max_tokens_per_worker=tokens if model.use_remove_padding else None)
    return dataclasses.replace(cfg, model=model, data=data)


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
    capability = torch.cuda.get_device_capability(0)
    return Hardware(
        gpu=torch.cuda.get_device_name(0),
        flash_attn=_imports("flash_attn"),
        torch_varlen=capability >= MIN_VARLEN_CAPABILITY and _imports("torch.nn.attention.varlen"),
        liger=_imports("liger_kernel.transformers"),
        triton=_imports("triton"),
    )


def check(cfg: SFTConfig, hardware: Hardware | None) -> None:
    """Raise ``PreflightError`` naming the first speed setting of a resolved ``cfg`` that ``hardware`` cannot run.

    Nothing is checked without a probe of GPU workers (dry runs, CPU workers).
    """
    from bridge_ray.errors import PreflightError

    if hardware is None or hardware.gpu is None or not cfg.workers.use_gpu:
        return
    model, gpu = cfg.model, hardware.gpu
    missing = {
        "flash_attention_2": None if hardware.flash_attn else
        f"sft.model.attn_implementation=flash_attention_2 needs flash-attn on the workers ({gpu} has none): "
        "install flash-attn there, or set sft.model.attn_implementation=auto",
        "torch_varlen": None if hardware.torch_varlen else
        f"sft.model.attn_implementation=torch_varlen needs torch >= 2.10 with its varlen kernel on an Ampere or "
        f"newer GPU ({gpu} lacks it): set sft.model.attn_implementation=auto",
    }.get(model.attn_implementation)
    if missing is None and model.kernels in ("liger", "liger+fused"):
        missing = liger_missing(f"sft.model.kernels={model.kernels}", "sft.model.kernels=fused", hardware)
    if missing:
        raise PreflightError(missing)


def liger_missing(setting: str, fix: str, hardware: Hardware) -> str | None:
    """The one line for ``setting`` (which asks for liger-kernel) when the probed GPU workers lack it, else None."""
    if hardware.gpu is None or hardware.liger:
        return None
    return f"{setting} needs liger-kernel on the workers ({hardware.gpu} has none): pip install liger-kernel there, or set {fix}"


def needs_probe(cfg: SFTConfig) -> bool:
    """Whether ``cfg``'s speed settings depend on the GPU workers' hosts: ``auto`` ones, or a GPU kernel to check."""
    return cfg.workers.use_gpu and (
        "auto" in (cfg.model.attn_implementation, cfg.model.kernels, cfg.data.max_tokens_per_worker)
        or cfg.model.attn_implementation in ("flash_attention_2", "torch_varlen") or cfg.model.kernels != "none")


CACHE_FILE = "bridge-ray-hardware.json"  # in the node's Ray temp dir: private, gone with the cluster


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


def probe_workers() -> Hardware:
    """``cached_probe()`` in a Ray task holding one of the GPUs the workers will use (connected driver only)."""
    import ray

    task = ray.remote(num_cpus=0, num_gpus=1, max_calls=1)(cached_probe)
    return ray.get(task.remote())


def describe(cfg: SFTConfig, hardware: Hardware | None) -> str:
    """One line: the speed settings a resolved ``cfg`` trains with, and what they were chosen for."""
    model, tokens = cfg.model, cfg.data.max_tokens_per_worker
    size = f"up to {tokens} tokens" if tokens else f"{cfg.data.micro_batch_size_per_worker} samples"
    layout = "packed" if model.use_remove_padding else "padded"
    if hardware and hardware.gpu:
        where = f"probed {hardware.gpu}"
    else:
        where = "GPU workers" if cfg.workers.use_gpu else "CPU workers"
    return (f"speed ({where}): {layout} micro batches of {size}, attention {model.attn_implementation}, "
            f"kernels {model.kernels}, gradient checkpointing {'on' if model.gradient_checkpointing else 'off'}, "
            f"FSDP reshard after forward {'on' if cfg.workers.reshard_after_forward else 'off'}")
