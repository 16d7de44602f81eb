"""Stage records of a multi-stage run: ``stages.json`` in its run folder, one record per finished stage.

A pipeline (``sft_then_ppo``, ``text_to_chat``) skips a stage whose record exists with the same
config hash; these functions read and write those records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from bridge_ray.cluster import driver
from bridge_ray.cluster.records import home_dir
from bridge_ray.config import to_dict
from bridge_ray.errors import ConfigError

RECORDS_FILE = "stages.json"


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """A finished stage: its name, config hash, merged HF model folder and finish time."""

    name: str
    config_hash: str
    output: str
    finished_at: float


def default_run_dir(name: str) -> Path:
    """``$BRIDGE_RAY_HOME/outputs/<name>`` (``~/.bridge-ray`` when unset), absolute; run records stay in runs/."""
    return home_dir() / "outputs" / name


def config_hash(cfg) -> str:
    """A short stable hash of a config dataclass."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_records(run_dir: str | Path) -> dict[str, StageRecord]:
    """The stage records of ``run_dir`` (empty when none finished)."""
    path = Path(run_dir) / RECORDS_FILE
    if not path.is_file():
        return {}
    return {name: StageRecord(**row) for name, row in json.loads(path.read_text()).items()}


def save_record(run_dir: str | Path, record: StageRecord) -> None:
    """Add or replace one stage's record (atomically)."""
    rows = {name: dataclasses.asdict(r) for name, r in load_records(run_dir).items()}
    rows[record.name] = dataclasses.asdict(record)
    path = Path(run_dir) / RECORDS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    os.replace(tmp, path)


def has_model(output: str) -> bool:
    """A stage's output is there: a Hugging Face folder (its ``config.json``)."""
    return (Path(output) / "config.json").is_file()


def finished(run_dir: str | Path, name: str, cfg, done: Callable[[str], bool] = has_model) -> StageRecord | None:
    """The stage's record if it finished with this config and its output is still there (``done``).

    Raises:
        ConfigError: the stage finished with another config.
    """
    record = load_records(run_dir).get(name)
    if record is None or not done(record.output):
        return None
    if record.config_hash != config_hash(cfg):
        raise ConfigError(
            f"stage {name} in {run_dir} finished with another config (hash {record.config_hash}, now "
            f"{config_hash(cfg)}): use a new run_dir, or delete the {name!r} entry of {Path(run_dir) / RECORDS_FILE} "
            "to run it again")
    return record


def run_stage(run_dir: Path, name: str, cfg, work: Callable[[], object],
              done: Callable[[str], bool] = has_model) -> StageRecord:
    """Skip the stage if it finished with ``cfg``, else run ``work`` (returning its output) and record it.

    The next stage's driver clock counts from that stage's own start (the stages share one process).
    """
    record = finished(run_dir, name, cfg, done)
    if record is not None:
        print(f"[bridge-ray] stage {name}: finished before ({record.output}); skipping", flush=True)
        return record
    print(f"[bridge-ray] stage {name}: starting", flush=True)
    try:
        record = StageRecord(name, config_hash(cfg), str(work()), time.time())
    finally:
        driver.DriverClock.next_stage()
    save_record(run_dir, record)
    return record
