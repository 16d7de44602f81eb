"""Pretraining from scratch on raw text, with verl's FSDP engine on Ray Train (the same path as SFT).

Why verl's engine and not a new training loop: verl 0.9.1's ``SFTTrainer`` takes its dataset
from ``data.custom_cls``, and its SFT loss is a token-level loss under a ``loss_mask``; a dataset
of fixed-length windows over tokenized text with a mask of ones *is* next-token pretraining. So
pretraining reuses, unchanged, what SFT already runs and tests: the FSDP engine (bf16 on GPU,
fp32 over gloo on CPU with bridge-ray's CPU platform), its AdamW with a cosine schedule and
warm-up, its checkpoints with the data loader's position (a killed worker resumes at the same
step), its MFU counter, ``verl.model_merger`` to Hugging Face, and bridge-ray's Ray Train worker
loop with its per-step hook. One engine, one checkpoint format, one merger. What verl lacks is a
random-init switch (its engine always calls ``from_pretrained``): bridge-ray writes a seeded
random-init model of the chosen shape with the run's tokenizer first (``model.build_init_model``)
and verl loads that.

Example:
    >>> from bridge_ray import pretrain
    >>> cfg = pretrain.apply_overrides(pretrain.pretrain_1b(tok, files, "/abs/run"), ["pretrain.optim.lr=2e-4"])
    >>> result = pretrain.fit(cfg)          # inside a Ray Job driver
"""
from __future__ import annotations

from bridge_ray.pretrain.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainerConfig,
    parse_args,
    pretrain_0p1b,
    pretrain_1b,
    pretrain_tiny_cpu,
    to_verl_overrides,
    validate,
)
from bridge_ray.pretrain.trainer import PretrainResult, dry_run, fit, main


def apply_overrides(cfg: PretrainConfig, overrides: list[str]) -> PretrainConfig:
    """``cfg`` with dotted ``pretrain.<group>.<key>=value`` overrides (the ``pretrain.`` prefix is optional)."""
    from bridge_ray.config import apply_overrides as apply

    return apply(cfg, overrides, prefix="pretrain")


__all__ = [
    "PRESETS",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainResult",
    "TrainerConfig",
    "apply_overrides",
    "dry_run",
    "fit",
    "main",
    "parse_args",
    "pretrain_0p1b",
    "pretrain_1b",
    "pretrain_tiny_cpu",
    "to_verl_overrides",
    "validate",
]
