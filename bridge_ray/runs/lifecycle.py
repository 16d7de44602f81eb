"""The job side of a run, the same for every workload: start -> metrics -> checkpoint -> merged model -> upload.

A workload's driver (inside the Ray job) calls these instead of writing its run record by hand, so
every run is recorded the same way and ``bridge-ray export`` / ``upload`` work on any run that left
a checkpoint::

    output_dir = lifecycle.start(cfg.trainer.output_dir, cfg.trainer.loggers)  # host, packages, output dir
    preflight(cfg)                                                 # creates and checks the output dir
    lifecycle.save_config(output_dir, {"sft": to_dict(cfg), ...})  # config.json: config, verl overrides, env
    ...                                                            # train: verl writes global_step_N/
    lifecycle.record_metrics(last_row)                             # last_step and metrics in the record
    model = lifecycle.finish_model(checkpoint_dir(cfg), output_dir, env=..., hub_repo_id=...)
    # merge the newest step, check it generates, hf_model in the record, upload when a repo is set

Used by ``sft.fit`` (and ``instruct``, which is SFT), ``pretrain.fit``, ``ppo.run`` (its step's model is
``global_step_N/actor``), ``tokenizer.train`` (``start`` only: it leaves no checkpoint) and the pipelines
(``record_model`` of their last stage, so a rerun that skips every stage still names its model).
Outside a bridge-ray job the run-record writes are no-ops; the files in ``output_dir`` are written anyway.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from bridge_ray import runs
from bridge_ray.errors import ConfigError
from bridge_ray.models import hub
from bridge_ray.models.checkpoints import CheckpointError, check_hf_model, latest_checkpoint, merge_to_hf, weights_dir

CONFIG_FILE = "config.json"
LOCK_FILE = ".bridge-ray.lock"  # the Hub upload leaves *.lock out
_claimed: dict[str, int] = {}  # folder -> the open lock file this process holds until it exits


@dataclass(frozen=True)
class MergedModel:
    """The last checkpoint of a run merged into a Hugging Face model.

    Attributes:
        checkpoint: the ``global_step_N`` folder it came from.
        hf_model: the merged ``save_pretrained`` folder.
        sample: what the model generated for the check prompt.
        hub_url: where it was uploaded, or None.
    """

    checkpoint: Path
    hf_model: Path
    sample: str
    hub_url: str | None = None


def refuse_finished(checkpoints: str | Path, total_steps: int | None, resume_mode: str, key: str) -> None:
    """Refuse to train a run that already reached its last step: submitted again with the same output dir and
    the same ``total_steps``, verl's trainers (SFT and PPO alike) count on from the checkpoint before they check
    for the end, so they trained step N+1 of N and replaced the run's merged model.

    Args:
        checkpoints: where the run's ``global_step_N`` folders are.
        total_steps: the run's length (None: set by epochs, not checked here).
        resume_mode: ``auto`` resumes from those folders; ``disable`` starts over, so nothing is refused.
        key: the override that sets ``total_steps``, for the message.

    Raises:
        ConfigError: the newest checkpoint is at or past ``total_steps``.
    """
    if resume_mode != "auto" or total_steps is None:
        return
    newest = latest_checkpoint(checkpoints)
    step = int(newest.name.rsplit("_", 1)[1]) if newest is not None else 0
    if step >= total_steps:
        raise ConfigError(f"{Path(checkpoints).parent} already holds this run's last checkpoint (step {step} of "
                          f"{total_steps}): nothing to train; raise {key} to train on from it, or give a new output "
                          "dir to start over")


def start(output_dir: str | Path, loggers: tuple[str, ...] = (), hub_repo_id: str | None = None) -> Path:
    """Record the job's host, packages and output dir in its run record, and hold the output dir
    (``claim``), before the preflight.

    The output dir is the preflight's to check (``config.output_dir_problem``): an unwritable one
    is a one-line PreflightError, and a run stopped there is still recorded.

    Args:
        output_dir: the run's absolute output folder (shared by every node).
        loggers: the workload's loggers (``"wandb"`` prints where W&B writes).
        hub_repo_id: the Hub repo the run uploads to at its end: its token is checked now, not after training.

    Returns:
        ``output_dir`` as a Path.

    Example:
        >>> output_dir = lifecycle.start(cfg.trainer.output_dir, loggers=cfg.trainer.loggers)
    """
    runs.record_job(output_dir, loggers=loggers)
    claim(output_dir)
    if hub_repo_id:
        hub.require_token(f"trainer.hub_repo_id={hub_repo_id}")
    return Path(output_dir)


def claim(folder: str | Path, what: str = "output dir") -> None:
    """Hold ``folder`` for as long as this process lives, so that a second run on it stops at once.

    Two jobs on one folder would write the same checkpoints (a run resubmitted while the first
    still runs, say after its ``--follow`` was interrupted). The hold is an exclusive ``flock`` on
    ``folder/.bridge-ray.lock``, which names the holder; the kernel drops it when the process ends,
    however it ends. A folder that cannot be created is left to the preflight to report, and a file
    system without locks holds nothing.

    Raises:
        ConfigError: another live process holds ``folder``: which job, on which host.
    """
    path = Path(folder)
    if str(path) in _claimed:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"{what} {path} is in use by {holder}: wait for that run to end or stop it "
                          f"(`bridge-ray stop ID`), or choose another {what}") from None
    except OSError:  # no locks on this file system
        os.close(fd)
        return
    run = runs.current_run_dir()
    me = f"job {run.name}" if run else "a process"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me} (host {socket.gethostname()}, pid {os.getpid()})".encode(), 0)
    _claimed[str(path)] = fd


def save_config(output_dir: Path, config: dict) -> Path:
    """Write the workload's resolved config (its section, the verl overrides, the env) as ``config.json``.

    ``runs show`` and the model card read it; ``finish_run`` copies it into the run folder.
    """
    path = output_dir / CONFIG_FILE
    path.write_text(json.dumps(config, indent=2, default=str))
    return path


def record_metrics(last: dict | None) -> dict | None:
    """Put the last step (``last["step"]``) and its numeric metrics into the run record.

    Args:
        last: the last step's row, as the workload logged it; None or empty when no step was logged.

    Returns:
        The numeric metrics recorded (``step`` included), or None when there was no step.
    """
    if not last:
        return None
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    runs.update_run(last_step=last.get("step"), metrics=metrics)
    return metrics


def record_model(hf_model: str | Path, output_dir: str | Path | None = None) -> None:
    """Record the run's merged model (and, for a pipeline, the output dir of the stage that made it)."""
    runs.update_run(hf_model=str(hf_model), **({"output_dir": str(output_dir)} if output_dir else {}))


def finish_model(checkpoint_root: Path, output_dir: Path, *, env: dict[str, str] | None = None,
                 prompt: str | None = None, max_new_tokens: int = 8, hub_repo_id: str | None = None,
                 hub_private: bool = False) -> MergedModel:
    """Merge the newest checkpoint into ``output_dir/hf``, check it generates, record it, upload it.

    The model of a ``global_step_N`` is the folder ``weights_dir`` names (PPO's ``actor/``), the same
    one ``bridge-ray export`` merges.

    Args:
        checkpoint_root: where verl wrote the ``global_step_N`` folders.
        output_dir: the run's output folder; the model goes to its ``hf/``.
        env: extra environment for the merger (``cpu_env()`` on CPU-only hosts).
        prompt: the check's prompt, printed with the answer; None: ``check_hf_model``'s default, printed
            as the sample generation.
        max_new_tokens: how many tokens the check generates.
        hub_repo_id: upload the model to this Hub repo; None: no upload.
        hub_private: create that repo private.

    Raises:
        CheckpointError: no checkpoint under ``checkpoint_root``, or the merge or the check failed.
        ConfigError / HubError: the upload was refused (see ``hub.upload``).
    """
    checkpoint = latest_checkpoint(checkpoint_root)
    if checkpoint is None:
        raise CheckpointError(f"training ended without a checkpoint under {checkpoint_root}")
    weights = weights_dir(checkpoint)
    hf_dir = merge_to_hf(weights, output_dir / "hf", env=env)
    if prompt is None:
        sample = check_hf_model(hf_dir, max_new_tokens=max_new_tokens)
        print(f"[bridge-ray] merged {weights} -> {hf_dir}; sample generation: {sample!r}", flush=True)
    else:
        sample = check_hf_model(hf_dir, prompt=prompt, max_new_tokens=max_new_tokens)
        print(f"[bridge-ray] merged {weights} -> {hf_dir}; {prompt!r} -> {sample!r}", flush=True)
    record_model(hf_dir)
    url = hub.upload_after_run(hf_dir, hub_repo_id, hub_private)
    return MergedModel(checkpoint, hf_dir, sample, url)


def where_report(result) -> str:
    """The lines a trainer's recipe prints at its end: its run folder and merged model."""
    return f"run folder: {result.output_dir}\nmerged Hugging Face model: {result.hf_model}"
