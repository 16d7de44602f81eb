"""``SFTConfig``: a typed SFT run, its presets, its checks, and its verl overrides.

``to_verl_overrides`` is the only place that knows verl's Hydra key names; a unit
test composes its output against verl's own ``sft_trainer_engine`` config.

Speed settings may say ``"auto"``: ``bridge_ray.sft.hardware.resolve(cfg, hardware)`` turns
them into the fastest correct choice for what the workers' hosts offer.

Example:
    >>> cfg = apply_overrides(sft_gsm8k_llama1b(), ["sft.optim.lr=1e-5"], prefix="sft")
    >>> validate(cfg)
    >>> to_verl_overrides(resolve(cfg, Hardware(gpu="NVIDIA H200", torch_varlen=True, triton=True)))[:2]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from bridge_ray.cluster.records import home_dir
from bridge_ray.config import hydra_list, hydra_value, too_small, trainer_problems
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.platforms.env import ATTENTION_PLUGIN
from bridge_ray.sft.hardware import resolve

Attention = Literal["auto", "flash_attention_2", "torch_varlen", "sdpa", "eager"]
Kernels = Literal["auto", "liger", "fused", "liger+fused", "none"]
# Attention that only runs on packed batches, or only on CUDA.
PACKED_ONLY = ("torch_varlen",)
GPU_ONLY_ATTENTION = ("flash_attention_2", "torch_varlen")


@dataclass(frozen=True)
class ModelConfig:
    """The model to fine-tune and how its layers run.

    ``attn_implementation``: ``flash_attention_2`` (needs flash-attn), ``torch_varlen`` (torch's
    own varlen flash kernel, CUDA compute capability >= 8.0, packed batches only; registered with
    transformers by ``bridge_ray.platforms.attention``), ``sdpa``, ``eager``, or ``auto``.
    ``use_remove_padding``: packing; each micro batch is one row of whole samples, no padding.
    ``kernels``: ``liger`` (liger-kernel's RMSNorm/SwiGLU/RoPE), ``fused`` (verl's fused
    lm-head + log-prob in Triton, so logits are never materialised), ``liger+fused`` (both: liger's
    layer kernels and verl's Triton log-prob; verl turns liger's own fused cross-entropy off), ``none``,
    or ``auto`` (``fused`` where Triton imports, see ``bridge_ray.sft.hardware``).
    ``compile_layers``: ``torch.compile`` each decoder layer's forward in every worker (dynamic shapes; FSDP's
    hooks stay outside; ``bridge_ray.platforms.compiled_layers``): fewer kernel launches a step, the first steps
    pay the compile. FSDP2 only.
    """

    path: str = ""
    tokenizer_path: Optional[str] = None
    dtype: Literal["bfloat16", "float16"] = "bfloat16"
    attn_implementation: Attention = "sdpa"
    use_remove_padding: bool = False
    kernels: Kernels = "none"
    gradient_checkpointing: bool = True
    compile_layers: bool = False


@dataclass(frozen=True)
class DataConfig:
    """SFT files and batching. Rows hold ``messages``, or prompt/response columns to convert.

    ``max_tokens_per_worker``: a token budget per worker micro batch (dynamic batch size): micro
    batches are filled with whole samples up to this many tokens instead of
    ``micro_batch_size_per_worker`` samples; ``null`` keeps the fixed count; ``auto`` is
    16384 with a varlen attention kernel, 4096 with packed sdpa, null without packing.
    """

    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    messages_key: str = "messages"
    prompt_key: Optional[str] = None
    response_key: Optional[str] = None
    global_batch_size: int = 64
    micro_batch_size_per_worker: int = 8
    max_length: int = 1024
    max_tokens_per_worker: Union[int, Literal["auto"], None] = None
    pad_mode: Literal["no_padding", "right"] = "no_padding"
    truncation: Literal["error", "left", "right"] = "error"
    num_loader_workers: int = 0


@dataclass(frozen=True)
class OptimConfig:
    """AdamW settings. ``fused``: torch's fused AdamW (one kernel over all parameters instead of
    several per parameter tensor; GPU or CPU), the same update as the default."""

    lr: float = 1e-5
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    warmup_ratio: float = 0.0
    fused: bool = False


@dataclass(frozen=True)
class WorkersConfig:
    """Ray Train workers: one rank each.

    ``num_workers``: a count, or ``auto`` (GPU workers only): one worker per ``gpus_per_worker`` GPUs on
    every node of the cluster the run starts on, so one preset serves one GPU and many nodes alike.
    ``reshard_after_forward``: FSDP frees each layer's gathered parameters after its forward
    and gathers them again for backward (least memory); false keeps them until backward
    (one all-gather a layer fewer per micro batch, more memory).
    ``use_torch_compile``: verl's ``engine.use_torch_compile``; in verl 0.9.1's FSDP engine it compiles only the
    entropy function (which SFT does not compute), not the model.
    """

    num_workers: Union[int, Literal["auto"]] = 1
    cpus_per_worker: int = 1
    gpus_per_worker: int = 0
    strategy: Literal["fsdp", "fsdp2"] = "fsdp2"
    reshard_after_forward: bool = True
    use_torch_compile: bool = False

    @property
    def use_gpu(self) -> bool:
        """Whether each worker holds a GPU (``gpus_per_worker > 0``)."""
        return self.gpus_per_worker > 0


@dataclass(frozen=True)
class TrainerConfig:
    """Run length, checkpoints, resume, failures and logging."""

    output_dir: str = ""
    total_epochs: int = 1
    total_steps: Optional[int] = None
    save_freq: int = -1
    # False skips verl's final model/optimizer save and the HF merge (benchmarks, dry runs).
    save_checkpoint: bool = True
    # Upload the merged model to this Hub repo at the end (needs HF_TOKEN in the job's env).
    hub_repo_id: Optional[str] = None
    hub_private: bool = False
    test_freq: int = -1
    resume_mode: Literal["auto", "disable"] = "auto"
    max_failures: int = 0
    loggers: tuple[str, ...] = ("console",)
    project_name: str = "bridge-ray-sft"
    experiment_name: str = "sft"
    seed: int = 1


@dataclass(frozen=True)
class SFTConfig:
    """One supervised fine-tuning run. Override on the command line as ``sft.<group>.<key>=...``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def sft_tiny_cpu(model_dir: str, train_file: str, val_file: str | None, output_dir: str) -> SFTConfig:
    """A few steps of a tiny Llama on 2 CPU workers: the demo and the tests.

    Args:
        model_dir: A local HF model folder with a chat-template tokenizer.
        train_file: SFT parquet with a ``messages`` column.
        val_file: Validation parquet, or None.
        output_dir: Absolute run folder (checkpoints, config.json, metrics.json, hf/).
    """
    return SFTConfig(
        model=ModelConfig(path=model_dir, gradient_checkpointing=False),
        data=DataConfig(
            train_files=(train_file,), val_files=(val_file,) if val_file else (),
            global_batch_size=8, micro_batch_size_per_worker=2, max_length=512,
        ),
        optim=OptimConfig(lr=1e-3),
        workers=WorkersConfig(num_workers=2, cpus_per_worker=1),
        trainer=TrainerConfig(output_dir=output_dir, total_steps=6, save_freq=3, test_freq=3 if val_file else -1,
                              experiment_name="tiny-cpu"),
    )


def sft_gsm8k_llama1b(
    model_dir: str | None = None, data_dir: str | None = None, output_dir: str | None = None
) -> SFTConfig:
    """Llama-3.2-1B-Instruct on GSM8K, fast on GPUs: global batch 64, 2 epochs, bf16.

    Packed micro batches of up to ``max_tokens_per_worker`` tokens (``auto``), the fastest
    attention and kernels the GPUs' hosts offer (``auto``, see ``resolve``), no activation
    recomputation, FSDP parameters kept between forward and backward. The same samples in the
    same steps as the seed's run (``sft_gsm8k_llama1b_seed``), so the loss curve matches it.

    Args:
        model_dir: Local model folder (default ``$BRIDGE_RAY_HOME/models/Llama-3.2-1B-Instruct``).
        data_dir: Folder with ``train.parquet`` and ``val.parquet`` (default ``$BRIDGE_RAY_HOME/data/gsm8k``).
        output_dir: Run folder (default ``$BRIDGE_RAY_HOME/outputs/sft-gsm8k-llama1b``).
    """
    home = home_dir()
    data = Path(data_dir or home / "data" / "gsm8k")
    return SFTConfig(
        model=ModelConfig(path=str(model_dir or home / "models" / "Llama-3.2-1B-Instruct"), attn_implementation="auto",
                          use_remove_padding=True, kernels="auto", gradient_checkpointing=False),
        data=DataConfig(
            train_files=(str(data / "train.parquet"),), val_files=(str(data / "val.parquet"),),
            global_batch_size=64, micro_batch_size_per_worker=8, max_tokens_per_worker="auto", max_length=1024,
        ),
        optim=OptimConfig(lr=1e-5),
        workers=WorkersConfig(num_workers="auto", cpus_per_worker=8, gpus_per_worker=1, reshard_after_forward=False),
        trainer=TrainerConfig(output_dir=str(output_dir or home / "outputs" / "sft-gsm8k-llama1b"), total_epochs=2,
                              save_freq=500, test_freq=100, experiment_name="gsm8k-llama1b"),
    )


def sft_gsm8k_llama1b_seed(
    model_dir: str | None = None, data_dir: str | None = None, output_dir: str | None = None
) -> SFTConfig:
    """``sft_gsm8k_llama1b`` with the seed's settings: padded micro batches of 8 samples, sdpa,
    no fused kernels, gradient checkpointing, FSDP resharding after forward (3.0k tokens/s/GPU on
    an H200 against 26k for the fast settings on an H100, issue 13).

    Args:
        model_dir, data_dir, output_dir: as for ``sft_gsm8k_llama1b``.
    """
    cfg = sft_gsm8k_llama1b(model_dir, data_dir, output_dir)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, attn_implementation="sdpa", use_remove_padding=False, kernels="none",
                                  gradient_checkpointing=True),
        data=dataclasses.replace(cfg.data, max_tokens_per_worker=None),
        workers=dataclasses.replace(cfg.workers, reshard_after_forward=True),
    )


PRESETS = {"sft_tiny_cpu": sft_tiny_cpu, "sft_gsm8k_llama1b": sft_gsm8k_llama1b,
           "sft_gsm8k_llama1b_seed": sft_gsm8k_llama1b_seed}



def _batch_problems(data: DataConfig, workers: WorkersConfig) -> list[str]:
    too_few = too_small(1, {"data.global_batch_size": data.global_batch_size,
                            "data.micro_batch_size_per_worker": data.micro_batch_size_per_worker})
    if too_few:
        return too_few
    if workers.num_workers == "auto":  # checked again once the cluster gave the count (preflight)
        workers = dataclasses.replace(workers, num_workers=1)
    if data.global_batch_size % workers.num_workers:
        return [f"data.global_batch_size={data.global_batch_size} must be divisible by "
                f"workers.num_workers={workers.num_workers} (each worker takes an equal share)"]
    per_worker = data.global_batch_size // workers.num_workers
    if data.micro_batch_size_per_worker > per_worker:
        return [f"data.micro_batch_size_per_worker={data.micro_batch_size_per_worker} is larger than the "
                f"per-worker batch {per_worker} (global_batch_size / num_workers): lower it or raise the batch"]
    if per_worker % data.micro_batch_size_per_worker:
        return [f"per-worker batch {per_worker} must be divisible by "
                f"data.micro_batch_size_per_worker={data.micro_batch_size_per_worker}"]
    return []


def _model_problems(model: ModelConfig, workers: WorkersConfig) -> list[str]:
    problems = [] if model.path else ["model.path is empty: set sft.model.path=/abs/path/to/hf-model"]
    attention, kernels = model.attn_implementation, model.kernels
    if attention in PACKED_ONLY and not model.use_remove_padding:
        problems.append(f"model.attn_implementation={attention} needs packed batches: set "
                        "sft.model.use_remove_padding=true, or sft.model.attn_implementation=sdpa")
    if not workers.use_gpu and attention in GPU_ONLY_ATTENTION:
        problems.append(f"model.attn_implementation={attention} runs on GPUs only: set "
                        "sft.model.attn_implementation=sdpa for CPU workers (workers.gpus_per_worker=0)")
    if not workers.use_gpu and kernels not in ("none", "auto"):
        problems.append(f"model.kernels={kernels} runs on GPUs only (Triton): set sft.model.kernels=none "
                        "for CPU workers (workers.gpus_per_worker=0)")
    if model.compile_layers and workers.strategy != "fsdp2":
        problems.append("model.compile_layers=true needs workers.strategy=fsdp2 (FSDP1 wraps each layer's forward "
                        "in its own): set sft.workers.strategy=fsdp2, or sft.model.compile_layers=false")
    return problems


def validation_problem(test_freq: int, val_files, prefix: str) -> list[str]:
    """verl validates every ``test_freq`` steps on the val files; with none it fails at that step (a TypeError)."""
    if test_freq > 0 and not val_files:
        return [f"{prefix}.trainer.test_freq={test_freq} validates on {prefix}.data.val_files, which is empty: give "
                f"{prefix}.data.val_files=[/abs/val_file], or set {prefix}.trainer.test_freq=-1"]
    return []


def _data_problems(data: DataConfig) -> list[str]:
    problems = [] if data.train_files else ["data.train_files is empty: set sft.data.train_files=[/abs/train.parquet]"]
    if (data.prompt_key is None) != (data.response_key is None):
        problems.append("data.prompt_key and data.response_key go together: set both or neither")
    if data.pad_mode != "no_padding":
        problems.append(f"data.pad_mode={data.pad_mode!r}: verl 0.9.1's FSDP engine trains only with no_padding")
    if data.max_length < 1:
        problems.append(f"data.max_length={data.max_length} must be >= 1")
    tokens = data.max_tokens_per_worker
    if isinstance(tokens, int) and tokens < data.max_length:
        problems.append(f"data.max_tokens_per_worker={tokens} is below data.max_length={data.max_length}: a whole "
                        "sample must fit in one micro batch; raise it, or set sft.data.max_tokens_per_worker=null")
    return problems


def strategy_problems(workers: WorkersConfig, prefix: str) -> list[str]:
    """FSDP1 on CPU workers: verl 0.9.1 builds it with ``sync_module_states``, which torch allows on GPUs only."""
    if workers.strategy == "fsdp" and not workers.use_gpu:
        return [f"{prefix}.workers.strategy=fsdp (FSDP1) runs on GPU workers only: set {prefix}.workers.strategy=fsdp2 "
                "for CPU workers (workers.gpus_per_worker=0)"]
    return []


def auto_workers_problems(workers: WorkersConfig, prefix: str) -> list[str]:
    """``num_workers=auto`` counts GPUs: CPU workers need a number."""
    if workers.num_workers == "auto" and not workers.use_gpu:
        return [f"{prefix}.workers.num_workers=auto counts the cluster's GPUs, but these are CPU workers "
                f"(workers.gpus_per_worker=0): set {prefix}.workers.num_workers=N"]
    return []


def resolve_workers(workers: WorkersConfig, nodes: list[dict], prefix: str) -> WorkersConfig:
    """``workers`` with ``num_workers=auto`` replaced by one worker per ``gpus_per_worker`` GPUs of each alive
    node (``ray.nodes()`` rows); a count comes back unchanged.

    Raises:
        PreflightError: ``auto`` on a cluster without GPUs.
    """
    if workers.num_workers != "auto":
        return workers
    count = sum(int(n["Resources"].get("GPU", 0) // workers.gpus_per_worker) for n in nodes)
    if count < 1:
        raise PreflightError(
            f"{prefix}.workers.num_workers=auto found no GPU on the cluster ({len(nodes)} node(s)): start it on GPU "
            f"nodes, or run on CPU workers with {prefix}.workers.gpus_per_worker=0 {prefix}.workers.num_workers=N")
    return dataclasses.replace(workers, num_workers=count)


def _workers_problems(workers: WorkersConfig) -> list[str]:
    problems = strategy_problems(workers, "sft") + auto_workers_problems(workers, "sft")
    if workers.num_workers != "auto" and workers.num_workers < 1:
        problems.append(f"workers.num_workers={workers.num_workers} must be >= 1")
    problems += too_small(1, {"workers.cpus_per_worker": workers.cpus_per_worker})
    problems += too_small(0, {"workers.gpus_per_worker": workers.gpus_per_worker})
    return problems


def _trainer_problems(trainer: TrainerConfig) -> list[str]:
    problems = trainer_problems(trainer)
    if trainer.max_failures < -1:
        problems.append(f"trainer.max_failures={trainer.max_failures}: use -1 (retry forever), 0 or more")
    return problems


def _optim_problems(optim: OptimConfig) -> list[str]:
    problems = [] if optim.lr > 0 else [f"optim.lr={optim.lr} must be > 0, e.g. sft.optim.lr=1e-5"]
    if optim.weight_decay < 0 or optim.clip_grad <= 0 or not 0 <= optim.warmup_ratio < 1:
        problems.append(f"optim.weight_decay={optim.weight_decay} must be >= 0, optim.clip_grad={optim.clip_grad} > 0 "
                        f"and optim.warmup_ratio={optim.warmup_ratio} in [0, 1)")
    return problems


def validate(cfg: SFTConfig) -> SFTConfig:
    """Check a config before anything starts.

    Returns:
        ``cfg`` unchanged.

    Raises:
        ConfigError: listing every problem found, each with its fix.
    """
    problems = (_model_problems(cfg.model, cfg.workers) + _data_problems(cfg.data)
                + validation_problem(cfg.trainer.test_freq, cfg.data.val_files, "sft")
                + (_workers_problems(cfg.workers) or _batch_problems(cfg.data, cfg.workers))
                + _optim_problems(cfg.optim) + _trainer_problems(cfg.trainer))
    if problems:
        raise ConfigError(problems)
    return cfg


def checkpoint_dir(cfg: SFTConfig) -> Path:
    """Where verl writes ``global_step_N/`` folders for this run."""
    return Path(cfg.trainer.output_dir) / "checkpoints"



def _null(value) -> str:
    return "null" if value is None else str(value)


def _model_overrides(model: ModelConfig) -> list[str]:
    fused = model.kernels in ("fused", "liger+fused")
    return [
        f"model.path={hydra_value(model.path)}",
        f"model.tokenizer_path={hydra_value(model.tokenizer_path)}",
        f"model.use_remove_padding={model.use_remove_padding}",
        f"model.enable_gradient_checkpointing={model.gradient_checkpointing}",
        f"+model.override_config.attn_implementation={model.attn_implementation}",
        # verl imports model.external_lib in every worker before it builds the model's config.
        f"model.external_lib={ATTENTION_PLUGIN if model.attn_implementation == 'torch_varlen' else 'null'}",
        f"model.use_liger={model.kernels in ('liger', 'liger+fused')}",
        f"model.use_fused_kernels={fused}",
        f"model.fused_kernel_options.impl_backend={'triton' if fused else 'torch'}",
    ]


def _batch_overrides(data: DataConfig) -> list[str]:
    tokens = data.max_tokens_per_worker
    return [
        f"data.train_batch_size={data.global_batch_size}",
        f"data.micro_batch_size_per_gpu={data.micro_batch_size_per_worker}",
        f"data.use_dynamic_bsz={tokens is not None}",
        *([f"data.max_token_len_per_gpu={tokens}"] if tokens is not None else []),
    ]


def to_verl_overrides(cfg: SFTConfig) -> list[str]:
    """verl Hydra overrides for ``sft_trainer_engine`` (verl 0.9.1). The only place with verl key names.

    Args:
        cfg: A validated config whose data files already hold ``messages`` rows. ``auto``
            settings are resolved first (``resolve``; unprobed GPUs are taken as ``UNPROBED_GPU``).

    Returns:
        ``key=value`` strings for ``hydra.compose(config_name="sft_trainer_engine", overrides=...)``
        or ``torchrun -m verl.trainer.sft_trainer``.
    """
    cfg = resolve(cfg)
    model, data, optim, workers, trainer = cfg.model, cfg.data, cfg.optim, cfg.workers, cfg.trainer
    return [
        *_model_overrides(model),
        f"data.train_files={hydra_list(data.train_files)}",
        f"data.val_files={hydra_list(data.val_files) if data.val_files else 'null'}",
        f"data.messages_key={hydra_value(data.messages_key)}",
        *_batch_overrides(data),
        f"data.max_length={data.max_length}",
        f"data.pad_mode={data.pad_mode}",
        f"data.truncation={data.truncation}",
        f"data.num_workers={data.num_loader_workers}",
        f"engine.strategy={workers.strategy}",
        f"engine.reshard_after_forward={workers.reshard_after_forward}",
        f"engine.dtype={model.dtype}",
        f"engine.use_torch_compile={workers.use_torch_compile}",
        f"optim.lr={optim.lr}",
        f"optim.weight_decay={optim.weight_decay}",
        f"optim.clip_grad={optim.clip_grad}",
        f"optim.lr_warmup_steps_ratio={optim.warmup_ratio}",
        *(["optim.override_optimizer_config={fused:true}"] if optim.fused else []),
        f"trainer.default_local_dir={hydra_value(checkpoint_dir(cfg))}",
        f"trainer.project_name={hydra_value(trainer.project_name)}",
        f"trainer.experiment_name={hydra_value(trainer.experiment_name)}",
        f"trainer.total_epochs={trainer.total_epochs}",
        f"trainer.total_training_steps={_null(trainer.total_steps)}",
        f"trainer.logger=[{','.join(trainer.loggers)}]",
        f"trainer.seed={trainer.seed}",
        f"trainer.save_freq={trainer.save_freq}",
        *([] if trainer.save_checkpoint else ["checkpoint.save_contents=[]"]),
        f"trainer.test_freq={trainer.test_freq}",
        f"trainer.resume_mode={trainer.resume_mode}",
        f"trainer.device={'cuda' if workers.use_gpu else 'cpu'}",
    ]



def run_dir(name: str) -> Path:
    """A fresh absolute output folder ``$BRIDGE_RAY_HOME/outputs/<name>-<YYYYmmdd-HHMMSS>`` (not created).

    Run records live apart, in ``$BRIDGE_RAY_HOME/runs/<submission_id>``; pass a fixed
    ``sft.trainer.output_dir`` to resume a run by submitting it again.
    """
    import time

    return home_dir() / "outputs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def parse_args(argv: list[str], default_preset: str) -> tuple[str, list[str]]:
    """Split a recipe's arguments into a preset name and dotted overrides.

    Accepts ``preset=NAME``, ``--preset NAME`` or ``--preset=NAME`` anywhere; a leading ``--``
    is ignored; everything else is an override such as ``sft.optim.lr=1e-5``.

    Raises:
        ConfigError: for an unknown preset, naming the known ones.
    """
    args = [a for a in argv if a != "--"]
    preset, overrides, i = default_preset, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--preset" and i + 1 < len(args):
            preset, i = args[i + 1], i + 2
            continue
        if arg.startswith(("preset=", "--preset=")):
            preset = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
        i += 1
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose from {', '.join(sorted(PRESETS))}")
    return preset, overrides
