"""``fit(cfg)``: tokenize the text, build the init model, pretrain on Ray Train, merge, test, upload.

Run folder (``trainer.output_dir``, absolute, shared by every node)::

    tokens/        token shards of the text files (reused when the files and tokenizer are unchanged)
    init/          the random-init model verl starts from, with the tokenizer
    checkpoints/   verl's ``global_step_N`` folders (FSDP shards): what a resubmitted run resumes from
    hf/            the last checkpoint merged to Hugging Face format, tokenizer included
    config.json, verl_config.json, steps.jsonl, metrics.json, device.json

The run record, config, metrics, merge and upload go through ``bridge_ray.runs.lifecycle``, as SFT's
and PPO's do.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from bridge_ray.cluster.driver import DriverClock, alive_nodes
from bridge_ray.config import output_dir_problem, to_dict
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.jobs import tracking
from bridge_ray.pretrain.config import (PretrainConfig, checkpoint_dir, epochs_for, init_dir, to_verl_overrides,
                                        tokens_dir, validate)
from bridge_ray.recipe import recipe_main
from bridge_ray.runs import lifecycle
from bridge_ray.sft.config import resolve_workers
from bridge_ray.sft.preflight import workers_problem
from bridge_ray.sft.trainer import TrainingFailed, check_env, connect, failure_summary, worker_env, write_metrics


@dataclass(frozen=True)
class PretrainResult:
    """What a finished pretraining run left behind."""

    output_dir: Path
    checkpoint: Path | None
    hf_model: Path | None
    metrics: dict
    sample: str


def preflight(cfg: PretrainConfig) -> None:
    """Files, tokenizer, output dir and resources, checked before anything starts (one line each)."""
    from bridge_ray.data.text import check_text_files

    tokenizer = Path(cfg.model.tokenizer_path)
    if not (tokenizer / "tokenizer.json").is_file():
        raise PreflightError(f"pretrain.model.tokenizer_path {tokenizer} has no tokenizer.json: train one with "
                             "recipes/train_tokenizer.py or pass a Hugging Face tokenizer folder")
    check_text_files(cfg.data.train_files, cfg.data.text_key, "pretrain.data.train_files")
    if cfg.data.val_files:
        check_text_files(cfg.data.val_files, cfg.data.text_key, "pretrain.data.val_files")
    if problem := output_dir_problem(cfg.trainer.output_dir):
        raise PreflightError(problem.replace("trainer.output_dir", "pretrain.trainer.output_dir"))
    if problem := workers_problem(cfg.workers, alive_nodes(), "pretrain.workers"):
        raise PreflightError(problem)
    if cfg.model.liger:
        from bridge_ray.platforms.hardware import liger_missing, probe_workers

        if problem := liger_missing("pretrain.model.liger=true", "pretrain.model.liger=false", probe_workers()):
            raise PreflightError(problem)


def refuse_other_init(cfg: PretrainConfig) -> None:
    """Refuse to resume checkpoints made from another init model (shape, tokenizer, sequence length or seed): the
    new init model replaced the run's, and verl failed on the checkpoint's sizes with a traceback."""
    from bridge_ray.models.checkpoints import latest_checkpoint
    from bridge_ray.pretrain.model import init_differences, init_stamp

    if cfg.trainer.resume_mode != "auto" or latest_checkpoint(checkpoint_dir(cfg)) is None:
        return
    stamp = init_stamp(cfg.model.shape, cfg.model.tokenizer_path, cfg.data.seq_len, cfg.model.init_seed)
    if changed := init_differences(init_dir(cfg), stamp):
        names = {"tokenizer_sha256": "the tokenizer's vocabulary", "tokenizer": "model.tokenizer_path",
                 "shape": "model.shape", "seq_len": "data.seq_len", "seed": "model.init_seed"}
        raise ConfigError(f"{cfg.trainer.output_dir} holds checkpoints of a model built otherwise "
                          f"({', '.join(names.get(k, k) for k in changed)} changed): resuming needs the same; give a "
                          "new pretrain.trainer.output_dir to start over, or set the run's settings back")


def _num_sequences(shards, seq_len: int) -> int:
    tokens = sum(s.num_tokens for s in shards)
    return max(0, (tokens - 1) // (seq_len - 1))


def prepare(cfg: PretrainConfig):
    """Token shards (train, val) and the init model; returns (train paths, val paths, epochs)."""
    from bridge_ray.pretrain.model import build_init_model
    from bridge_ray.pretrain.tokens import tokenize_files

    data = cfg.data
    tokenize = lambda files: tokenize_files(files, cfg.model.tokenizer_path, tokens_dir(cfg),  # noqa: E731
                                            data.text_key, data.tokenize_cpus)
    train, val = tokenize(data.train_files), tokenize(data.val_files)
    sequences = _num_sequences(train, data.seq_len)
    if sequences < data.global_batch_size:
        raise ConfigError(f"pretrain.data.train_files hold {sum(s.num_tokens for s in train)} tokens, {sequences} "
                          f"sequences of {data.seq_len}: fewer than one batch (data.global_batch_size="
                          f"{data.global_batch_size}); add text or lower the batch or data.seq_len")
    if val and _num_sequences(val, data.seq_len) < data.global_batch_size:
        raise ConfigError(f"pretrain.data.val_files hold fewer than data.global_batch_size={data.global_batch_size} "
                          f"sequences of {data.seq_len} tokens: add validation text or drop data.val_files")
    build_init_model(init_dir(cfg), cfg.model.shape, cfg.model.tokenizer_path, data.seq_len, cfg.model.init_seed)
    print(f"[bridge-ray] pretrain data: {sum(s.num_tokens for s in train):,} tokens, {sequences:,} sequences of "
          f"{data.seq_len} in {len(train)} shard(s); {epochs_for(cfg, sequences)} epoch(s) for "
          f"{cfg.trainer.total_steps} steps", flush=True)
    return [str(s.path) for s in train], [str(s.path) for s in val], epochs_for(cfg, sequences)


def build_trainer(cfg: PretrainConfig, overrides: list[str]):
    """The ``TorchTrainer`` for ``cfg`` (not started): SFT's worker loop with pretraining overrides."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from bridge_ray.pretrain.worker import train_loop_per_worker

    workers = cfg.workers
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": workers.gpus_per_worker} if workers.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"started_at": time.time(), "env": worker_env(cfg), "overrides": overrides,
                           "output_dir": cfg.trainer.output_dir},
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(storage_path=str(Path(cfg.trainer.output_dir) / "ray_train"),
                             name=cfg.trainer.experiment_name,
                             failure_config=FailureConfig(max_failures=cfg.trainer.max_failures)),
    )


def add_model_mfu(output_dir: Path, metrics: dict) -> dict:
    """Add ``model_mfu`` (6·N + 12·L·H·Q·T over the device's bf16 peak) to each step; None on CPU."""
    from bridge_ray.pretrain.model import flops_per_token, peak_flops
    from bridge_ray.pretrain.worker import DEVICE_FILE

    device_file = output_dir / DEVICE_FILE
    device = json.loads(device_file.read_text())["device"] if device_file.is_file() else None
    seq_len = json.loads((output_dir / "config.json").read_text())["pretrain"]["data"]["seq_len"]
    per_token = flops_per_token(json.loads((output_dir / "init" / "config.json").read_text()), seq_len)
    peak = peak_flops(device)
    for row in metrics["history"] + ([metrics["final"]] if metrics.get("final") else []):
        row["model_mfu"] = row["tokens_per_s_per_worker"] * per_token / peak if peak else None
    metrics.update(device=device, flops_per_token=per_token, peak_flops=peak)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _summary(metrics: dict) -> str:
    rows = metrics["history"][1:] or metrics["history"]
    if not rows:
        return "[bridge-ray] pretrain: no steps recorded"
    tps = sum(r["tokens_per_s_per_worker"] for r in rows) / len(rows)
    mfu = [r["model_mfu"] for r in rows if r.get("model_mfu") is not None]
    return (f"[bridge-ray] pretrain: loss {metrics['history'][0]['loss']:.4f} -> {metrics['history'][-1]['loss']:.4f} "
            f"in {metrics['history'][-1]['step']} steps; {tps:,.0f} tokens/s/worker after step 1"
            + (f", model MFU {100 * sum(mfu) / len(mfu):.1f}% on {metrics['device']}" if mfu else ""))


def fit(cfg: PretrainConfig) -> PretrainResult:
    """Pretrain from scratch: tokens, init model, Ray Train workers running verl's engine, merge, test prompt.

    Args:
        cfg: The run; ``trainer.output_dir`` must be absolute and visible to every node. Submitting the
            same run again resumes from its last checkpoint (``trainer.resume_mode=auto``).

    Returns:
        A ``PretrainResult`` with the merged model (tokenizer included) and its answer to the test prompt.

    Raises:
        ConfigError / PreflightError: before any worker starts (one line each).
        TrainingFailed: Ray Train gave up.
        CheckpointError: no checkpoint, or the merge or the test generation failed.

    Example:
        >>> from bridge_ray import pretrain
        >>> result = pretrain.fit(pretrain.pretrain_tiny_cpu(tokenizer, files, [], "/abs/run"))
        >>> result.sample
    """
    clock = DriverClock()
    validate(cfg)
    check_env()
    project, experiment = tracking.resolve_names(cfg.trainer.project_name, cfg.trainer.experiment_name)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, project_name=project,
                                                               experiment_name=experiment))
    connect()
    clock.lap("connect")
    # before the run record names the output dir: a refused run must not show the earlier run's metrics as its own
    lifecycle.refuse_finished(checkpoint_dir(cfg), cfg.trainer.total_steps, cfg.trainer.resume_mode,
                              "pretrain.trainer.total_steps")
    refuse_other_init(cfg)
    output_dir = lifecycle.start(cfg.trainer.output_dir, loggers=cfg.trainer.loggers,
                                 hub_repo_id=cfg.trainer.hub_repo_id)
    cfg = dataclasses.replace(cfg, workers=resolve_workers(cfg.workers, alive_nodes(), "pretrain"))
    preflight(cfg)
    clock.lap("preflight")
    train, val, epochs = prepare(cfg)
    clock.lap("tokens + init model")
    overrides = to_verl_overrides(cfg, train, val, epochs)
    lifecycle.save_config(output_dir, {"pretrain": to_dict(cfg), "verl_overrides": overrides,
                                       "worker_env": worker_env(cfg), "driver_s": clock.laps})
    print(f"[bridge-ray] driver ready {clock.summary()}", flush=True)
    try:
        result = build_trainer(cfg, overrides).fit()
    except Exception as err:  # Ray Train raises ControllerError / WorkerGroupError with the worker traceback
        raise TrainingFailed(f"pretraining failed: {failure_summary(err)}") from err
    metrics = add_model_mfu(output_dir, write_metrics(output_dir, dict(result.metrics or {})))
    print(_summary(metrics), flush=True)
    lifecycle.record_metrics(metrics["final"])
    if not cfg.trainer.save_checkpoint:
        return PretrainResult(output_dir, None, None, metrics, "")
    model = lifecycle.finish_model(checkpoint_dir(cfg), output_dir, env=worker_env(cfg),
                                   prompt=cfg.trainer.test_prompt, max_new_tokens=24,
                                   hub_repo_id=cfg.trainer.hub_repo_id, hub_private=cfg.trainer.hub_private)
    return PretrainResult(output_dir, model.checkpoint, model.hf_model, metrics, model.sample)


def dry_run(cfg: PretrainConfig) -> dict:
    """The config and the verl overrides ``fit`` would use (shard paths as they would be), composed against verl."""
    from bridge_ray.pretrain.tokens import shard_path
    from bridge_ray.sft.worker import compose_verl_config

    validate(cfg)
    train = [str(shard_path(f, tokens_dir(cfg))) for f in cfg.data.train_files]
    val = [str(shard_path(f, tokens_dir(cfg))) for f in cfg.data.val_files]
    overrides = to_verl_overrides(cfg, train, val)
    compose_verl_config(overrides)
    return {"pretrain": to_dict(cfg), "verl_overrides": overrides}


def main(config, argv: list[str] | None = None, before=None) -> PretrainResult | None:
    """A recipe's body: ``config(argv)`` then ``fit`` (or ``--dry-run``).

    ``before(cfg)``, when given, runs first on the cluster (e.g. to write demo text and tokenizer).
    Errors print as one ``error: ...`` line and exit with their code (2: config/preflight, 1: run).
    """
    return recipe_main(argv, lambda args: validate(config(args)), dry_run, fit, report=lifecycle.where_report,
                       before=before)
