"""Named ``PPOConfig`` presets: the seed's GSM8K PPO, its GRPO sibling, a small GPU smoke/benchmark
run, and the CPU presets that take real steps on a laptop or in CI.

Nodes and GPUs per node stay None in every preset: the preflight fills in what the cluster has.

Example:
    >>> cfg = grpo_gsm8k_llama1b(model_dir="/shared/models/Llama-3.2-1B-Instruct")
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from bridge_ray.cluster.records import home_dir
from bridge_ray.errors import ConfigError
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
)

DIGIT_BONUS_REWARD = "bridge_ray.ppo.reward:gsm8k_digit_bonus"


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
    10 steps. Nodes and GPUs per node: what the cluster has (GPUs only: ``trainer.device=gpu``).

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
        trainer=TrainerConfig(output_dir=out, device="gpu", total_epochs=15, save_freq=10, test_freq=10,
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
        trainer=TrainerConfig(output_dir=out, device="gpu", total_epochs=15, save_freq=10, test_freq=10,
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
        model_dir: Local HF model folder (``bridge_ray.models.assets.build_demo_assets``).
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
        reward=RewardConfig(function=DIGIT_BONUS_REWARD, num_workers=2),
        trainer=TrainerConfig(output_dir=output_dir, device="gpu", total_epochs=1, total_steps=total_steps,
                              save_freq=-1,
                              test_freq=-1, val_before_train=False, loggers=("console", "file"),
                              experiment_name=f"{algorithm}-tiny"),
    )


def _tiny_cpu(algorithm: Literal["ppo", "grpo"], model_dir, data_dir, output_dir, total_steps) -> PPOConfig:
    if model_dir is None or data_dir is None:
        from bridge_ray.models.assets import build_demo_assets

        files = build_demo_assets(home_dir() / "demo", shape="tiny")
        model_dir, data_dir = model_dir or files["model"], data_dir or files["rl_train"].parent
    grpo, data = algorithm == "grpo", Path(data_dir)
    return PPOConfig(
        model=ModelConfig(path=str(model_dir), gradient_checkpointing=False),
        actor=ActorConfig(lr=1e-4, mini_batch_size=4, micro_batch_size_per_gpu=4, strategy="fsdp2",
                          use_torch_compile=False),
        critic=CriticConfig(lr=1e-4, micro_batch_size_per_gpu=4),
        ref=ReferenceConfig(log_prob_micro_batch_size_per_gpu=4),
        rollout=RolloutConfig(n=4 if grpo else 1, enforce_eager=True, log_prob_micro_batch_size_per_gpu=4,
                              max_num_batched_tokens=2048, num_agent_workers=1, cpu_kv_cache_gib=1),
        algorithm=AlgorithmConfig(name=algorithm, kl="loss" if grpo else "reward"),
        data=DataConfig(train_files=(str(data / "rl_train.parquet"),), val_files=(str(data / "rl_val.parquet"),),
                        train_batch_size=4, max_prompt_length=192, max_response_length=32, num_loader_workers=0),
        reward=RewardConfig(function=DIGIT_BONUS_REWARD, num_workers=1),
        trainer=TrainerConfig(output_dir=str(output_dir or home_dir() / "outputs" / f"{algorithm}-tiny-cpu"),
                              device="cpu", total_epochs=1, total_steps=total_steps, save_freq=-1, test_freq=-1,
                              val_before_train=False, experiment_name=f"{algorithm}-tiny-cpu"),
    )


def ppo_tiny_cpu(model_dir: str | None = None, data_dir: str | None = None, output_dir: str | None = None,
                 total_steps: int = 2) -> PPOConfig:
    """PPO (GAE + critic) on CPU: the tiny offline Llama, 4 prompts a step, responses of 32 tokens.

    Runs on CPU whatever the cluster has (``trainer.device=cpu``): verl's FSDP2 actor, critic
    and reference over gloo, vLLM's CPU build as the rollout (eager, 1 GiB KV cache). A step
    takes seconds after ~1.5 min of start-up; a run needs ~8 GB of host memory. The reward adds a
    digit-share bonus to verl's GSM8K score so a random model's rewards vary
    (``bridge_ray.ppo.reward:gsm8k_digit_bonus``). Final checkpoint only; metrics in
    ``metrics.jsonl``.

    Args:
        model_dir: Local HF model folder; data_dir: folder with ``rl_train.parquet`` /
            ``rl_val.parquet``. Either None: the demo model and synthetic data, built once
            (then reused) under ``$BRIDGE_RAY_HOME/demo``.
        output_dir: Absolute run folder (default ``$BRIDGE_RAY_HOME/outputs/ppo-tiny-cpu``).
        total_steps: Steps to run.
    """
    return _tiny_cpu("ppo", model_dir, data_dir, output_dir, total_steps)


def grpo_tiny_cpu(model_dir: str | None = None, data_dir: str | None = None, output_dir: str | None = None,
                  total_steps: int = 2) -> PPOConfig:
    """GRPO on CPU: as ``ppo_tiny_cpu`` with 4 samples per prompt, KL in the loss and no critic.

    Default run folder ``$BRIDGE_RAY_HOME/outputs/grpo-tiny-cpu``; arguments as there.
    """
    return _tiny_cpu("grpo", model_dir, data_dir, output_dir, total_steps)


PRESETS = {"ppo_gsm8k_llama1b": ppo_gsm8k_llama1b, "grpo_gsm8k_llama1b": grpo_gsm8k_llama1b, "tiny_gsm8k": tiny_gsm8k,
           "ppo_tiny_cpu": ppo_tiny_cpu, "grpo_tiny_cpu": grpo_tiny_cpu}


def split_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    """A recipe's arguments as (``preset=NAME`` / ``--preset NAME`` or None, the other arguments).

    A leading ``--`` is dropped.
    """
    args, preset, rest, i = [a for a in argv if a != "--"], None, [], 0
    while i < len(args):
        if args[i] == "--preset" and i + 1 < len(args):
            preset, i = args[i + 1], i + 2
            continue
        if args[i].startswith(("preset=", "--preset=")):
            preset = args[i].split("=", 1)[1]
        else:
            rest.append(args[i])
        i += 1
    return preset, rest


def load_preset(name: str) -> PPOConfig:
    """The preset ``name`` with its default paths (the CPU presets build their demo assets).

    Raises:
        ConfigError: unknown name, or a preset that needs arguments (``tiny_gsm8k``).
    """
    selectable = {key: fn for key, fn in PRESETS.items() if key != "tiny_gsm8k"}
    if name not in selectable:
        raise ConfigError(f"unknown PPO preset {name!r}: choose from {', '.join(sorted(selectable))}")
    return selectable[name]()
