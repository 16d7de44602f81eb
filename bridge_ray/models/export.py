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

import re
from pathlib import Path
from typing import Callable

from bridge_ray import runs
from bridge_ray.models.checkpoints import (MODEL_SHARDS, CheckpointError, check_hf_model, latest_checkpoint,
                                           merge_to_hf, weights_dir)

_STEP = re.compile(r"^global_step_(\d+)$")


def resolve(run: str | Path) -> tuple[runs.RunRecord | None, Path]:
    """The run record (if any) and the output dir for a submission id, a run folder or an output dir.

    Raises:
        RunNotFound: ``run`` is neither a folder nor a recorded run.
        CheckpointError: the run never said where it wrote its checkpoints.
    """
    path = Path(run)
    if path.is_dir() and not (path / "run.json").is_file():
        return None, path.resolve()
    record = runs.read_run(path) if path.is_dir() else runs.load_run(str(run))
    if not record.output_dir:
        raise CheckpointError(f"run {record.submission_id} recorded no output dir (its job never called "
                              "bridge_ray.runs.lifecycle.start): pass the output dir instead of the run id")
    return record, Path(record.output_dir)


def steps(checkpoint_root: Path) -> list[int]:
    """The checkpointed steps under ``checkpoint_root``, ascending."""
    return sorted(int(m.group(1)) for p in checkpoint_root.glob("global_step_*") if (m := _STEP.match(p.name)))


def _size(files) -> str:
    total = sum(f.stat().st_size for f in files)
    return f"{total / 2**30:.1f} GiB" if total >= 2**30 else f"{total / 2**20:.0f} MiB"


def _merge_env() -> dict[str, str]:
    import torch

    from bridge_ray.platforms import cpu_env

    return {} if torch.cuda.is_available() else cpu_env()


def export(run: str | Path, step: int | None = None, target_dir: str | Path | None = None,
           on_phase: Callable[[str], None] | None = None) -> Path:
    """Merge one checkpoint of ``run`` into a Hugging Face model and check that it generates.

    Args:
        run: a submission id (or unique prefix), a run folder, or a training output dir.
        step: the checkpointed step to merge; None for the latest.
        target_dir: where to write the model (default ``<output_dir>/hf_step_<N>``).
        on_phase: called with each long phase's name as it starts (merging, checking); the CLI
            shows them with their elapsed time.

    Returns:
        The merged model's folder (recorded in the run's ``exports``).

    Raises:
        CheckpointError: no such checkpoint (listing the steps there are), or the merge failed.

    Example:
        >>> bridge_ray.export("sft-gsm8k-20261125-1730", step=500)
        PosixPath('/shared/runs/sft-gsm8k-llama1b/hf_step_500')
    """
    record, output_dir = resolve(run)
    root = output_dir / "checkpoints" if (output_dir / "checkpoints").is_dir() else output_dir
    checkpoint = latest_checkpoint(root) if step is None else root / f"global_step_{step}"
    if checkpoint is None or not checkpoint.is_dir():
        found = ", ".join(map(str, steps(root))) or "none"
        err = CheckpointError(f"no checkpoint{'' if step is None else f' for step {step}'} under {root} "
                              f"(steps there: {found}): pass --step with one of them")
        err.exit_code = 1 if step is None else 2  # a step that is not there is the caller's to fix
        raise err
    number = int(_STEP.match(checkpoint.name).group(1))
    target = Path(target_dir) if target_dir else output_dir / f"hf_step_{number}"
    weights = weights_dir(checkpoint)  # PPO/GRPO: the actor (the same folder the run's own merge took)
    say = on_phase or (lambda phase: None)
    say(f"merging {weights} ({_size(weights.glob(MODEL_SHARDS))} of shards) into {target}")
    merge_to_hf(weights, target, env=_merge_env())
    say(f"checking that {target} loads in transformers and generates")
    check_hf_model(target)
    if record is not None:
        runs.amend(record, exports={**record.exports, str(number): str(target)})
    return target
