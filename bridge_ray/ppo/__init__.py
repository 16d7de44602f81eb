"""PPO and GRPO with verl's ``main_ppo`` inside a Ray Job, through the same client as SFT.

Example:
    >>> from bridge_ray import ppo
    >>> cfg = ppo.apply_overrides(ppo.grpo_gsm8k_llama1b(), ["ppo.trainer.total_steps=20"])
    >>> result = ppo.run(cfg)            # inside a Ray Job driver: bridge-ray submit recipes/grpo_gsm8k.py
    >>> result.hf_model
"""
from __future__ import annotations

from bridge_ray.ppo.config import (
    ActorConfig,
    AlgorithmConfig,
    CriticConfig,
    DataConfig,
    ModelConfig,
    PPOConfig,
    ReferenceConfig,
    RewardConfig,
    RolloutConfig,
    TrainerConfig,
    resolve_cpu,
    resolve_gpus,
    validate,
)
from bridge_ray.ppo.overrides import to_verl_overrides
from bridge_ray.ppo.presets import (
    PRESETS,
    grpo_gsm8k_llama1b,
    grpo_tiny_cpu,
    load_preset,
    ppo_gsm8k_llama1b,
    ppo_tiny_cpu,
    tiny_gsm8k,
)
from bridge_ray.ppo.reward import RewardFailed
from bridge_ray.ppo.run import PPOFailed, PPOResult, dry_run, from_args, main, run


def apply_overrides(cfg: PPOConfig, overrides: list[str]) -> PPOConfig:
    """``cfg`` with dotted ``ppo.<group>.<key>=value`` overrides (the ``ppo.`` prefix is optional)."""
    from bridge_ray.config import apply_overrides as apply

    return apply(cfg, overrides, prefix="ppo")


__all__ = [
    "PRESETS",
    "ActorConfig",
    "AlgorithmConfig",
    "CriticConfig",
    "DataConfig",
    "ModelConfig",
    "PPOConfig",
    "PPOFailed",
    "PPOResult",
    "ReferenceConfig",
    "RewardConfig",
    "RewardFailed",
    "RolloutConfig",
    "TrainerConfig",
    "apply_overrides",
    "dry_run",
    "from_args",
    "grpo_gsm8k_llama1b",
    "grpo_tiny_cpu",
    "load_preset",
    "main",
    "ppo_gsm8k_llama1b",
    "ppo_tiny_cpu",
    "resolve_cpu",
    "resolve_gpus",
    "run",
    "tiny_gsm8k",
    "to_verl_overrides",
    "validate",
]
