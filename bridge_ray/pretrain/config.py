"""``PretrainConfig``: a typed pretraining run, its presets, its checks, and its verl overrides.

Pretraining runs on verl's SFT trainer and FSDP engine (see ``bridge_ray.pretrain``); only
``to_verl_overrides`` knows verl's key names, and a unit test composes them against verl's own
``sft_trainer_engine`` config.

Example:
    >>> cfg = apply_overrides(pretrain_0p1b(tokenizer, files, "/abs/run"), ["pretrain.optim.lr=6e-4"])
    >>> validate(cfg)
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from bridge_ray.config import LOGGERS, epochs_needed, hydra_list, hydra_value, too_small
from bridge_ray.errors import ConfigError
from bridge_ray.sft.config import WorkersConfig, auto_workers_problems, strategy_problems, validation_problem

DATASET_MODULE = "pkg://bridge_ray.pretrain.dataset"
DATASET_CLASS = "PackedTextDataset"
# verl's FSDP engine computes in bf16 (params) / fp32 (reductions) unless ``engine.mixed_precision``
# says otherwise; ``engine.dtype`` does not reach FSDP. fp32 also turns its autocast off.
FP32_PARAMS = {"bfloat16": [], "float32": [f"+engine.mixed_precision.{name}=fp32"
                                          for name in ("param_dtype", "reduce_dtype", "buffer_dtype")]}


@dataclass(frozen=True)
class ModelConfig:
    """The model: a named shape (``bridge_ray.pretrain.model.SHAPES``) and the tokenizer it uses.

    ``dtype`` is FSDP's compute dtype (master weights stay fp32): bfloat16 on GPUs, float32 on CPU.
    ``fused_kernels`` (on by default) computes the log-probs from the hidden states in chunks (verl's torch
    backend), so the (batch, sequence, vocabulary) logits are never held whole. Off, verl 0.9.1 builds the
    logits, flattens them to one row per token and, in bf16, takes a log-softmax one row at a time: a few
    kernels per token, forward and backward, and the step becomes CPU-bound (1B shape, sequence 2048, 131k
    tokens a step on one H100: 21 s a step off, 2.85 s on; benchmarks/RESULTS.md). verl's Triton backend is
    not used: for fixed-length (unpacked) batches it returns the log-probs flattened and the step dies in
    ``prepare_model_outputs`` (IndexError; seen on an H200). ``liger`` (GPU workers, liger-kernel installed
    there) swaps Llama's RMSNorm, SwiGLU and rotary embedding for liger-kernel's fused Triton kernels (verl's
    ``use_liger``; the log-probs stay verl's): that elementwise work is 41 % of a 1B step's GPU time.
    """

    shape: str = "tiny"
    tokenizer_path: str = ""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    fused_kernels: bool = True
    liger: bool = False
    init_seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Raw text files and how they become fixed-length sequences; batches count sequences."""

    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    text_key: str = "text"
    seq_len: int = 2048
    global_batch_size: int = 256
    micro_batch_size_per_worker: int = 8
    num_loader_workers: int = 0
    tokenize_cpus: int = 1


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay to ``lr * min_lr_ratio``. ``fused``: torch's fused
    AdamW (one kernel over all parameters; the same update)."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip_grad: float = 1.0
    fused: bool = False


@dataclass(frozen=True)
class TrainerConfig:
    """Run length, checkpoints, resume, failures, logging, the test prompt and the upload."""

    output_dir: str = ""
    total_steps: int = 1000
    save_freq: int = 500
    test_freq: int = -1
    save_checkpoint: bool = True
    resume_mode: Literal["auto", "disable"] = "auto"
    max_failures: int = 0
    loggers: tuple[str, ...] = ("console",)
    project_name: str = "bridge-ray-pretrain"
    experiment_name: str = "pretrain"
    seed: int = 1
    test_prompt: str = "Once upon a time,"
    hub_repo_id: Optional[str] = None
    hub_private: bool = False


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. Override on the command line as ``pretrain.<group>.<key>=...``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def pretrain_tiny_cpu(tokenizer_path: str, train_files, val_files, output_dir: str) -> PretrainConfig:
    """A tiny Llama on 2 CPU workers (fp32, gloo): 16 steps of 8 sequences of 128 tokens, validated every 8 when
    there are ``val_files``; tests and demo."""
    val_files = tuple(val_files)
    return PretrainConfig(
        model=ModelConfig(shape="tiny", tokenizer_path=tokenizer_path, dtype="float32"),
        data=DataConfig(train_files=tuple(train_files), val_files=val_files, seq_len=128,
                        global_batch_size=8, micro_batch_size_per_worker=4),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.01),
        workers=WorkersConfig(num_workers=2, cpus_per_worker=1),
        trainer=TrainerConfig(output_dir=output_dir, total_steps=16, save_freq=8, test_freq=8 if val_files else -1,
                              experiment_name="tiny-cpu"),
    )


def pretrain_0p1b(tokenizer_path: str, train_files, output_dir: str,
                  num_gpus: int | Literal["auto"] = "auto") -> PretrainConfig:
    """The older workflow's 0.125B on GPUs: 12 x 768, sequence 2048, 0.5M tokens a step, lr 6e-4; every GPU
    of the cluster by default (``num_gpus="auto"``)."""
    return PretrainConfig(
        model=ModelConfig(shape="0.1b", tokenizer_path=tokenizer_path),
        data=DataConfig(train_files=tuple(train_files), seq_len=2048, global_batch_size=256,
                        micro_batch_size_per_worker=16, num_loader_workers=2, tokenize_cpus=4),
        optim=OptimConfig(lr=6e-4, warmup_steps=375),
        workers=WorkersConfig(num_workers=num_gpus, cpus_per_worker=8, gpus_per_worker=1),
        trainer=TrainerConfig(output_dir=output_dir, total_steps=20000, save_freq=1000, experiment_name="0.1b"),
    )


def pretrain_1b(tokenizer_path: str, train_files, output_dir: str,
                num_gpus: int | Literal["auto"] = "auto") -> PretrainConfig:
    """The 1B shape (Llama-3.2-1B layers) on GPUs: sequence 2048, 1M tokens a step, lr 3e-4; every GPU of the
    cluster by default (``num_gpus="auto"``)."""
    return PretrainConfig(
        model=ModelConfig(shape="1b", tokenizer_path=tokenizer_path),
        data=DataConfig(train_files=tuple(train_files), seq_len=2048, global_batch_size=512,
                        micro_batch_size_per_worker=8, num_loader_workers=2, tokenize_cpus=4),
        optim=OptimConfig(lr=3e-4, warmup_steps=2000),
        workers=WorkersConfig(num_workers=num_gpus, cpus_per_worker=8, gpus_per_worker=1),
        trainer=TrainerConfig(output_dir=output_dir, total_steps=50000, save_freq=1000, experiment_name="1b"),
    )


PRESETS = {"pretrain_tiny_cpu": pretrain_tiny_cpu, "pretrain_0p1b": pretrain_0p1b, "pretrain_1b": pretrain_1b}


def parse_args(argv: list[str], default_preset: str) -> tuple[str, list[str]]:
    """Split a recipe's arguments into a preset name (``preset=NAME``) and dotted overrides.

    Raises:
        ConfigError: for an unknown preset, naming the known ones.
    """
    args = [a for a in argv if a != "--"]
    presets = [a.split("=", 1)[1] for a in args if a.startswith(("preset=", "--preset="))]
    preset = presets[-1] if presets else default_preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose from {', '.join(sorted(PRESETS))}")
    return preset, [a for a in args if not a.startswith(("preset=", "--preset="))]


def _batch_problems(data: DataConfig, workers: WorkersConfig) -> list[str]:
    if workers.num_workers == "auto":  # checked again once the cluster gave the count (preflight)
        workers = dataclasses.replace(workers, num_workers=1)
    too_few = too_small(1, {"pretrain.data.global_batch_size": data.global_batch_size,
                            "pretrain.data.micro_batch_size_per_worker": data.micro_batch_size_per_worker,
                            "pretrain.workers.num_workers": workers.num_workers})
    if too_few:
        return too_few
    per_worker, rest = divmod(data.global_batch_size, workers.num_workers)
    if rest or per_worker % data.micro_batch_size_per_worker:
        return [f"pretrain.data.global_batch_size={data.global_batch_size} must split into workers.num_workers="
                f"{workers.num_workers} equal shares, each a multiple of data.micro_batch_size_per_worker="
                f"{data.micro_batch_size_per_worker}"]
    return []


def _model_problems(model: ModelConfig) -> list[str]:
    from bridge_ray.pretrain.model import SHAPES

    problems = [] if model.shape in SHAPES else [
        f"pretrain.model.shape={model.shape!r} is not known: choose from {', '.join(SHAPES)}"]
    if not model.tokenizer_path or not os.path.isabs(model.tokenizer_path):
        problems.append(f"pretrain.model.tokenizer_path={model.tokenizer_path!r} must be an absolute tokenizer "
                        "folder (train one with recipes/train_tokenizer.py)")
    return problems


def _data_problems(data: DataConfig) -> list[str]:
    problems = [] if data.train_files else [
        "pretrain.data.train_files is empty: set pretrain.data.train_files=[/abs/a.jsonl]"]
    problems += [f"pretrain.data.{name}: {path} must be an absolute path"
                 for name in ("train_files", "val_files") for path in getattr(data, name) if not os.path.isabs(path)]
    if data.seq_len < 8:
        problems.append(f"pretrain.data.seq_len={data.seq_len} must be >= 8")
    problems += too_small(1, {"pretrain.data.tokenize_cpus": data.tokenize_cpus})
    problems += too_small(0, {"pretrain.data.num_loader_workers": data.num_loader_workers})
    return problems


def _trainer_problems(trainer: TrainerConfig, optim: OptimConfig) -> list[str]:
    problems = []
    if not trainer.output_dir or not os.path.isabs(trainer.output_dir):
        problems.append(f"pretrain.trainer.output_dir={trainer.output_dir!r} must be an absolute path "
                        "(relative paths land in Ray's unpacked working_dir)")
    if trainer.total_steps < 1:
        problems.append(f"pretrain.trainer.total_steps={trainer.total_steps} must be >= 1")
    for name in ("save_freq", "test_freq"):
        value = getattr(trainer, name)
        if value == 0 or value < -1:
            problems.append(f"pretrain.trainer.{name}={value}: use -1 (off) or a step count >= 1")
    if unknown := sorted(set(trainer.loggers) - set(LOGGERS)):
        problems.append(f"pretrain.trainer.loggers has {unknown}: choose from {', '.join(LOGGERS)}")
    if trainer.max_failures < -1:
        problems.append(f"pretrain.trainer.max_failures={trainer.max_failures}: use -1 (retry forever), 0 or more")
    if optim.lr <= 0 or not 0 <= optim.min_lr_ratio <= 1 or optim.warmup_steps < 0:
        problems.append("pretrain.optim.lr must be > 0, optim.min_lr_ratio in [0, 1] and optim.warmup_steps >= 0")
    elif optim.warmup_steps >= trainer.total_steps:
        problems.append(f"pretrain.optim.warmup_steps={optim.warmup_steps} must be below "
                        f"trainer.total_steps={trainer.total_steps}")
    return problems


def validate(cfg: PretrainConfig) -> PretrainConfig:
    """Check a config before anything starts; return it unchanged.

    Raises:
        ConfigError: listing every problem found, each with its fix.
    """
    problems = (_model_problems(cfg.model) + _data_problems(cfg.data)
                + (["pretrain.model.liger=true needs GPU workers (liger-kernel's kernels are Triton): set "
                    "pretrain.model.liger=false"] if cfg.model.liger and not cfg.workers.use_gpu else [])
                + _batch_problems(cfg.data, cfg.workers) + strategy_problems(cfg.workers, "pretrain")
                + auto_workers_problems(cfg.workers, "pretrain")
                + _trainer_problems(cfg.trainer, cfg.optim)
                + validation_problem(cfg.trainer.test_freq, cfg.data.val_files, "pretrain"))
    if problems:
        raise ConfigError(problems)
    return cfg


def checkpoint_dir(cfg: PretrainConfig) -> Path:
    """Where verl writes ``global_step_N/`` folders for this run."""
    return Path(cfg.trainer.output_dir) / "checkpoints"


def init_dir(cfg: PretrainConfig) -> Path:
    """Where the random-init model (and the tokenizer) is written for verl to load."""
    return Path(cfg.trainer.output_dir) / "init"


def tokens_dir(cfg: PretrainConfig) -> Path:
    """Where the token shards of the run's text files go."""
    return Path(cfg.trainer.output_dir) / "tokens"


def epochs_for(cfg: PretrainConfig, num_sequences: int) -> int:
    """Passes over the data that ``total_steps`` needs (verl stops at whichever ends first)."""
    return epochs_needed(cfg.trainer.total_steps, num_sequences, cfg.data.global_batch_size)[1]



def to_verl_overrides(cfg: PretrainConfig, train_shards, val_shards=(), total_epochs: int = 1) -> list[str]:
    """verl Hydra overrides for ``sft_trainer_engine`` (verl 0.9.1). The only place with verl key names here.

    Args:
        cfg: A validated config.
        train_shards / val_shards: token shard paths (``.bin``) from ``bridge_ray.pretrain.tokens``.
        total_epochs: passes over the training shards (``epochs_for``).
    """
    model, data, optim, workers, trainer = cfg.model, cfg.data, cfg.optim, cfg.workers, cfg.trainer
    return [
        f"model.path={hydra_value(init_dir(cfg))}",
        "model.use_remove_padding=False",
        f"model.enable_gradient_checkpointing={model.gradient_checkpointing}",
        f"+model.override_config.attn_implementation={model.attn_implementation}",
        f"model.use_fused_kernels={model.fused_kernels}",
        "model.fused_kernel_options.impl_backend=torch",
        f"model.use_liger={model.liger}",
        f"data.train_files={hydra_list(train_shards)}",
        f"data.val_files={hydra_list(val_shards) if val_shards else 'null'}",
        f"data.custom_cls.path={DATASET_MODULE}",
        f"data.custom_cls.name={DATASET_CLASS}",
        f"data.max_length={data.seq_len}",
        f"data.train_batch_size={data.global_batch_size}",
        f"data.micro_batch_size_per_gpu={data.micro_batch_size_per_worker}",
        "data.use_dynamic_bsz=False",
        "data.pad_mode=no_padding",
        f"data.num_workers={data.num_loader_workers}",
        f"engine.strategy={workers.strategy}",
        f"engine.reshard_after_forward={workers.reshard_after_forward}",
        *FP32_PARAMS[model.dtype],
        f"engine.use_torch_compile={workers.use_torch_compile}",
        f"optim.lr={optim.lr}",
        f"optim.betas=[{optim.beta1},{optim.beta2}]",
        f"optim.weight_decay={optim.weight_decay}",
        f"optim.clip_grad={optim.clip_grad}",
        "optim.lr_scheduler_type=cosine",
        f"optim.lr_warmup_steps={optim.warmup_steps}",
        f"optim.min_lr_ratio={optim.min_lr_ratio}",
        *(["optim.override_optimizer_config={fused:true}"] if optim.fused else []),
        f"trainer.default_local_dir={hydra_value(checkpoint_dir(cfg))}",
        f"trainer.project_name={hydra_value(trainer.project_name)}",
        f"trainer.experiment_name={hydra_value(trainer.experiment_name)}",
        f"trainer.total_epochs={total_epochs}",
        f"trainer.total_training_steps={trainer.total_steps}",
        f"trainer.logger=[{','.join(trainer.loggers)}]",
        f"trainer.seed={trainer.seed}",
        f"trainer.save_freq={trainer.save_freq}",
        *([] if trainer.save_checkpoint else ["checkpoint.save_contents=[]"]),
        f"trainer.test_freq={trainer.test_freq}",
        f"trainer.resume_mode={trainer.resume_mode}",
        f"trainer.device={'cuda' if workers.use_gpu else 'cpu'}",
    ]


def fits(cfg: PretrainConfig, nodes: list[dict]) -> None:
    """Raise PreflightError unless the run's workers fit ``nodes`` (``submit`` asks before sending the job)."""
    from bridge_ray.errors import PreflightError
    from bridge_ray.sft.preflight import workers_fit

    if problem := workers_fit(cfg.workers, nodes, "pretrain"):
        raise PreflightError(problem)
