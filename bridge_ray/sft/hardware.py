"""What ``auto`` picks for SFT on the training workers' hosts, and which explicit choice they cannot run.

``resolve(cfg, hardware)`` replaces every ``auto`` speed setting. On GPUs: flash-attn when it
imports, else torch's own varlen kernel (``bridge_ray.platforms.attention``), else sdpa; verl's
fused Triton lm-head + log-prob kernels when Triton imports; a token budget that suits the
attention. CPU workers get what runs on gloo: sdpa, no kernels. ``check(cfg, hardware)`` says
which explicit choice the probed workers cannot run. The probe itself (what a node offers,
cached per node) is ``bridge_ray.platforms.hardware``.

Why not liger-kernel by default: verl 0.9.1 without flash-attn computes the log-probs of bf16
logits one token at a time (``logprobs_from_logits_v2``: ~75k kernel launches a step for a
global batch of 64 GSM8K rows), and liger's kernels leave that path in place. Measured on one
H100 (1B shape, 2026-12-05): liger 6.1k tokens/s, fused 26.1k, same loss.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from bridge_ray.platforms.hardware import Hardware, liger_missing

if TYPE_CHECKING:
    from bridge_ray.sft.config import SFTConfig

# Tokens per worker micro batch when max_tokens_per_worker="auto": varlen kernels cost O(sum of
# sample lengths^2); sdpa on a packed row builds a dense T x T mask, so it gets a smaller row.
AUTO_TOKENS_VARLEN = 16384
AUTO_TOKENS_SDPA = 4096

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
        hardware: What the workers' hosts offer (``bridge_ray.platforms.hardware.probe``).
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


def needs_probe(cfg: SFTConfig) -> bool:
    """Whether ``cfg``'s speed settings depend on the GPU workers' hosts: ``auto`` ones, or a GPU kernel to check."""
    return cfg.workers.use_gpu and (
        "auto" in (cfg.model.attn_implementation, cfg.model.kernels, cfg.data.max_tokens_per_worker)
        or cfg.model.attn_implementation in ("flash_attention_2", "torch_varlen") or cfg.model.kernels != "none")


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
