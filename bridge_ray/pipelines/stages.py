"""Stage records of a multi-stage run: ``stages.json`` in its run folder, one record per finished stage.

A pipeline (``sft_then_ppo``, ``text_to_chat``) skips a stage whose record exists with the same
config hash; these functions read and write those records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from bridge_ray.cluster.records import home_dir
from bridge_ray.config import to_dict

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
