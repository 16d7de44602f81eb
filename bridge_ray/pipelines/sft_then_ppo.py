"""SFT, then PPO/GRPO from the merged SFT model, in one job; a rerun skips finished stages.

Run folder (``run_dir``, absolute, shared by all nodes)::

    stages.json    one record per finished stage: config hash, merged HF model, time
    sft/           the SFT run (``bridge_ray.sft.fit``), its merged model in sft/hf
    ppo/           the PPO run (``bridge_ray.ppo.run``) starting from sft/hf, its actor in ppo/hf

A stage is skipped when its record exists, its config hash matches and its merged model is
still there. A finished stage whose config changed is an error (its outputs would no longer
match the config): use a new run_dir, or delete that stage's record from ``stages.json``.
An unfinished stage is started again and resumes from its own last checkpoint.

Example:
    >>> from bridge_ray import ppo, sft
    >>> from bridge_ray.pipelines.sft_then_ppo import sft_then_ppo
    >>> stages = sft_then_ppo(sft.sft_gsm8k_llama1b(), ppo.grpo_gsm8k_llama1b(), "/shared/runs/chain")
    >>> stages["ppo"].output            # the merged PPO actor
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from bridge_ray.config import apply_overrides
from bridge_ray.errors import ConfigError
from bridge_ray.pipelines.stages import StageRecord, load_records, run_stage
from bridge_ray.recipe import recipe_main


def plan(sft_cfg, ppo_cfg, run_dir: str | Path):
    """The two stage configs with their run folders under ``run_dir`` and PPO starting from sft/hf."""
    run_dir = Path(run_dir)
    sft_cfg = dataclasses.replace(sft_cfg, trainer=dataclasses.replace(sft_cfg.trainer, output_dir=str(run_dir / "sft")))
    ppo_cfg = dataclasses.replace(
        ppo_cfg, model=dataclasses.replace(ppo_cfg.model, path=str(run_dir / "sft" / "hf")),
        trainer=dataclasses.replace(ppo_cfg.trainer, output_dir=str(run_dir / "ppo")))
    return sft_cfg, ppo_cfg


def sft_then_ppo(sft_cfg, ppo_cfg, run_dir: str | Path, reward: Callable | str | None = None) -> dict[str, StageRecord]:
    """Run SFT, merge it, and start PPO/GRPO from the merged model; skip stages already finished.

    Args:
        sft_cfg: An ``SFTConfig``; its output dir becomes ``run_dir/sft``.
        ppo_cfg: A ``PPOConfig``; its model becomes the SFT model, its output dir ``run_dir/ppo``.
        run_dir: Absolute folder for both stages and ``stages.json``.
        reward: As in ``bridge_ray.ppo.run``.

    Returns:
        ``{"sft": StageRecord, "ppo": StageRecord}``.

    Raises:
        ConfigError: ``run_dir`` is relative, or a finished stage's config changed.
        Whatever ``sft.fit`` / ``ppo.run`` raise (the stage stays unfinished).
    """
    from bridge_ray import ppo, sft
    from bridge_ray.ppo.reward import describe
    from bridge_ray.runs import lifecycle

    if not os.path.isabs(str(run_dir)):
        raise ConfigError(f"run dir {run_dir} must be an absolute path (relative paths land in Ray's working_dir)")
    run_dir = Path(run_dir)
    sft_cfg, ppo_cfg = plan(sft_cfg, ppo_cfg, run_dir)
    if reward is not None:
        ppo_cfg = dataclasses.replace(ppo_cfg, reward=dataclasses.replace(ppo_cfg.reward, function=describe(reward)[0]))
    sft.validate(sft_cfg)  # both stages before either starts: a bad PPO value must not wait for SFT to end
    ppo.validate(ppo_cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    lifecycle.claim(run_dir, "run dir")  # a second submission of this chain stops here while this one runs
    sft_record = run_stage(run_dir, "sft", sft_cfg, lambda: sft.fit(sft_cfg).hf_model)
    ppo_record = run_stage(run_dir, "ppo", ppo_cfg, lambda: ppo.run(ppo_cfg, reward).hf_model)
    if ppo_cfg.trainer.merge_hf:  # the run's model is PPO's, also when both stages were skipped
        lifecycle.record_model(ppo_record.output, ppo_cfg.trainer.output_dir)
    return {"sft": sft_record, "ppo": ppo_record}


def stage_configs(sft_cfg, ppo_cfg, run_dir: str | Path, argv: list[str]):
    """The two stages' configs for a recipe's ``argv``: ``sft.*`` / ``ppo.*`` overrides applied, paths planned.

    ``--dry-run`` in ``argv`` is left for ``main``.

    Raises:
        ConfigError: every override that is malformed, unknown or mistyped.
    """
    overrides = [a for a in argv if a != "--dry-run"]
    sft_cfg = apply_overrides(sft_cfg, [a for a in overrides if not a.startswith("ppo.")], prefix="sft")
    ppo_cfg = apply_overrides(ppo_cfg, [a for a in overrides if a.startswith("ppo.")], prefix="ppo")
    return plan(sft_cfg, ppo_cfg, run_dir)


def main(sft_cfg, ppo_cfg, run_dir: str | Path, argv: list[str] | None = None,
         reward: Callable | str | None = None) -> dict[str, StageRecord] | None:
    """A recipe's body: ``sft.*`` / ``ppo.*`` overrides from ``argv``, then ``sft_then_ppo`` (or ``--dry-run``).

    Errors print as one ``error: ...`` line and exit with their code.
    """
    from bridge_ray import ppo, sft

    def shown(plans: tuple) -> dict:
        sft_plan, ppo_plan = plans
        return {"run_dir": str(run_dir), "records": {k: dataclasses.asdict(v) for k, v in load_records(run_dir).items()},
                "sft_verl_overrides": sft.to_verl_overrides(sft.validate(sft_plan)), "ppo": ppo.dry_run(ppo_plan, reward)}

    return recipe_main(argv, lambda args: stage_configs(sft_cfg, ppo_cfg, run_dir, args), shown,
                       lambda plans: sft_then_ppo(*plans, run_dir, reward))
