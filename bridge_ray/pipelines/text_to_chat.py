"""Raw text to a published chat model in one job: tokenizer -> pretrain -> export (+ test prompt) ->
instruction-tune -> export -> upload. A rerun skips the stages already finished.

Run folder (``run_dir``, absolute, shared by all nodes)::

    stages.json    one record per finished stage (``bridge_ray.pipelines.stages``: config hash, output, time)
    tokenizer/     the tokenizer: sentencepiece model + Hugging Face files (``bridge_ray.tokenizer``)
    pretrain/      the pretraining run (``bridge_ray.pretrain``); pretrain/hf the merged base model,
                   checked on the test prompt ("Once upon a time,")
    instruct/      instruction tuning of pretrain/hf on the flattened conversations
                   (``bridge_ray.instruct``); instruct/hf the merged chat model
    upload         instruct/hf to ``hub_repo_id`` with a model card (skipped when no repo is set)

``ChainConfig`` holds one config per stage; overrides address them as ``tokenizer.*``, ``pretrain.*``,
``instruct.*`` and the chain's own keys (``hub_repo_id=...``, ``conversations=[...]``). The paths
that join the stages (tokenizer -> pretrain -> instruct) are set by ``plan`` from ``run_dir``.
A stage is skipped when its record exists, its config hash matches and its output is still there;
a finished stage whose config changed is an error (use a new run_dir, or delete its entry from
``stages.json``); an unfinished stage starts again and resumes from its own last checkpoint.

Example:
    >>> from bridge_ray.pipelines import text_to_chat
    >>> cfg = text_to_chat.chain_1b("/shared/runs/ja-1b", text_files, ["/data/oasst2.trees.jsonl"], num_gpus=8)
    >>> text_to_chat.run(text_to_chat.apply_overrides(cfg, ["hub_repo_id=my-org/ja-1b-chat"]))
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from bridge_ray.config import to_dict
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.pipelines import stages
from bridge_ray.pretrain.config import PretrainConfig, pretrain_1b, pretrain_tiny_cpu
from bridge_ray.recipe import recipe_main
from bridge_ray.sft.config import SFTConfig
from bridge_ray.tokenizer import TokenizerConfig

STAGES = ("tokenizer", "pretrain", "instruct", "upload")


@dataclass(frozen=True)
class ChainConfig:
    """The whole chain: one config per stage, the conversations to tune on, where to upload."""

    run_dir: str = ""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    instruct: SFTConfig = field(default_factory=SFTConfig)
    conversations: tuple[str, ...] = ()
    conversations_lang: Optional[str] = None
    conversations_mode: str = "top"
    hub_repo_id: Optional[str] = None
    hub_private: bool = False


@dataclass(frozen=True)
class UploadTarget:
    """What the upload stage's record hashes: the repo, its visibility and the model folder sent."""

    repo_id: str
    private: bool
    model: str


def chain_tiny_cpu(run_dir: str, text_files, val_files, conversations) -> ChainConfig:
    """Tiny everything on 2 CPU workers: a 320-piece tokenizer, the tiny pretrain and instruct presets."""
    from bridge_ray.instruct import instruct_tiny_cpu

    text_files, val_files = tuple(text_files), tuple(val_files)
    return ChainConfig(
        run_dir=run_dir,
        tokenizer=TokenizerConfig(files=tuple(text_files), vocab_size=320, input_sentence_size=0),
        pretrain=pretrain_tiny_cpu("", text_files, val_files, ""),
        instruct=instruct_tiny_cpu("", ""), conversations=tuple(conversations))


def chain_1b(run_dir: str, text_files, conversations, num_gpus: int | Literal["auto"] = "auto") -> ChainConfig:
    """The older workflow's run on GPUs: a 32k unigram tokenizer, the 1B shape, instruction tuning; both training
    stages on every GPU of the cluster by default."""
    from bridge_ray.instruct import instruct_1b

    instruct, text_files = instruct_1b("", ""), tuple(text_files)
    return ChainConfig(
        run_dir=run_dir,
        tokenizer=TokenizerConfig(files=tuple(text_files), vocab_size=32000, num_cpus=16),
        pretrain=pretrain_1b("", text_files, "", num_gpus=num_gpus),
        instruct=dataclasses.replace(instruct, workers=dataclasses.replace(instruct.workers, num_workers=num_gpus)),
        conversations=tuple(conversations))


PRESETS = {"chain_tiny_cpu": chain_tiny_cpu, "chain_1b": chain_1b}


def _replace(cfg, **groups):
    """``cfg`` with fields of its sub-configs replaced: ``_replace(cfg, trainer={"output_dir": ...})``."""
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in groups.items()})


def plan(cfg: ChainConfig) -> ChainConfig:
    """``cfg`` with each stage's folders under ``run_dir`` and each stage reading the one before."""
    from bridge_ray.instruct import data_file

    run = Path(cfg.run_dir)
    tokenizer = dataclasses.replace(cfg.tokenizer, output_dir=str(run / "tokenizer"))
    pretrain = _replace(cfg.pretrain, model={"tokenizer_path": tokenizer.output_dir},
                        trainer={"output_dir": str(run / "pretrain")})
    instruct = _replace(cfg.instruct, model={"path": str(run / "pretrain" / "hf")},
                        trainer={"output_dir": str(run / "instruct")})
    instruct = _replace(instruct, data={"train_files": (str(data_file(instruct)),)})
    return dataclasses.replace(cfg, tokenizer=tokenizer, pretrain=pretrain, instruct=instruct)


def validate(cfg: ChainConfig) -> ChainConfig:
    """Check every stage's config (after ``plan``) before any starts; return ``cfg``.

    Raises:
        ConfigError: every problem of every stage, together.
    """
    from bridge_ray import pretrain, sft, tokenizer

    problems = [] if cfg.run_dir and os.path.isabs(cfg.run_dir) else [
        f"run_dir={cfg.run_dir!r} must be an absolute path (relative paths land in Ray's working_dir)"]
    if not cfg.conversations:
        problems.append("conversations is empty: set conversations=[/abs/oasst.trees.jsonl] (OpenAssistant trees, "
                        "message rows or messages files)")
    if cfg.conversations_mode not in ("top", "all"):
        problems.append(f"conversations_mode={cfg.conversations_mode!r}: use top or all")
    if problems:
        raise ConfigError(problems)
    planned = plan(cfg)
    for check, stage in ((tokenizer.validate, planned.tokenizer), (pretrain.validate, planned.pretrain),
                         (sft.validate, planned.instruct)):
        try:
            check(stage)
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _done(name: str) -> Callable[[str], bool]:
    """What a finished stage leaves: the tokenizer its ``tokenizer.json``, a training stage its model; an
    upload nothing here."""
    if name == "tokenizer":
        return lambda output: (Path(output) / "tokenizer.json").is_file()
    return (lambda output: True) if name == "upload" else stages.has_model


def _upload(cfg: ChainConfig) -> str:
    from bridge_ray.models import hub

    return hub.upload(Path(cfg.instruct.trainer.output_dir) / "hf", cfg.hub_repo_id, private=cfg.hub_private)


def check_resources(cfg: ChainConfig) -> None:
    """Before any stage starts: the stages still to run fit the cluster (the tokenizer's CPUs on one node,
    the training workers on the nodes), so a cluster too small fails now, not after the tokenizer's hours.

    Raises:
        PreflightError: every stage that does not fit, with the key to change.
        ConfigError: a finished stage's config changed (as ``run`` would say).
    """
    from bridge_ray.cluster.driver import alive_nodes

    fits(cfg, alive_nodes())


def fits(cfg: ChainConfig, nodes: list[dict]) -> None:
    """``check_resources`` against ``nodes`` (``ray.nodes()`` rows; ``submit`` asks before sending the job)."""
    from bridge_ray.sft.preflight import workers_fit
    from bridge_ray.tokenizer import cpus_problem

    cfg = plan(cfg)  # the folders a finished stage recorded (planning twice changes nothing)
    run_dir = Path(cfg.run_dir)
    checks = {"tokenizer": (cfg.tokenizer, lambda: cpus_problem(cfg.tokenizer, nodes)),
              "pretrain": (cfg.pretrain, lambda: workers_fit(cfg.pretrain.workers, nodes, "pretrain")),
              "instruct": (cfg.instruct, lambda: workers_fit(cfg.instruct.workers, nodes, "instruct"))}
    problems = [problem for name, (stage_cfg, check) in checks.items()
                if stages.finished(run_dir, name, stage_cfg, _done(name)) is None and (problem := check())]
    if problems:
        raise PreflightError("; ".join(problems))


def run(cfg: ChainConfig) -> dict[str, stages.StageRecord]:
    """Run the stages not yet finished, in order (see the module docstring).

    Returns:
        ``{stage: StageRecord}`` for every stage that ran or was skipped (no ``upload`` without a repo).

    Raises:
        ConfigError: a bad value in any stage, or a finished stage whose config changed.
        Whatever a stage raises (it stays unfinished; a rerun starts it again).
    """
    from bridge_ray import instruct, pretrain, tokenizer
    from bridge_ray.runs import lifecycle
    from bridge_ray.sft.trainer import connect

    cfg = plan(validate(cfg))
    # The upload comes last: its token is looked for now, not after hours of training (unless it is done).
    if cfg.hub_repo_id and "upload" not in stages.load_records(cfg.run_dir):
        from bridge_ray.models import hub

        hub.require_token(f"hub_repo_id={cfg.hub_repo_id}")
    connect()  # the training stages' way of attaching (the tokenizer's would not set Ray Train's env)
    run_dir = Path(cfg.run_dir)
    check_resources(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    lifecycle.claim(run_dir, "run_dir")  # a second submission of this chain stops here while this one runs

    def stage(name: str, stage_cfg, work: Callable[[], object]) -> stages.StageRecord:
        return stages.run_stage(run_dir, name, stage_cfg, work, _done(name))

    records = {
        "tokenizer": stage("tokenizer", cfg.tokenizer, lambda: tokenizer.train(cfg.tokenizer).output_dir),
        "pretrain": stage("pretrain", cfg.pretrain, lambda: pretrain.fit(cfg.pretrain).hf_model),
        "instruct": stage("instruct", cfg.instruct, lambda: instruct.instruct_tune(
            cfg.instruct, cfg.conversations, cfg.conversations_lang, cfg.conversations_mode).hf_model),
    }
    lifecycle.record_model(records["instruct"].output, cfg.instruct.trainer.output_dir)  # also when every stage was skipped
    if cfg.hub_repo_id:
        target = UploadTarget(cfg.hub_repo_id, cfg.hub_private, records["instruct"].output)
        records["upload"] = stage("upload", target, lambda: _upload(cfg))
    return records


def apply_overrides(cfg: ChainConfig, overrides: list[str]) -> ChainConfig:
    """``cfg`` with dotted overrides: ``tokenizer.*``, ``pretrain.*``, ``instruct.*``, ``hub_repo_id=...``."""
    from bridge_ray.config import apply_overrides as apply

    return apply(cfg, overrides)


def main(config, argv: list[str] | None = None, before: Callable[[ChainConfig], None] | None = None):
    """A recipe's body: ``config(argv)``, then ``run`` (or ``--dry-run``: the planned stages and records).

    Args:
        config: the recipe's ``config(argv) -> ChainConfig``.
        argv: the recipe's arguments (default ``sys.argv[1:]``).
        before: called with the config before the stages run (e.g. to write demo data).

    Errors print as one ``error: ...`` line and exit with their code (2 for bad input).
    """
    def shown(cfg: ChainConfig) -> dict:
        records = {k: dataclasses.asdict(v) for k, v in stages.load_records(cfg.run_dir).items()}
        return {"chain": to_dict(plan(cfg)), "records": records}

    return recipe_main(argv, lambda args: validate(config(args)), shown, run,
                       report=lambda records: "\n".join(f"{k}: {r.output}" for k, r in records.items()), before=before)
