"""``fit(cfg)``: run verl SFT on Ray Train workers from a Ray Job driver.

The driver connects to the running cluster, runs the preflight checks, writes
``config.json``, starts a ``TorchTrainer`` whose workers each run verl's
``SFTTrainer`` (see ``bridge_ray.sft.worker``), then merges the last checkpoint
into a Hugging Face model and checks that it loads and generates. The run record,
config, metrics, merge and upload go through ``bridge_ray.runs.lifecycle``.

Run folder (``trainer.output_dir``, absolute, shared by all nodes)::

    config.json          bridge-ray config + the verl overrides it became
    verl_config.json     verl's resolved Hydra config (written by rank 0)
    steps.jsonl          one row per step (rank 0, appended across restarts)
    metrics.json         final metrics and the per-step history
    checkpoints/         verl's global_step_N folders
    hf/                  the merged Hugging Face model
    ray_train/           Ray Train's run storage
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bridge_ray.cluster import driver, walltime
from bridge_ray.config import apply_overrides, epochs_needed, to_dict
from bridge_ray.errors import TrainingFailed
from bridge_ray.jobs import tracking
from bridge_ray.platforms import cpu_env
from bridge_ray.platforms.hardware import start_probe_workers
from bridge_ray.recipe import recipe_main
from bridge_ray.runs import lifecycle
from bridge_ray.sft import hardware
from bridge_ray.sft.config import (PRESETS, SFTConfig, checkpoint_dir, parse_args, resolve_workers, to_verl_overrides,
                                   validate)
from bridge_ray.sft.hardware import resolve
from bridge_ray.sft.profiling import PROFILE_STEPS_ENV, parse_steps
from bridge_ray.sft.worker import KILL_AT_STEP_ENV, STEPS_FILE


@dataclass(frozen=True)
class SFTResult:
    """What a finished SFT run left behind."""

    output_dir: Path
    checkpoint: Path | None
    hf_model: Path | None
    metrics: dict
    sample: str


def connect() -> None:
    """Attach to the running cluster (Ray Train keeps its own 2 s health-check interval: workers
    report once, at the end, so nothing waits on the controller's poll)."""
    driver.connect()


def check_env() -> None:
    """Raise ConfigError for a malformed ``BRIDGE_RAY_PROFILE_STEPS`` in the job's env, before anything starts."""
    if os.environ.get(PROFILE_STEPS_ENV):
        parse_steps(os.environ[PROFILE_STEPS_ENV])


def worker_env(cfg: SFTConfig) -> dict[str, str]:
    """Env vars set in each Train worker before verl is imported there."""
    env = {} if cfg.workers.use_gpu else cpu_env()
    for key in (KILL_AT_STEP_ENV, walltime.DEADLINE_ENV, PROFILE_STEPS_ENV):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _converted(files: tuple[str, ...], out: Path, kind: str, data) -> tuple[str, ...]:
    from bridge_ray.data import convert_to_messages

    return tuple(str(convert_to_messages(path, out / f"{kind}_{i}.parquet", data.prompt_key, data.response_key))
                 for i, path in enumerate(files))


def prepare_data(cfg: SFTConfig) -> SFTConfig:
    """Convert prompt/response files to ``messages`` parquets under ``output_dir/data``; else ``cfg``."""
    data = cfg.data
    if data.prompt_key is None:
        return cfg
    out = Path(cfg.trainer.output_dir) / "data"
    data = dataclasses.replace(
        data, train_files=_converted(data.train_files, out, "train", data),
        val_files=_converted(data.val_files, out, "val", data), prompt_key=None, response_key=None,
        messages_key="messages")
    return dataclasses.replace(cfg, data=data)


def build_trainer(cfg: SFTConfig):
    """The ``TorchTrainer`` for ``cfg`` (not started)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bridge_ray.sft.worker import train_loop_per_worker

    workers = cfg.workers
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": workers.gpus_per_worker} if workers.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"started_at": time.time(), "env": worker_env(cfg), "overrides": to_verl_overrides(cfg),
                           "output_dir": cfg.trainer.output_dir, "compile_layers": cfg.model.compile_layers},
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(Path(cfg.trainer.output_dir) / "ray_train"),
                             name=cfg.trainer.experiment_name,
                             failure_config=FailureConfig(max_failures=cfg.trainer.max_failures)),
    )


def epochs_for_steps(cfg: SFTConfig, train_rows: int) -> SFTConfig:
    """``cfg`` with as many epochs as ``trainer.total_steps`` needs; unchanged when it is not set.

    verl ends training after ``total_epochs`` even when ``total_training_steps`` is not reached, and
    then saves no final checkpoint (there is nothing to merge); it stops at ``total_steps`` within the
    last epoch.
    """
    steps = cfg.trainer.total_steps
    if steps is None:
        return cfg
    per_epoch, epochs = epochs_needed(steps, train_rows, cfg.data.global_batch_size)
    print(f"[bridge-ray] sft data: {train_rows:,} rows, {per_epoch} step(s) an epoch; {epochs} epoch(s) for "
          f"{steps} steps", flush=True)
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, total_epochs=epochs))


def write_metrics(output_dir: Path, final: dict) -> dict:
    """``metrics.json``: the last reported metrics and one row per step (latest attempt wins).

    ``attempts_steps`` lists every step as rank 0 reported it, across restarts: a resumed run
    shows the steps after its checkpoint twice.
    """
    steps_file = output_dir / STEPS_FILE
    rows = [json.loads(line) for line in steps_file.read_text().splitlines()] if steps_file.exists() else []
    history = sorted({row["step"]: row for row in rows}.values(), key=lambda row: row["step"])
    metrics = {"final": final or (history[-1] if history else {}), "history": history, "attempts_steps": [row["step"] for row in rows]}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def fit(cfg: SFTConfig) -> SFTResult:
    """Train, merge the last checkpoint to Hugging Face format, and check it generates.

    Args:
        cfg: The run; ``trainer.output_dir`` must be absolute and visible to every node.

    Returns:
        An ``SFTResult`` with the merged model's path and the final metrics.

    Raises:
        ConfigError / PreflightError: before anything starts.
        TrainingFailed: when Ray Train gives up.
        CheckpointError: when no checkpoint exists or the merge/load fails.

    Example:
        >>> from bridge_ray import sft
        >>> result = sft.fit(sft.sft_tiny_cpu(model, train, val, "/abs/run"))
        >>> result.hf_model
    """
    import ray

    from bridge_ray.sft.preflight import preflight

    clock = driver.DriverClock()
    validate(cfg)
    check_env()
    project, experiment = tracking.resolve_names(cfg.trainer.project_name, cfg.trainer.experiment_name)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, project_name=project,
                                                               experiment_name=experiment))
    connect()
    clock.lap("connect")
    # before the run record names the output dir: a refused run must not show the earlier run's metrics as its own
    lifecycle.refuse_finished(checkpoint_dir(cfg), cfg.trainer.total_steps, cfg.trainer.resume_mode,
                              "sft.trainer.total_steps")
    output_dir = lifecycle.start(cfg.trainer.output_dir, loggers=cfg.trainer.loggers,
                                 hub_repo_id=cfg.trainer.hub_repo_id)
    cfg = dataclasses.replace(cfg, workers=resolve_workers(cfg.workers, driver.alive_nodes(), "sft"))
    # The probe (15-19 s on a cluster's first run: CUDA, torch, liger, Triton imports) runs beside the preflight.
    probing = start_probe_workers() if hardware.needs_probe(cfg) else None
    cfg = prepare_data(cfg)
    cfg = epochs_for_steps(cfg, preflight(cfg))
    clock.lap("preflight")
    hw = ray.get(probing) if probing is not None else None
    cfg = validate(resolve(cfg, hw))
    hardware.check(cfg, hw)
    clock.lap("hardware probe")
    print(f"[bridge-ray] {hardware.describe(cfg, hw)}", flush=True)
    lifecycle.save_config(output_dir, {"sft": to_dict(cfg), "verl_overrides": to_verl_overrides(cfg),
                                       "worker_env": worker_env(cfg), "hardware": to_dict(hw) if hw else None,
                                       "driver_s": clock.laps})
    print(f"[bridge-ray] driver ready {clock.summary()}", flush=True)
    try:
        result = build_trainer(cfg).fit()
    except Exception as err:  # Ray Train raises ControllerError / WorkerGroupError with the worker traceback
        raise TrainingFailed(f"SFT training failed: {failure_summary(err)}") from err
    metrics = write_metrics(output_dir, dict(result.metrics or {}))
    lifecycle.record_metrics(metrics["final"])
    if not cfg.trainer.save_checkpoint:
        print("[bridge-ray] no checkpoint merged (sft.trainer.save_checkpoint=false)", flush=True)
        return SFTResult(output_dir, None, None, metrics, "")
    model = lifecycle.finish_model(checkpoint_dir(cfg), output_dir, env=worker_env(cfg),
                                   hub_repo_id=cfg.trainer.hub_repo_id, hub_private=cfg.trainer.hub_private)
    return SFTResult(output_dir, model.checkpoint, model.hf_model, metrics, model.sample)


def failure_summary(err: Exception, limit: int = 600) -> str:
    """One line for a failed ``TrainerFit``: each failed rank's last exception line (Ray Train's own message puts
    the workers' tracebacks after a line break, which left "worker errors:" and nothing else on the error line)."""
    failures = getattr(err, "worker_failures", None) or {}
    by_cause: dict[str, list[int]] = {}
    for rank, exc in sorted(failures.items()):
        by_cause.setdefault(_last_line(exc), []).append(rank)
    if by_cause:
        text = "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {cause}"
                         for cause, ranks in by_cause.items())
    else:
        text = _last_line(getattr(err, "controller_failure", None) or err)
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{text} (the whole traceback is in the job's log)"


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def dry_run(cfg: SFTConfig) -> dict:
    """What ``fit(cfg)`` would hand verl, composed against verl's own config; nothing starts.

    ``auto`` settings resolve as for ``UNPROBED_GPU`` workers; a real run probes its workers.
    """
    from bridge_ray.sft.worker import compose_verl_config

    validate(cfg)
    resolved = validate(resolve(cfg))
    overrides = to_verl_overrides(resolved)
    compose_verl_config(overrides)
    return {"sft": to_dict(resolved), "verl_overrides": overrides, "speed": hardware.describe(resolved, None),
            "probed_at_run_time": hardware.needs_probe(cfg)}


def from_args(argv: list[str], configs: dict[str, Callable[[], SFTConfig]] | None = None,
              default_preset: str = "sft_tiny_cpu") -> SFTConfig:
    """The config a recipe's arguments ask for: ``preset=NAME`` (see ``main``) and ``sft.*`` overrides.

    ``--dry-run`` is ignored here (``main`` acts on it). A recipe's ``config(argv)`` returns this so
    ``bridge-ray submit`` checks the arguments before submitting.

    Raises:
        ConfigError: an unknown preset or key, or a bad value.
    """
    preset, overrides = parse_args([a for a in argv if a != "--dry-run"], default_preset)
    return apply_overrides({**PRESETS, **(configs or {})}[preset](), overrides, prefix="sft")


def main(argv: list[str] | None = None, configs: dict[str, Callable[[], SFTConfig]] | None = None,
         default_preset: str = "sft_tiny_cpu") -> SFTResult | None:
    """A recipe's body: ``preset=NAME`` and ``sft.*`` overrides from ``argv``, then ``fit`` (or ``--dry-run``).

    Errors print as one ``error: ...`` line and exit with their code (2: config/preflight, 1: run).

    Args:
        argv: the recipe's arguments (default ``sys.argv[1:]``).
        configs: preset name -> a function building it, for presets the recipe builds itself
            (e.g. on demo assets); the others come from ``PRESETS``.
        default_preset: the preset without ``preset=``.
    """
    return recipe_main(argv, lambda args: from_args(args, configs, default_preset), dry_run, fit,
                       report=lifecycle.where_report)
