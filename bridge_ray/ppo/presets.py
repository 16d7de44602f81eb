"""Named ``PPOConfig`` presets: the seed's GSM8K PPO, its GRPO sibling, and a small smoke/benchmark run.

Nodes and GPUs per node stay None in every preset: the preflight fills in what the cluster has.

Example:
    >>> cfg = grpo_gsm8k_llama1b(model_dir="/shared/models/Llama-3.2-1B-Instruct")
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from bridge_ray.ppo.config import (
    ActorConfig,
    AlgorithmConfig,
    CriticConfig,
    DataConfig,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    RolloutConfig,
    TrainerConfig,
)
from bridge_ray.records import home_dir


def _gsm8k_paths(model_dir, data_dir, output_dir, run_name):
    home = home_dir()
    data = Path(data_dir or home / "data" / "gsm8k")
    model = str(model_dir or home / "models" / "Llama-3.2-1B-Instruct")
    files = DataConfig(train_files=(str(data / "rl_train.parquet"),), val_files=(str(data / "rl_val.parquet"),))
    return model, files, str(output_dir or home / "outputs" / run_name)


def ppo_gsm8k_llama1b(model_dir: str | None = None, data_dir: str | None = None,
                      output_dir: str | None = None) -> PPOConfig:
    """PPO (GAE) on GSM8K, Llama-3.2-1B-Instruct as actor and critic: the seed's settings.

    Train batch 256 prompts, prompt 512 / response 256 tokens, actor lr 1e-6, critic lr 1e-5,
    PPO mini batch 64, micro batch 4 per GPU, rollout TP 1, vLLM memory 0.9, KL coef 0.001
    (in the reward, where verl applies ``kl_ctrl.kl_coef``), 15 epochs, save and test every
    10 steps. Nodes and GPUs per node: what the cluster has.

    Args:
        model_dir: Local model folder (default ``$BRIDGE_RAY_HOME/models/Llama-3.2-1B-Instruct``).
        data_dir: Folder with ``rl_train.parquet``/``rl_val.parquet`` (``bridge-ray data gsm8k``);
            default ``$BRIDGE_RAY_HOME/data/gsm8k``.
        output_dir: Run folder (default ``$BRIDGE_RAY_HOME/runs/ppo-gsm8k-llama1b``).
    """
    model, data, out = _gsm8k_paths(model_dir, data_dir, output_dir, "ppo-gsm8k-llama1b")
    return PPOConfig(
        model=ModelConfig(path=model),
        actor=ActorConfig(lr=1e-6, mini_batch_size=64, micro_batch_size_per_gpu=4),
        critic=CriticConfig(lr=1e-5, micro_batch_size_per_gpu=4),
        rollout=RolloutConfig(tensor_parallel_size=1, gpu_memory_utilization=0.9, n=1),
        algorithm=AlgorithmConfig(name="ppo", kl="reward", kl_coef=0.001),
        data=dataclasses.replace(data, train_batch_size=256, max_prompt_length=512, max_response_length=256),
        trainer=TrainerConfig(output_dir=out, total_epochs=15, save_freq=10, test_freq=10,
                              experiment_name="ppo-gsm8k-llama1b"),
    )


def grpo_gsm8k_llama1b(model_dir: str | None = None, data_dir: str | None = None,
                       output_dir: str | None = None) -> PPOConfig:
    """GRPO on GSM8K with Llama-3.2-1B-Instruct: 5 samples per prompt, KL in the loss, no critic.

    Same data, lengths, batch sizes and schedule as ``ppo_gsm8k_llama1b``; vLLM memory 0.6
    (5 samples per prompt need KV room while the actor stays resident). Arguments as there.
    """
    model, data, out = _gsm8k_paths(model_dir, data_dir, output_dir, "grpo-gsm8k-llama1b")
    return PPOConfig(
        model=ModelConfig(path=model),
        actor=ActorConfig(lr=1e-6, mini_batch_size=64, micro_batch_size_per_gpu=4),
        rollout=RolloutConfig(tensor_parallel_size=1, gpu_memory_utilization=0.6, n=5),
        algorithm=AlgorithmConfig(name="grpo", kl="loss", kl_coef=0.001),
        data=dataclasses.replace(data, train_batch_size=256, max_prompt_length=512, max_response_length=256),
        trainer=TrainerConfig(output_dir=out, total_epochs=15, save_freq=10, test_freq=10,
                              experiment_name="grpo-gsm8k-llama1b"),
    )


def tiny_gsm8k(algorithm: Literal["ppo", "grpo"], model_dir: str, train_file: str, val_file: str | None,
               output_dir: str, total_steps: int = 4) -> PPOConfig:
    """A few steps of a small random-init Llama on one GPU: the GPU smoke test and the benchmark.

    16 prompts per step (x2 samples for GRPO), prompt 256 / response 64 tokens, vLLM eager mode
    and no torch.compile (both cut minutes of startup and change nothing the comparison
    measures), few loader/agent/reward workers, final checkpoint only. The reward adds a small
    digit-share bonus to verl's GSM8K score so a random model's rewards vary
    (``bridge_ray.ppo.reward:gsm8k_digit_bonus``).

    Args:
        algorithm: ``"ppo"`` (GAE + critic, KL in reward) or ``"grpo"`` (KL in loss).
        model_dir: Local HF model folder (``bridge_ray.assets.build_demo_assets``).
        train_file: RL parquet; val_file: RL parquet or None.
        output_dir: Absolute run folder.
        total_steps: Steps to run.
    """
    grpo = algorithm == "grpo"
    return PPOConfig(
        model=ModelConfig(path=model_dir),
        actor=ActorConfig(lr=1e-6, mini_batch_size=8, micro_batch_size_per_gpu=4, use_torch_compile=False),
        critic=CriticConfig(lr=1e-5, micro_batch_size_per_gpu=4),
        rollout=RolloutConfig(gpu_memory_utilization=0.4, n=2 if grpo else 1, enforce_eager=True,
                              num_agent_workers=2),
        algorithm=AlgorithmConfig(name=algorithm, kl="loss" if grpo else "reward"),
        data=DataConfig(train_files=(train_file,), val_files=(val_file,) if val_file else (), train_batch_size=16,
                        max_prompt_length=256, max_response_length=64, num_loader_workers=2),
        reward=RewardConfig(function="bridge_ray.ppo.reward:gsm8k_digit_bonus", num_workers=2),
        trainer=TrainerConfig(output_dir=output_dir, total_epochs=1, total_steps=total_steps, save_freq=-1,
                              test_freq=-1, val_before_train=False, loggers=("console", "file"),
                              experiment_name=f"{algorithm}-tiny"),
    )


PRESETS = {"ppo_gsm8k_llama1b": ppo_gsm8k_llama1b, "grpo_gsm8k_llama1b": grpo_gsm8k_llama1b, "tiny_gsm8k": tiny_gsm8k}
