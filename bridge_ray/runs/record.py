"""A run's record (``RunRecord``, ``run.json`` in its folder): where it lives, the locked update, reading it back.

Reading fills what the job wrote beside the record (its config, last step, metrics, W&B run);
the writers (the submitter and the job) are in ``bridge_ray.runs``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import json
import os
import typing
from pathlib import Path

from bridge_ray.cluster import records
from bridge_ray.errors import RunNotFound, RunRecordBroken
from bridge_ray.jobs import tracking
from bridge_ray.runs.curves import METRICS_FILE, step_rows

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CLUSTER_LOST = "cluster lost"


def has_ended(data: dict) -> bool:
    """Whether a record (``run.json``'s dict) holds its run's end; a run marked lost with its cluster
    has not: a head that came back may still give its real end."""
    return data.get("status") in TERMINAL and data.get("failure") != CLUSTER_LOST


def read_record(folder: Path) -> RunRecord:
    """The ``RunRecord`` in ``folder/run.json``, or RunRecordBroken naming it."""
    path = folder / "run.json"
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("submission_id"), str):
            raise ValueError("not a run record")
        problem = _type_problem(data)
        if problem:
            raise ValueError(problem)
        return RunRecord.from_dict(data)
    except (OSError, ValueError, TypeError) as err:
        raise RunRecordBroken(f"the run record {path} is unreadable ({err}): fix or delete {folder}") from None


@dataclasses.dataclass
class RunRecord:
    """Everything about one submission. ``load_run`` fills the fields the job wrote into its folder.

    Attributes:
        submission_id: the Ray job's submission id (also the run folder's name).
        cluster: the cluster's name; ``cluster_record`` is its record (no token in it).
        recipe: the recipe's path inside its project; ``entrypoint`` the command Ray ran.
        runtime_env: the job's runtime_env with secret values as ``***``.
        project_dir: the recipe's project (the working_dir); ``git`` its commit and dirty state.
        start_time / end_time: UNIX times of the submission and of the end the submitter saw.
        status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED; ``message`` Ray's message.
        failure: a one-line class when the log makes it clear (out of memory, NCCL timeout,
            preflight, node lost, time limit); ``log_tail`` the last log lines of a failed run.
        output_dir: where the training wrote checkpoints; ``config`` its resolved config.json.
        packages: versions seen on the cluster; ``last_step`` and ``metrics`` the final summary.
        hf_model: the merged Hugging Face model; ``exports`` other merged steps by step.
        wandb: the W&B run (mode, dir, url or sync command); ``hub_url`` where it was uploaded.
    """

    submission_id: str
    cluster: str = ""
    recipe: str = ""
    entrypoint: str = ""
    runtime_env: dict = dataclasses.field(default_factory=dict)
    project_dir: str = ""
    git: dict = dataclasses.field(default_factory=dict)
    cluster_record: dict = dataclasses.field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    status: str = "PENDING"
    message: str = ""
    failure: str | None = None
    log_tail: str = ""
    host: str | None = None
    output_dir: str | None = None
    config: dict | None = None
    packages: dict | None = None
    last_step: int | None = None
    metrics: dict | None = None
    hf_model: str | None = None
    exports: dict = dataclasses.field(default_factory=dict)
    wandb: dict | None = None
    hub_url: str | None = None
    run_dir: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


_TIMES = ("start_time", "end_time")
_YEAR_9999 = 253_402_214_400  # the last UNIX time a date can show, less a day for time zones
_KIND_NAMES = {str: "a string", dict: "an object", float: "a number", int: "an integer", type(None): "null"}


def _type_problem(data: dict) -> str | None:
    """What is wrong-typed in a record's fields (a hand-edited or foreign ``run.json``), or None."""
    hints = typing.get_type_hints(RunRecord)
    for name, value in data.items():
        if name not in hints:
            continue
        kinds = typing.get_args(hints[name]) or (hints[name],)
        accepted = tuple(k for kind in kinds for k in ((int, float) if kind is float else (kind,)))
        if isinstance(value, bool) or not isinstance(value, accepted):
            expected = " or ".join(_KIND_NAMES[kind] for kind in kinds)
            return f'"{name}" is {_KIND_NAMES.get(type(value), "a " + type(value).__name__)}: {value!r:.40}, not {expected}'
        if name in _TIMES and value is not None and not 0 <= value < _YEAR_9999:  # NaN too
            return f'"{name}" is {value!r}, not a UNIX time'
    return None


def runs_root() -> Path:
    """``$BRIDGE_RAY_HOME/runs``."""
    return records.home_dir() / "runs"


def run_dir(submission_id: str) -> Path:
    """The run folder of ``submission_id`` (it may not exist yet)."""
    return runs_root() / submission_id


@contextlib.contextmanager
def _locked(folder: Path):
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def update_fields(folder: Path, fields: dict, defaults: dict | None = None,
                  unless: typing.Callable[[dict], bool] | None = None) -> dict | None:
    """Merge ``fields`` (and ``defaults`` where unset) into ``folder/run.json`` under a lock, atomically.

    Args:
        unless: a test of the record as it is under the lock: where it holds, nothing is written and
            None is returned (two processes that both saw a run unfinished: only the first records its end).

    Raises:
        HomeNotWritable: the run folder cannot be written.
    """
    records.writable_dir(folder)
    try:
        with _locked(folder):
            path = folder / "run.json"
            current = json.loads(path.read_text()) if path.exists() else {}
            if unless is not None and unless(current):
                return None
            data = {**(defaults or {}), **current, **fields}
            tmp = folder / f".run.json.{os.getpid()}"
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            os.replace(tmp, path)
    except OSError as err:
        raise records.home_error(folder / "run.json", err) from None
    return data


def _first(folders: list[Path], name: str) -> Path | None:
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _read_json(path: Path | None) -> dict | None:
    """A JSON object the job writes, or None when absent, half-written or not an object."""
    try:
        found = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _last_row(steps_file: Path | None) -> dict | None:
    lines = steps_file.read_text().splitlines() if steps_file else []
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:  # a line being written
        return None


def _last_verl_row(metrics_file: Path | None) -> dict | None:
    """The last step verl's file logger wrote (PPO/GRPO): where a stopped or killed run got to (a run
    that ends by itself puts its last step in the record)."""
    rows = step_rows(metrics_file) if metrics_file else []
    return rows[-1] if rows else None


def with_outputs(run: RunRecord) -> RunRecord:
    """``run`` with config, last step, metrics and W&B read from its folder (and output dir)."""
    folders = [Path(run.run_dir)] + ([Path(run.output_dir)] if run.output_dir else [])
    run.config = run.config or _read_json(_first(folders, "config.json"))
    metrics = _read_json(_first(folders, "metrics.json")) or {}
    history = metrics.get("history") if isinstance(metrics.get("history"), list) else []
    final = (metrics.get("final") or (history or [None])[-1] or _last_row(_first(folders, "steps.jsonl"))
             or (None if run.last_step is not None else _last_verl_row(_first(folders, METRICS_FILE))))
    if isinstance(final, dict) and final:
        run.metrics = {k: v for k, v in final.items() if isinstance(v, (int, float, str, type(None)))}
        run.last_step = final.get("step", run.last_step)
    run.wandb = tracking.find_run(run.run_dir) or run.wandb
    return run


def load_run(submission_id: str | None = None) -> RunRecord:
    """The record of one run (an exact id or a unique prefix; None for the latest), as it is on disk.

    ``bridge_ray.load_run(..., refresh=True)`` (``bridge_ray.jobs``) also asks the cluster about a
    run not yet seen ending.

    Args:
        submission_id: the run's submission id, or the start of it; None for the latest run.

    Raises:
        RunNotFound: with the command that lists the runs.

    Example:
        >>> run = bridge_ray.load_run("sft-gsm8k-20261125-1730")
        >>> run.status, run.last_step, run.hf_model
    """
    if submission_id is not None and not submission_id.strip():
        raise RunNotFound("an empty run id: give one that `bridge-ray runs` lists, or none for the latest run")
    if submission_id is None:
        latest = list_runs()
        if not latest:
            raise RunNotFound(f"no runs recorded in {runs_root()}: submit one with `bridge-ray submit RECIPE.py`")
        submission_id = latest[-1].submission_id
    folder = run_dir(submission_id)
    if "/" in submission_id or not (folder / "run.json").is_file():
        pattern = f"{glob.escape(submission_id)}*/run.json"
        matches = [] if "/" in submission_id else [p.parent for p in runs_root().glob(pattern)]
        if len(matches) > 1:
            shown = ", ".join(sorted(m.name for m in matches)[:5]) + (", ..." if len(matches) > 5 else "")
            raise RunNotFound(f"several runs start with {submission_id!r} in {runs_root()} ({shown}): give more of "
                              "the id")
        if not matches:
            raise RunNotFound(f"no run {submission_id!r} in {runs_root()}: list the runs with `bridge-ray runs`")
        folder = matches[0]
    return read_run(folder)


def find_run(submission_id: str) -> RunRecord | None:
    """The record of exactly ``submission_id`` as it is on disk, or None."""
    folder = run_dir(submission_id)
    return read_run(folder) if (folder / "run.json").is_file() else None


def read_run(folder: Path) -> RunRecord:
    """The record in a run folder, with what the job wrote beside it."""
    run = read_record(folder)
    run.run_dir = str(folder)
    return with_outputs(run)


def list_runs() -> list[RunRecord]:
    """Every recorded run, oldest first, as it is on disk (``unreadable_runs`` names those that cannot be read)."""
    return _scan_runs()[0]


def unreadable_runs() -> list[str]:
    """What is wrong with each run record that cannot be read, and how to fix it (``list_runs`` leaves them out)."""
    return _scan_runs()[1]


def _scan_runs() -> tuple[list[RunRecord], list[str]]:
    found, broken = [], []
    for path in sorted(runs_root().glob("*/run.json")):
        try:
            found.append(load_run(path.parent.name))
        except RunRecordBroken as err:  # one unreadable record never hides the others
            broken.append(str(err))
    return sorted(found, key=lambda run: run.start_time or 0), broken


def amend(run: RunRecord, **fields) -> RunRecord:
    """Add fields to a loaded run's record (export and upload record what they made)."""
    return RunRecord.from_dict(update_fields(Path(run.run_dir), fields))
