"""What the training workers' hosts offer the fast SFT paths, probed where they run.

``probe()`` answers for this process (imports, the visible GPU); ``probe_workers(cfg)`` runs
it as a one-GPU Ray task, on a fresh worker process that exits afterwards (its CUDA context
with it), so the driver can resolve a config's ``auto`` settings before training starts.
"""
from __future__ import annotations

import importlib

from bridge_ray.sft.config import Hardware, SFTConfig

# torch's varlen kernel is a flash kernel: Ampere (8.0) or newer.
MIN_VARLEN_CAPABILITY = (8, 0)


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
        torch_varlen=(torch.cuda.get_device_capability(0) >= MIN_VARLEN_CAPABILITY
                      and _imports("torch.nn.attention.varlen")),
        liger=_imports("liger_kernel.transformers"),
        triton=_imports("triton"),
    )


def needs_probe(cfg: SFTConfig) -> bool:
    """Whether ``cfg`` has an ``auto`` setting that depends on the GPU workers' hosts."""
    return cfg.workers.use_gpu and "auto" in (cfg.model.attn_implementation, cfg.model.kernels,
                                               cfg.data.max_tokens_per_worker)


def probe_workers(cfg: SFTConfig) -> Hardware:
    """``probe()`` in a Ray task holding one of the GPUs the workers will use (connected driver only)."""
    import ray

    task = ray.remote(num_cpus=0, num_gpus=1, max_calls=1)(probe)
    return ray.get(task.remote())


def describe(cfg: SFTConfig, hardware: Hardware | None) -> str:
    """One line: the speed settings a resolved ``cfg`` trains with, and what they were chosen for."""
    model, tokens = cfg.model, cfg.data.max_tokens_per_worker
    batch = (f"packed micro batches of up to {tokens} tokens" if tokens and model.use_remove_padding
             else f"micro batches of {cfg.data.micro_batch_size_per_worker} samples"
             + (", packed" if model.use_remove_padding else ", padded"))
    where = f"probed {hardware.gpu}" if hardware and hardware.gpu else ("CPU workers" if not cfg.workers.use_gpu else "GPU workers")
    return (f"speed ({where}): {batch}, attention {model.attn_implementation}, kernels {model.kernels}, "
            f"gradient checkpointing {'on' if model.gradient_checkpointing else 'off'}, "
            f"FSDP reshard after forward {'on' if cfg.workers.reshard_after_forward else 'off'}")
