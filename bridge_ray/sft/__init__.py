"""Supervised fine-tuning with verl on Ray Train.

Example:
    >>> from bridge_ray import sft
    >>> cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(), ["sft.optim.lr=2e-5"])
    >>> result = sft.fit(cfg)          # inside a Ray Job driver
"""
from __future__ import annotations

from bridge_ray.sft.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SFTConfig,
    TrainerConfig,
    WorkersConfig,
    home_dir,
    parse_args,
    run_dir,
    sft_gsm8k_llama1b,
    sft_gsm8k_llama1b_seed,
    sft_tiny_cpu,
    to_verl_overrides,
    validate,
)
from bridge_ray.sft.hardware import Hardware, resolve
from bridge_ray.sft.trainer import SFTResult, TrainingFailed, dry_run, fit, from_args, main


def apply_overrides(cfg: SFTConfig, overrides: list[str]) -> SFTConfig:
    """``cfg`` with dotted ``sft.<group>.<key>=value`` overrides (the ``sft.`` prefix is optional)."""
    from bridge_ray.config import apply_overrides as apply

    return apply(cfg, overrides, prefix="sft")


__all__ = [
    "PRESETS",
    "DataConfig",
    "Hardware",
    "ModelConfig",
    "OptimConfig",
    "SFTConfig",
    "SFTResult",
    "TrainerConfig",
    "TrainingFailed",
    "WorkersConfig",
    "apply_overrides",
    "dry_run",
    "fit",
    "from_args",
    "home_dir",
    "main",
    "parse_args",
    "resolve",
    "run_dir",
    "sft_gsm8k_llama1b",
    "sft_gsm8k_llama1b_seed",
    "sft_tiny_cpu",
    "to_verl_overrides",
    "validate",
]
