"""``export(run, step=None)``: merge a chosen checkpoint of a run into a Hugging Face model.

Any run that checkpoints with verl's FSDP layout: SFT and pretraining (``global_step_N``) and PPO/GRPO
(its ``global_step_N/actor``; the critic is not exported).

The same code as the automatic merge at the end of every run (``bridge_ray.runs.lifecycle.finish_model``,
through ``bridge_ray.models.checkpoints``): verl's ``model_merger`` on a ``global_step_N``'s ``weights_dir``,
then a load-and-generate check with transformers.
It runs on this machine, which must see the run's output dir (the shared filesystem) and have
``bridge-ray[train]`` installed.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

from bridge_ray import runs
from bridge_ray.errors import RunNotFound
from bridge_ray.models.checkpoints import (MODEL_SHARDS, CheckpointError, check_hf_model, latest_checkpoint,
                                           merge_to_hf, weights_dir)

_STEP = re.compile(r"^global_step_(\d+)$")
_HOW_TO_GET_ONE = ("training saves one every `save_freq` steps and at its end: train or resume the run until it "
                   "saves one, or pass the output dir of a run that did")


class CheckpointNotFound(CheckpointError):
    """There is no checkpoint to merge where the user pointed: theirs to fix (exit 2)."""

    exit_code = 2


def resolve(run: str | Path) -> tuple[runs.RunRecord | None, Path]:
    """The run record (if any) and the output dir for a submission id, a run folder or an output dir.

    Raises:
        RunNotFound: ``run`` is neither a folder nor a recorded run.
        CheckpointNotFound: the run never said where it wrote its checkpoints.
    """
    if not str(run).strip():
        raise RunNotFound("an empty run: give a run id from `bridge-ray runs`, a run folder or a training "
                               "output folder")
    path = Path(run)
    if path.is_dir() and not (path / "run.json").is_file():
        return None, path.resolve()
    record = runs.read_run(path) if path.is_dir() else runs.load_run(str(run))
    if not record.output_dir:
        raise CheckpointNotFound(f"run {record.submission_id} recorded no output dir, so it has no checkpoint to "
                                 "export (it trained nothing, or its job never called "
                                 "bridge_ray.runs.lifecycle.start): pass the folder its training wrote to instead")
    return record, Path(record.output_dir)


def steps(checkpoint_root: Path) -> list[int]:
    """The checkpointed steps under ``checkpoint_root``, ascending."""
    return sorted(int(m.group(1)) for p in checkpoint_root.glob("global_step_*") if (m := _STEP.match(p.name)))


def _complete(checkpoint: Path) -> bool:
    return checkpoint.is_dir() and any(weights_dir(checkpoint).glob(MODEL_SHARDS))


def find_checkpoint(output_dir: Path, step: int | None = None) -> Path:
    """The ``global_step_N`` folder to merge: ``step``'s, or the latest complete one.

    Raises:
        CheckpointNotFound: saying which folder was searched, what is there, and how to get a checkpoint.
    """
    root = output_dir / "checkpoints" if (output_dir / "checkpoints").is_dir() else output_dir
    present = steps(root) if root.is_dir() else []
    complete = [n for n in present if _complete(root / f"global_step_{n}")]
    if step is not None:
        if step in complete:
            return root / f"global_step_{step}"
        if step not in present:
            there = (f"steps there: {', '.join(map(str, complete))}): pass --step with one of them" if complete else
                     f"steps there: {', '.join(map(str, present))}, none complete): {_HOW_TO_GET_ONE}" if present else
                     f"steps there: none): {_HOW_TO_GET_ONE}")
            raise CheckpointNotFound(f"no checkpoint for step {step} under {root} ({there}")
    elif complete:
        latest = latest_checkpoint(root)
        return latest if latest is not None and _complete(latest) else root / f"global_step_{complete[-1]}"
    if not root.is_dir():
        raise CheckpointNotFound(f"no checkpoint to export: {root} does not exist; {_HOW_TO_GET_ONE}")
    if not present:
        raise CheckpointNotFound(f"no checkpoint to export under {root}: the run saved none; {_HOW_TO_GET_ONE}")
    unfinished = [n for n in present if n not in complete]
    which = [step] if step is not None else unfinished
    holds = "holds" if len(which) == 1 else "hold"
    others = (f"pass --step with a complete one ({', '.join(map(str, complete))})" if complete
              else _HOW_TO_GET_ONE)
    raise CheckpointNotFound(f"no complete checkpoint to export under {root}: "
                             f"{', '.join(f'global_step_{n}' for n in which)} {holds} no model shards "
                             f"({MODEL_SHARDS}: a save that did not finish); {others}")


def _check_target(target: Path, default: Path, checkpoint: Path, overwrite: bool,
                  record: runs.RunRecord | None = None) -> None:
    """Refuse a target that would destroy or mix with something: a checkpoint of the run (the one merged or
    another), the run's record folder, bridge-ray's run and cluster records, a file, another folder (without
    ``overwrite``). --overwrite replaced what it names, so it must never name one of those."""
    from bridge_ray.cluster.records import PRIVATE_FOLDERS, home_dir

    resolved = target.resolve()
    steps = [checkpoint] + sorted(set(checkpoint.parent.glob("global_step_*")) - {checkpoint})
    guarded = [(step, f"the checkpoint {step}") for step in steps]
    if record is not None:
        guarded.append((runs.run_dir(record.submission_id), f"the record folder of run {record.submission_id}"))
    guarded += [(home_dir() / name, f"bridge-ray's {name} folder") for name in PRIVATE_FOLDERS]
    for path, what in guarded:
        held = path.resolve()
        if held == resolved or held.is_relative_to(resolved) or resolved.is_relative_to(held):
            raise CheckpointNotFound(f"--target-dir {target} holds or lies inside {what}: choose a folder outside "
                                     f"it, e.g. {default}")
    if target.exists() and not target.is_dir():
        raise CheckpointNotFound(f"--target-dir {target} is a file: choose a folder, e.g. {default}")
    try:  # the merge is staged beside the target: its folder must take new entries
        target.absolute().parent.mkdir(parents=True, exist_ok=True)
        probe = target.absolute().parent / f".{target.name}.writable-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise CheckpointNotFound(f"--target-dir {target} cannot be written ({err.strerror or type(err).__name__}): "
                                 f"choose a writable folder, e.g. {default}") from None
    if target.is_dir() and any(target.iterdir()) and resolved != default.resolve() and not overwrite:
        raise CheckpointNotFound(f"--target-dir {target} is not empty: pass --overwrite to replace what is in it, "
                                 f"or choose a new folder (default: {default})")


def _replace(staging: Path, target: Path) -> None:
    """Put the merged ``staging`` folder in ``target``'s place; an older model there goes only now."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _size(files) -> str:
    total = sum(f.stat().st_size for f in files)
    return f"{total / 2**30:.1f} GiB" if total >= 2**30 else f"{total / 2**20:.0f} MiB"


def _merge_env() -> dict[str, str]:
    import torch

    from bridge_ray.platforms import cpu_env

    return {} if torch.cuda.is_available() else cpu_env()


def export(run: str | Path, step: int | None = None, target_dir: str | Path | None = None,
           on_phase: Callable[[str], None] | None = None, overwrite: bool = False) -> Path:
    """Merge one checkpoint of ``run`` into a Hugging Face model and check that it generates.

    The model is merged and checked in a folder beside the target, then moved into place: a failed
    merge leaves an earlier model there as it was.

    Args:
        run: a submission id (or unique prefix), a run folder, or a training output dir.
        step: the checkpointed step to merge; None for the latest complete one.
        target_dir: where to write the model (default ``<output_dir>/hf_step_<N>``, replaced when it exists).
        on_phase: called with each long phase's name as it starts (merging, checking); the CLI
            shows them with their elapsed time.
        overwrite: replace a ``target_dir`` that is not empty (never needed for the default).

    Returns:
        The merged model's folder (recorded in the run's ``exports``).

    Raises:
        CheckpointNotFound: no such checkpoint (saying where it looked and what is there), or a
            ``target_dir`` that is a file, holds the checkpoint, or is not empty without ``overwrite`` (exit 2).
        CheckpointError: the merge or the check failed.

    Example:
        >>> bridge_ray.export("sft-gsm8k-20261125-1730", step=500)
        PosixPath('/shared/runs/sft-gsm8k-llama1b/hf_step_500')
    """
    record, output_dir = resolve(run)
    checkpoint = find_checkpoint(output_dir, step)
    number = int(_STEP.match(checkpoint.name).group(1))
    default = output_dir / f"hf_step_{number}"
    target = Path(target_dir) if target_dir else default
    _check_target(target, default, checkpoint, overwrite, record)
    weights = weights_dir(checkpoint)  # PPO/GRPO: the actor (the same folder the run's own merge took)
    staging = target.with_name(f".{target.name}.merging-{os.getpid()}")
    say = on_phase or (lambda phase: None)
    say(f"merging {weights} ({_size(weights.glob(MODEL_SHARDS))} of shards) into {target}")
    try:
        merge_to_hf(weights, staging, env=_merge_env(), log_file=target.with_name(f"{target.name}-merge.log"))
        say(f"checking that {target} loads in transformers and generates")
        check_hf_model(staging)
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if record is not None:
        runs.amend(record, exports={**record.exports, str(number): str(target)})
    return target
