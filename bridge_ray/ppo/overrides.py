"""verl's Hydra overrides for a ``PPOConfig``: the only place that knows verl's ``ppo_trainer`` key names.

A unit test composes ``to_verl_overrides``' output against verl's own ``ppo_trainer`` config, so a
verl upgrade that renames a key breaks that test, not every recipe.

Example:
    >>> to_verl_overrides(resolve_gpus(validate(cfg), nnodes=2, gpus_per_node=8))[:2]
"""
from __future__ import annotations

from pathlib import Path

from bridge_ray.config import hydra_list, hydra_value
from bridge_ray.errors import ConfigError
from bridge_ray.platforms.env import ATTENTION_PLUGIN
from bridge_ray.ppo.config import (REWARD_FAILURE_FILE, DataConfig, ModelConfig, PPOConfig, RolloutConfig,
                                   checkpoint_dir, token_budgets)

REWARD_HOOK_PATH = "pkg://bridge_ray.ppo.reward"
REWARD_HOOK_NAME = "compute_score"
REWARD_SPEC_KWARG = "bridge_ray_reward"
REWARD_FAILURE_KWARG = "bridge_ray_failure_file"
# verl's v1 trainer saves only when save_freq > 0; "final step only" is a save_freq no run reaches.
FINAL_ONLY_SAVE_FREQ = 1_000_000_000
CPU_WORKER_EXTENSION = "bridge_ray.platforms.vllm_cpu_worker.CPUWorkerExtension"



def _null(value) -> str:
    return "null" if value is None else str(value)


def _model_keys(prefix: str, path: str, model: ModelConfig) -> list[str]:
    return [
        f"{prefix}.path={hydra_value(path)}",
        f"{prefix}.tokenizer_path={hydra_value(model.tokenizer_path)}",
        f"{prefix}.use_remove_padding={model.use_remove_padding}",
        f"{prefix}.enable_gradient_checkpointing={model.gradient_checkpointing}",
        f"+{prefix}.override_config.attn_implementation={model.attn_implementation}",
        # verl imports model.external_lib where it builds the actor's/ref's HF config, but not before the
        # critic's load (H100, 2026-12-06): verl_plugins() names the plugin in VERL_USE_EXTERNAL_MODULES too.
        f"{prefix}.external_lib={ATTENTION_PLUGIN if model.attn_implementation == 'torch_varlen' else 'null'}",
    ]


def _algorithm_keys(cfg: PPOConfig) -> list[str]:
    algo = cfg.algorithm
    return [
        f"algorithm.adv_estimator={'gae' if algo.name == 'ppo' else 'grpo'}",
        f"algorithm.gamma={algo.gamma}",
        f"algorithm.lam={algo.lam}",
        f"algorithm.norm_adv_by_std_in_grpo={algo.norm_adv_by_std_in_grpo}",
        f"algorithm.use_kl_in_reward={algo.kl == 'reward'}",
        f"algorithm.kl_ctrl.kl_coef={algo.kl_coef}",
        f"actor_rollout_ref.actor.use_kl_loss={algo.kl == 'loss'}",
        f"actor_rollout_ref.actor.kl_loss_coef={algo.kl_coef}",
        f"actor_rollout_ref.actor.kl_loss_type={algo.kl_loss_type}",
    ]


def _data_keys(data: DataConfig) -> list[str]:
    return [
        f"data.train_files={hydra_list(data.train_files)}",
        f"data.val_files={hydra_list(data.val_files or data.train_files)}",
        f"data.train_batch_size={data.train_batch_size}",
        f"data.max_prompt_length={data.max_prompt_length}",
        f"data.max_response_length={data.max_response_length}",
        f"data.filter_overlong_prompts={data.filter_overlong_prompts}",
        f"data.truncation={data.truncation}",
        f"data.dataloader_num_workers={data.num_loader_workers}",
    ]


def _actor_keys(cfg: PPOConfig) -> list[str]:
    actor, ref, prefix = cfg.actor, cfg.ref, "actor_rollout_ref.actor"
    contents = ["model", "optimizer", "extra"] if actor.save_optimizer else ["model", "extra"]
    return _model_keys("actor_rollout_ref.model", cfg.model.path, cfg.model) + [
        f"actor_rollout_ref.model.use_fused_kernels={cfg.model.fused_kernels}",
        "actor_rollout_ref.model.fused_kernel_options.impl_backend=torch",
        f"{prefix}.strategy={actor.strategy}",
        f"{prefix}.optim.lr={actor.lr}",
        f"{prefix}.ppo_mini_batch_size={actor.mini_batch_size}",
        f"{prefix}.ppo_micro_batch_size_per_gpu={actor.micro_batch_size_per_gpu}",
        f"{prefix}.ppo_epochs={actor.ppo_epochs}",
        f"{prefix}.clip_ratio={actor.clip_ratio}",
        f"{prefix}.entropy_coeff={actor.entropy_coeff}",
        f"{prefix}.use_torch_compile={actor.use_torch_compile}",
        f"{prefix}.fsdp_config.param_offload={actor.param_offload}",
        f"{prefix}.fsdp_config.optimizer_offload={actor.optimizer_offload}",
        f"{prefix}.checkpoint.save_contents={hydra_list(contents)}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={ref.log_prob_micro_batch_size_per_gpu}",
        f"actor_rollout_ref.ref.fsdp_config.param_offload={ref.param_offload}",
    ] + _token_budget_keys(cfg)


def _token_budget_keys(cfg: PPOConfig) -> list[str]:
    """verl's dynamic batch keys for the actor, reference and rollout log-probs (the critic's: ``_critic_keys``)."""
    budgets = token_budgets(cfg)
    if budgets is None:
        return []
    return [
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={budgets['actor']}",
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
        f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={budgets['ref']}",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
        f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={budgets['rollout']}",
    ]


def _rollout_keys(rollout: RolloutConfig) -> list[str]:
    prefix = "actor_rollout_ref.rollout"
    return [
        f"{prefix}.name={rollout.engine}",
        f"{prefix}.tensor_model_parallel_size={rollout.tensor_parallel_size}",
        f"{prefix}.gpu_memory_utilization={rollout.gpu_memory_utilization}",
        f"{prefix}.n={rollout.n}",
        f"{prefix}.temperature={rollout.temperature}",
        f"{prefix}.log_prob_micro_batch_size_per_gpu={rollout.log_prob_micro_batch_size_per_gpu}",
        f"{prefix}.enforce_eager={rollout.enforce_eager}",
        f"{prefix}.max_num_batched_tokens={rollout.max_num_batched_tokens}",
        f"{prefix}.agent.num_workers={rollout.num_agent_workers}",
    ]


def _critic_keys(cfg: PPOConfig) -> list[str]:
    critic = cfg.critic
    keys = [f"critic.enable={cfg.uses_critic}"]
    if not cfg.uses_critic:
        return keys
    contents = ["model", "optimizer", "extra"] if cfg.actor.save_optimizer else ["model", "extra"]
    return keys + _model_keys("critic.model", critic.model_path or cfg.model.path, cfg.model) + [
        f"critic.strategy={cfg.actor.strategy}",
        f"critic.optim.lr={critic.lr}",
        f"critic.ppo_micro_batch_size_per_gpu={critic.micro_batch_size_per_gpu}",
        f"critic.fsdp.param_offload={critic.param_offload}",
        f"critic.fsdp.optimizer_offload={critic.optimizer_offload}",
        f"critic.checkpoint.save_contents={hydra_list(contents)}",
        f"trainer.critic_warmup={critic.warmup_steps}",
    ] + _critic_budget_keys(cfg)


def _critic_budget_keys(cfg: PPOConfig) -> list[str]:
    budgets = token_budgets(cfg)
    if budgets is None:
        return []
    return ["critic.use_dynamic_bsz=True", f"critic.ppo_max_token_len_per_gpu={budgets['critic']}",
            f"critic.forward_max_token_len_per_gpu={budgets['critic']}"]


def _cpu_keys(cfg: PPOConfig) -> list[str]:
    """What verl 0.9.1 needs to run on CPU with vLLM's CPU build (the patches: ``bridge_ray.platforms``)."""
    if cfg.trainer.device != "cpu":
        return []
    prefix = "actor_rollout_ref.rollout"
    return [
        # vLLM's CPU build has no sleep mode, which verl uses to hand GPU memory between phases.
        f"+{prefix}.enable_sleep_mode=False",
        f"{prefix}.free_cache_engine=False",
        # vLLM CPU drops each linear layer's weight after packing it; verl's weight sync loads into it.
        f"+{prefix}.engine_kwargs.vllm.worker_extension_cls={CPU_WORKER_EXTENSION}",
        # TransferQueue starts this many storage actors of 1 CPU each (8 by default); one is plenty here.
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]


def _reward_keys(cfg: PPOConfig) -> list[str]:
    reward = cfg.reward
    keys = [f"reward.num_workers={reward.num_workers}"]
    if reward.function is None:
        return keys
    failures = Path(cfg.trainer.output_dir) / REWARD_FAILURE_FILE
    return keys + [
        f"reward.custom_reward_function.path={REWARD_HOOK_PATH}",
        f"reward.custom_reward_function.name={REWARD_HOOK_NAME}",
        f"+reward.custom_reward_function.reward_kwargs.{REWARD_SPEC_KWARG}='{reward.function}'",
        f"+reward.custom_reward_function.reward_kwargs.{REWARD_FAILURE_KWARG}='{failures}'",
    ]


def _trainer_keys(cfg: PPOConfig) -> list[str]:
    trainer = cfg.trainer
    if trainer.nnodes is None or trainer.gpus_per_node is None:
        raise ConfigError("trainer.nnodes / trainer.gpus_per_node are still 'what the cluster has': the preflight "
                          "resolves them (bridge_ray.ppo.run), or set ppo.trainer.nnodes=N ppo.trainer.gpus_per_node=M")
    save_freq = FINAL_ONLY_SAVE_FREQ if trainer.save_freq == -1 else trainer.save_freq
    return [
        f"trainer.nnodes={trainer.nnodes}",
        f"trainer.n_gpus_per_node={trainer.gpus_per_node}",
        # Each epoch takes at least one step, so total_steps epochs always reach total_steps (verl stops there;
        # its RL dataset drops overlong prompts, so the steps an epoch are not known before verl loads it).
        f"trainer.total_epochs={trainer.total_epochs if trainer.total_steps is None else trainer.total_steps}",
        f"trainer.total_training_steps={_null(trainer.total_steps)}",
        f"trainer.save_freq={save_freq}",
        f"trainer.test_freq={trainer.test_freq}",
        f"trainer.val_before_train={trainer.val_before_train}",
        f"trainer.resume_mode={trainer.resume_mode}",
        f"trainer.logger=[{','.join(trainer.loggers)}]",
        f"trainer.project_name={hydra_value(trainer.project_name)}",
        f"trainer.experiment_name={hydra_value(trainer.experiment_name)}",
        f"trainer.default_local_dir={hydra_value(checkpoint_dir(cfg))}",
        "trainer.device=cuda",
    ]


def to_verl_overrides(cfg: PPOConfig) -> list[str]:
    """verl Hydra overrides for ``ppo_trainer`` (verl 0.9.1). The only place with verl key names.

    Args:
        cfg: A validated config whose ``trainer.nnodes``/``gpus_per_node`` are set (``resolve_gpus``).

    Returns:
        ``key=value`` strings for ``hydra.compose(config_name="ppo_trainer", overrides=...)``
        or ``python -m verl.trainer.main_ppo``.

    Raises:
        ConfigError: nodes or GPUs per node are still unresolved.
    """
    return (_algorithm_keys(cfg) + _data_keys(cfg.data) + _actor_keys(cfg) + _rollout_keys(cfg.rollout)
            + _critic_keys(cfg) + _cpu_keys(cfg) + _reward_keys(cfg) + _trainer_keys(cfg))
