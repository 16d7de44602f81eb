"""A run's curves (loss, val loss, reward, tokens/s per step), the figures that matter, and a plot.

Read from what every workload writes into its output dir: ``metrics.json``'s per-step history
(SFT, pretraining, instruction tuning: ``loss``, ``val_loss``, ``tokens_per_s``, ``mfu``) or
verl's ``metrics.jsonl`` (PPO/GRPO: ``critic/score/mean`` is the reward, ``critic/vf_loss``,
``actor/pg_loss``, ``perf/throughput``).

Example:
    >>> run = bridge_ray.load_run("sft-gsm8k-20261125-1730")
    >>> curves.summary(curves.of_run(run))["loss"]
    {'first': 6.36, 'last': 3.52, 'best': 3.52, 'best_step': 6}
"""
from __future__ import annotations

import json
from pathlib import Path

from bridge_ray.errors import ConfigError

METRICS_FILE = "metrics.jsonl"  # verl's file logger: one {"step": N, "data": {...}} line a step (PPO/GRPO)

# name shown -> the keys that hold it (SFT/pretrain history first, then verl's PPO metrics)
SERIES = {
    "loss": ("loss", "actor/pg_loss"),
    "val_loss": ("val_loss", "val/loss"),
    "reward": ("critic/score/mean",),
    "critic_loss": ("critic/vf_loss",),
    "tokens_per_s": ("tokens_per_s", "perf/throughput"),
    "mfu": ("mfu", "perf/mfu/actor"),
}
LOWER_IS_BETTER = ("loss", "val_loss", "critic_loss")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (``{"step": N, "data": {...}}``), oldest first; [] when there is none.

    verl appends one line per step while the run goes on, so the last line may be half-written
    (and a killed attempt's stays so): a line that does not parse is left out.
    """
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written, or a blank one
            continue
    return rows


def step_rows(path: Path) -> list[dict]:
    """``read_metrics`` flattened: one ``{"step": N, name: value, ...}`` per line of verl's metrics file."""
    return [{"step": row["step"], **row.get("data", {})} for row in read_metrics(path)]


def _rows(folder: Path) -> list[dict]:
    """Per-step rows ``{"step": N, key: value}`` from a run's output folder (empty when none)."""
    history = folder / "metrics.json"
    if history.is_file():
        try:
            data = json.loads(history.read_text())
        except (OSError, ValueError):
            return []
        rows = data.get("history") if isinstance(data, dict) else None
        # A hand-edited or foreign file: only rows that are objects with a whole step count.
        return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)] if isinstance(rows, list) else []
    return step_rows(folder / METRICS_FILE)


def of_folder(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{series: [(step, value), ...]}`` for each series the run logged (see ``SERIES``)."""
    found: dict[str, dict[int, float]] = {}
    for row in _rows(Path(folder)):
        for name, keys in SERIES.items():
            value = next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)
            if value is not None:
                found.setdefault(name, {})[int(row["step"])] = float(value)
    return {name: sorted(points.items()) for name, points in found.items()}


def of_run(run) -> dict[str, list[tuple[int, float]]]:
    """The curves of a run record (its output dir, else its run folder)."""
    for folder in (run.output_dir, run.run_dir):
        if folder and (curves := of_folder(folder)):
            return curves
    return {}


def summary(curves: dict[str, list[tuple[int, float]]]) -> dict[str, dict]:
    """First, last and best value (and its step) of each curve; the mean for throughput."""
    out = {}
    for name, points in curves.items():
        values = [v for _, v in points]
        if name in ("tokens_per_s", "mfu"):
            out[name] = {"mean": sum(values) / len(values), "last": values[-1]}
            continue
        pick = min if name in LOWER_IS_BETTER else max
        best_step, best = pick(points, key=lambda p: p[1])
        out[name] = {"first": values[0], "last": values[-1], "best": best, "best_step": best_step}
    return out


def check_target(path: str | Path, overwrite: bool = False) -> None:
    """Refuse a plot target that is no ``.png``, sits in a folder that does not exist, or is a file already there
    (unless ``overwrite``): matplotlib would fail on the first, quietly create the second or replace the third.

    Raises:
        ConfigError: what is wrong with ``path`` and what to give instead.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ConfigError(f"--out {path}: the plot is a PNG: give a path ending in .png")
    if not target.absolute().parent.is_dir():
        raise ConfigError(f"--out {path}: the folder {target.absolute().parent} does not exist: create it first, or "
                          "give a path in an existing folder")
    if target.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists: pass --overwrite to replace it, or give another path")


def plot(runs: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path) -> Path:
    """Draw loss (with val loss), reward and critic loss against step, one line per run; write a PNG.

    Args:
        runs: ``{label: curves}``; several runs are overlaid on the same axes.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ("loss", "reward", "critic_loss") if any(name in c for c in runs.values())]
    panels = panels or ["loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, name in zip(axes[0], panels):
        for label, curves in runs.items():
            for series, style in ((name, "-"), ("val_loss", "--") if name == "loss" else (None, None)):
                points = curves.get(series) if series else None
                if points:
                    ax.plot(*zip(*points), style, marker="o", markersize=3,
                            label=f"{label} {series}" if len(runs) > 1 else series)
        ax.set_xlabel("step")
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(", ".join(runs), fontsize=9)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
