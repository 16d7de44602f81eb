"""``run(cfg)``: verl's PPO/GRPO (``run_ppo``) inside a Ray Job driver, on the running cluster.

The driver joins the cluster the job runs on (never starts one), runs the preflight, composes
verl's ``ppo_trainer`` config from ``to_verl_overrides(cfg)``, and calls verl's own
``run_ppo`` with its ``TaskRunnerV1``. Then it merges the final actor checkpoint into a
Hugging Face model, checks that it loads and generates, and uploads it when
``trainer.hub_repo_id`` is set. The run record, config, last step's metrics, merge and upload
go through ``bridge_ray.runs.lifecycle``, as SFT's and pretraining's do.

Environment: verl's ``run_ppo`` puts its PPO env vars (``get_ppo_ray_runtime_env``) into
``ray.init(runtime_env=...)`` only when Ray is not initialised; here it is, and a second
``ray.init`` runtime_env would conflict with the job's. So the same vars go into the
TaskRunner actor's own runtime_env instead: Ray merges an actor's env_vars over its parent's
(the job's), and every worker, vLLM server and reward worker verl starts inherits them.
verl already drops the keys this driver's environment sets (the job's ``--env`` and network
profile), so the job's values win. Added: ``VLLM_USE_FLASHINFER_SAMPLER=0`` for vLLM (vLLM's
sampler dies probing FlashInfer when it is not installed; verl's processed-logprobs sampling
never uses it), ``VERL_FILE_LOGGER_PATH`` (per-step metrics in the run folder),
``VERL_USE_EXTERNAL_MODULES`` naming bridge-ray's verl plugins on top of the job's own (the
critic loads with the configured attention: ``bridge_ray.platforms.value_model``), and the
reward's code as ``py_modules`` when it lives outside the working_dir.

Run folder (``trainer.output_dir``, absolute, shared by all nodes)::

    config.json        bridge-ray config, verl overrides, the workers' added env
    metrics.jsonl      verl's per-step metrics (``file`` logger), the steps of every attempt of the run
    checkpoints/       verl's global_step_N/{actor,critic} and latest_checkpointed_iteration.txt
    hf/                the merged final actor (Hugging Face format)
    result.json        checkpoint, merged model, sample generation
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bridge_ray.cluster.driver import DriverClock, connect
from bridge_ray.config import apply_overrides, to_dict
from bridge_ray.errors import ConfigError, PPOFailed
from bridge_ray.platforms.env import EXTERNAL_MODULES_ENV
from bridge_ray.ppo import reward as rewards
from bridge_ray.ppo.config import (
    REWARD_FAILURE_FILE,
    PPOConfig,
    checkpoint_dir,
    plugin_env,
    resolve_cpu,
    resolve_gpus,
    validate,
)
from bridge_ray.ppo.overrides import to_verl_overrides
from bridge_ray.recipe import recipe_main
from bridge_ray.runs import lifecycle
from bridge_ray.runs.curves import METRICS_FILE, read_metrics, step_rows

FLASHINFER_SAMPLER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"
METRICS_FILE_ENV = "VERL_FILE_LOGGER_PATH"


@dataclass(frozen=True)
class PPOResult:
    """What a finished PPO/GRPO run left behind."""

    output_dir: Path
    checkpoint: Path | None
    hf_model: Path | None
    sample: str


def compose(cfg: PPOConfig):
    """verl's ``ppo_trainer`` Hydra config with ``to_verl_overrides(cfg)`` applied (not validated)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=to_verl_overrides(cfg))


def validate_verl(config) -> None:
    """What verl's ``main_ppo.main`` does before ``run_ppo``: device and config checks.

    Raises:
        ConfigError: with verl's own reason (batch sizes that do not divide, ...).
    """
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    try:
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))
    except (AssertionError, ValueError, TypeError, InstantiationException) as err:
        raise ConfigError(f"verl rejects the config: {err}") from err


def metrics_file(cfg: PPOConfig) -> Path:
    """Where verl's ``file`` logger writes one JSON line per step (``{"step": N, "data": {...}}``)."""
    return Path(os.environ.get(METRICS_FILE_ENV) or Path(cfg.trainer.output_dir) / METRICS_FILE)


def record_last_step(cfg: PPOConfig) -> dict | None:
    """Put the last step's numeric metrics (rewards, critic loss and values, throughput) in the run record.

    Returns:
        ``{"step": N, ...metrics}``, or None when verl logged no step to the file logger.
    """
    rows = step_rows(metrics_file(cfg))
    return lifecycle.record_metrics(rows[-1] if rows else None)


def worker_env(cfg: PPOConfig, config) -> dict[str, str]:
    """Env vars for verl's TaskRunner and everything it starts (see the module docstring)."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    env = dict(get_ppo_ray_runtime_env(config)["env_vars"])
    if config.transfer_queue.enable:
        env["TRANSFER_QUEUE_ENABLE"] = "1"
    if cfg.rollout.engine == "vllm" and FLASHINFER_SAMPLER_ENV not in os.environ:
        env[FLASHINFER_SAMPLER_ENV] = "0"
    if METRICS_FILE_ENV not in os.environ:
        env[METRICS_FILE_ENV] = str(metrics_file(cfg))
    # The user's own settings of the CPU variables stay; the plugin list always joins theirs.
    env.update({key: value for key, value in plugin_env(cfg, os.environ).items()
                if key == EXTERNAL_MODULES_ENV or key not in os.environ})
    return env


def _write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def set_aside_metrics(output_dir: Path) -> None:
    """Move the rows of earlier attempts out of verl's way (``merge_metrics`` puts them back).

    verl's file logger opens ``metrics.jsonl`` with mode ``"wb"``, so a resumed run would
    truncate the steps logged before it. A file set aside by an attempt that never merged
    (a killed driver) is kept and extended.
    """
    path, aside = output_dir / METRICS_FILE, output_dir / (METRICS_FILE + ".earlier")
    if path.is_file():
        _write_rows(aside, read_metrics(aside) + read_metrics(path))
        path.unlink()


def merge_metrics(output_dir: Path) -> None:
    """``metrics.jsonl`` = the earlier attempts' steps before this attempt's first step, then this attempt's."""
    path, aside = output_dir / METRICS_FILE, output_dir / (METRICS_FILE + ".earlier")
    if not aside.is_file():
        return
    new = read_metrics(path)
    first = min((row["step"] for row in new), default=float("inf"))
    _write_rows(path, [row for row in read_metrics(aside) if row["step"] < first] + new)
    aside.unlink()


def _with_reward(cfg: PPOConfig, reward: Callable | str | None) -> tuple[PPOConfig, list[str]]:
    if reward is None:
        return cfg, []
    spec, ship = rewards.describe(reward)
    return dataclasses.replace(cfg, reward=dataclasses.replace(cfg.reward, function=spec)), ship


def _train(config, runtime_env: dict, output_dir: Path) -> None:
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    failure_file = output_dir / REWARD_FAILURE_FILE
    failure_file.unlink(missing_ok=True)  # an earlier attempt's
    try:
        run_ppo(config, task_runner_class=TaskRunnerV1.options(runtime_env=runtime_env))
    except Exception as err:  # noqa: BLE001 - Ray re-raises the TaskRunner's error with every nested traceback
        text = str(err)
        # verl's agent loop logs a reward's exception and fails the step with its own message.
        reward_failure = rewards.failure_in(failure_file) or rewards.failure_from(text)
        if reward_failure:
            raise rewards.RewardFailed(reward_failure) from None
        print(text, file=sys.stderr, flush=True)
        last = next((line for line in reversed(text.splitlines()) if line.strip()), type(err).__name__)
        raise PPOFailed(f"verl PPO failed: {last.strip()} (full traceback above)") from None


def announce_resume(cfg: PPOConfig) -> int:
    """Print where training starts: the step of the checkpoint verl resumes from, or step 1.

    Returns:
        The step verl resumes from (0: a fresh start).
    """
    from bridge_ray.models.checkpoints import latest_checkpoint

    step_dir = latest_checkpoint(checkpoint_dir(cfg)) if cfg.trainer.resume_mode == "auto" else None
    if step_dir is None:
        print(f"[bridge-ray] starting at step 1 (no checkpoint under {checkpoint_dir(cfg)})", flush=True)
        return 0
    step = int(step_dir.name.rsplit("_", 1)[1])
    print(f"[bridge-ray] resumed from step {step} ({step_dir})", flush=True)
    return step


def run(cfg: PPOConfig, reward: Callable | str | None = None) -> PPOResult:
    """Train with verl's PPO/GRPO on the cluster this job runs on, then merge the final actor.

    Submitting the same run again (same ``trainer.output_dir``) resumes from its last checkpoint.

    Args:
        cfg: The run; ``trainer.output_dir`` must be absolute and visible to every node.
        reward: A module-level function ``(data_source, solution_str, ground_truth, extra_info)
            -> float`` or a ``"module:function"`` / ``"file.py:function"`` spec; overrides
            ``cfg.reward.function``. None keeps it (None there: verl's rule by ``data_source``).

    Returns:
        A ``PPOResult`` with the merged model's path.

    Raises:
        ConfigError / PreflightError: before anything starts (exit code 2).
        PPOFailed / RewardFailed / CheckpointError: training, the reward or the merge failed (exit 1).

    Example:
        >>> from bridge_ray import ppo
        >>> result = ppo.run(ppo.grpo_gsm8k_llama1b(), reward="my_team.rewards:score")
        >>> result.hf_model
    """
    from bridge_ray.ppo.preflight import preflight

    clock = DriverClock()
    cfg, ship = _with_reward(validate(cfg), reward)
    connect()
    clock.lap("connect")
    # before the run record names the output dir: a refused run must not show the earlier run's metrics as its own
    lifecycle.refuse_finished(checkpoint_dir(cfg), cfg.trainer.total_steps, cfg.trainer.resume_mode,
                              "ppo.trainer.total_steps")
    output_dir = lifecycle.start(cfg.trainer.output_dir, loggers=cfg.trainer.loggers,
                                 hub_repo_id=cfg.trainer.hub_repo_id)
    cfg, finish_preflight = preflight(cfg, ships_reward_code=bool(ship))  # the node probes run meanwhile
    clock.lap("cluster")
    try:
        config = compose(cfg)
        validate_verl(config)
    except ConfigError:
        finish_preflight()  # an unreadable model path says so, not verl's reading of it
        raise
    clock.lap("verl config")
    finish_preflight()
    clock.lap("node probes")
    env = worker_env(cfg, config)
    runtime_env = {"env_vars": env, **({"py_modules": ship} if ship else {})}
    lifecycle.save_config(output_dir, {"ppo": to_dict(cfg), "verl_overrides": to_verl_overrides(cfg),
                                       "task_runner_runtime_env": runtime_env, "driver_s": clock.laps})
    print(f"[bridge-ray] driver ready {clock.summary()}", flush=True)
    announce_resume(cfg)
    if METRICS_FILE_ENV not in os.environ:
        set_aside_metrics(output_dir)
    try:
        _train(config, runtime_env, output_dir)
    finally:
        merge_metrics(output_dir)
    record_last_step(cfg)
    result = PPOResult(output_dir, None, None, "")
    if cfg.trainer.merge_hf:  # the actor of the newest global_step_N
        model = lifecycle.finish_model(checkpoint_dir(cfg), output_dir, hub_repo_id=cfg.trainer.hub_repo_id,
                                       hub_private=cfg.trainer.hub_private)
        result = PPOResult(output_dir, model.checkpoint, model.hf_model, model.sample)
    (output_dir / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    return result


def dry_run(cfg: PPOConfig, reward: Callable | str | None = None) -> dict:
    """What ``run`` would hand verl, without a cluster: config, overrides, composed against verl.

    Nodes/GPUs left to "what the cluster has" show as 1 node x TP GPUs here. verl's own
    checks (``validate_config``) run only when the model folder exists on this machine.
    """
    cfg, ship = _with_reward(validate(cfg), reward)
    notes = []
    if cfg.trainer.device == "cpu":
        cfg = resolve_cpu(cfg)
    elif cfg.trainer.nnodes is None or cfg.trainer.gpus_per_node is None:
        notes.append("trainer.nnodes / gpus_per_node follow the cluster at run time; shown as 1 node x TP GPUs")
        cfg = resolve_gpus(cfg, 1, cfg.rollout.tensor_parallel_size)
    config = compose(cfg)
    checked = (Path(cfg.model.path) / "config.json").is_file()
    if checked:
        validate_verl(config)
    else:
        notes.append(f"verl's validate_config skipped: no model at {cfg.model.path} on this machine")
    return {"ppo": to_dict(cfg), "verl_overrides": to_verl_overrides(cfg), "verl_validated": checked,
            "reward_py_modules": ship, "notes": notes}


def from_args(cfg: PPOConfig, argv: list[str]) -> PPOConfig:
    """The run a recipe's arguments ask for: ``preset=NAME`` replaces ``cfg``, then ``ppo.*`` overrides.

    Example:
        >>> def config(argv):                       # a recipe's declared config
        ...     return ppo.from_args(ppo.ppo_gsm8k_llama1b(), argv)

    Raises:
        ConfigError: an unknown preset or override.
    """
    from bridge_ray.ppo.presets import load_preset, split_preset

    preset, overrides = split_preset([a for a in argv if a != "--dry-run"])
    return apply_overrides(load_preset(preset) if preset else cfg, overrides, prefix="ppo")


def main(cfg: PPOConfig | Callable[[list[str]], PPOConfig], argv: list[str] | None = None,
         reward: Callable | str | None = None) -> PPOResult | None:
    """A recipe's body: the config for ``argv``, then ``run`` (or ``--dry-run``).

    Args:
        cfg: a config to apply ``preset=`` / ``ppo.*`` arguments from ``argv`` to (``from_args``), or the recipe's own
            ``config(argv)`` function, called with ``argv`` as it is.
        argv: the recipe's arguments (default ``sys.argv[1:]``).
        reward: as in ``run``.

    Errors print as one ``error: ...`` line and exit with their code (2: config/preflight, 1: run).
    """
    return recipe_main(argv, lambda args: cfg(args) if callable(cfg) else from_args(cfg, args),
                       lambda c: dry_run(c, reward), lambda c: run(c, reward))
