"""Instruction tuning: OpenAssistant-style conversations through the SFT path (verl's SFT trainer on Ray Train).

``instruct_tune(cfg, conversation_files)`` flattens the conversation trees (``bridge_ray.data.
conversations``) into ``<output_dir>/data/train.parquet`` and runs ``bridge_ray.sft.fit`` on it, so
the run is recorded, checkpointed, merged, checked and uploaded exactly as any SFT run. Any Hugging
Face model with a chat-template tokenizer works, a model pretrained with ``bridge_ray.pretrain``
included.

Example:
    >>> cfg = instruct_tiny_cpu("/abs/pretrain/hf", "/abs/instruct")
    >>> instruct_tune(cfg, ["/data/oasst2.trees.jsonl"], lang="en").hf_model
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from bridge_ray.sft import SFTConfig, sft_gsm8k_llama1b, sft_tiny_cpu

# Real conversations run long: cut at max_length instead of failing the step.
TRUNCATION = "right"


def _for_chat(cfg: SFTConfig, experiment: str) -> SFTConfig:
    """``cfg`` reading the flattened conversations (written by ``prepare``), cut at max_length, no validation."""
    train = (str(Path(cfg.trainer.output_dir) / "data" / "train.parquet"),)
    data = dataclasses.replace(cfg.data, train_files=train, val_files=(), truncation=TRUNCATION)
    trainer = dataclasses.replace(cfg.trainer, test_freq=-1, experiment_name=experiment,
                                  project_name="bridge-ray-instruct")
    return dataclasses.replace(cfg, data=data, trainer=trainer)


def instruct_tiny_cpu(model_dir: str, output_dir: str) -> SFTConfig:
    """The tiny CPU SFT preset for chat data: 2 CPU workers, 8 steps, no validation set."""
    cfg = _for_chat(sft_tiny_cpu(model_dir, "", None, output_dir), "instruct-tiny-cpu")
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, total_steps=8, save_freq=4))


def instruct_1b(model_dir: str, output_dir: str) -> SFTConfig:
    """The 1B SFT preset (GPU workers) for chat data, 2 epochs, no validation set."""
    return _for_chat(sft_gsm8k_llama1b(model_dir=model_dir, output_dir=output_dir), "instruct-1b")


PRESETS = {"instruct_tiny_cpu": instruct_tiny_cpu, "instruct_1b": instruct_1b}


def data_file(cfg: SFTConfig) -> Path:
    """Where the flattened conversations of a run go (``<output_dir>/data/train.parquet``)."""
    return Path(cfg.trainer.output_dir) / "data" / "train.parquet"


def prepare(cfg: SFTConfig, conversation_files: Sequence[str], lang: str | None = None, mode: str = "top") -> SFTConfig:
    """``cfg`` training on the flattened ``conversation_files`` (written to ``data_file(cfg)``).

    Raises:
        ConfigError: a file is missing or of an unknown layout, or no conversation came out.
    """
    from bridge_ray.data.conversations import convert_conversations

    path, count = convert_conversations(conversation_files, data_file(cfg), mode=mode, lang=lang)
    print(f"[bridge-ray] instruct data: {count} conversations -> {path}", flush=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_files=(str(path),), val_files=()))


def instruct_tune(cfg: SFTConfig, conversation_files: Sequence[str], lang: str | None = None, mode: str = "top"):
    """Flatten the conversations and fine-tune on them with ``bridge_ray.sft.fit``; returns its ``SFTResult``."""
    from bridge_ray import sft

    return sft.fit(prepare(cfg, conversation_files, lang, mode))
