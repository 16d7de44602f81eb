"""Shared helpers for the SFT tests: tiny demo assets and loss extraction."""
from __future__ import annotations

import json
import re
from pathlib import Path

from bridge_ray.models.assets import build_demo_assets

LOSS_LINE = re.compile(r"step:(\d+) - .*?train/loss:([0-9.eE+-]+)")


def build_assets(out_dir: Path) -> dict[str, str]:
    """A tiny random Llama and small synthetic GSM8K SFT parquets under ``out_dir``."""
    paths = build_demo_assets(out_dir, shape="tiny", num_train=256, num_val=32)
    return {"model_dir": str(paths["model"]), "train": str(paths["train"]), "val": str(paths["val"])}


def losses_from_log(text: str) -> dict[int, float]:
    """{step: loss} from verl's console-logger lines (repeated lines collapse)."""
    return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(text)}


def losses_from_metrics(path: Path) -> dict[int, float]:
    """{step: loss} from a run's ``metrics.json`` history."""
    data = json.loads(Path(path).read_text())
    return {int(row["step"]): float(row["loss"]) for row in data["history"]}
