"""Run records: one folder per submission telling everything about the run.

``$BRIDGE_RAY_HOME/runs/<submission_id>/`` lives on the shared home, so the job writes into it
from whichever node it runs on::

    run.json        the record (``RunRecord``): entrypoint, runtime_env (secrets redacted), git
                    commit, cluster record, times, status, last log lines and failure class,
                    output dir, packages, merged model, W&B run, Hub URL
    git.diff        ``git diff HEAD`` of the recipe's project, when it had uncommitted changes
    packages.json   versions seen on the cluster (written by the job, ``record_job``)
    config.json     the resolved config, and metrics.json (copied from the output dir at the end)
    wandb/          W&B's files (the job's ``WANDB_DIR``)

The submitter writes the record at submit time (``start_run``) and when it sees the job end
(``finish_run``); the job adds its own fields (``record_job``, ``update_run``) through
``BRIDGE_RAY_RUN_DIR``, every workload by the same calls: ``lifecycle`` (start, metrics, merged
model, upload). Every write is a locked read-modify-write, so neither loses the other's.
No secret value is ever written here: runtime_env values are redacted and log lines and diffs are
scrubbed of the secret values the submitter knows.

The record itself, its locked update and reading it back are ``record`` (re-exported here); what
is read back from a run's files sits beside it: ``curves`` (its loss, reward and throughput per
step, the figures that matter, a plot).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

from bridge_ray.cluster import records
from bridge_ray.errors import RunRecordBroken
from bridge_ray.jobs import credentials, runtime_env, tracking
from bridge_ray.jobs.runtime_env import SubmitPlan
from bridge_ray.runs.record import (  # noqa: F401 - the reading side, re-exported: runs.load_run, runs.RunRecord, ...
    CLUSTER_LOST, TERMINAL, RunRecord, amend, find_run, has_ended, list_runs, load_run, read_record, read_run, run_dir,
    runs_root, unreadable_runs, update_fields, with_outputs)

RUN_DIR_ENV = "BRIDGE_RAY_RUN_DIR"
JOB_LOG = "job.log"  # the job's whole log, written when its end is recorded
# Written by the job's driver itself (``jobs.launch.drive``), so that its end and log outlive the cluster: a job
# that ended while nobody looked, on a head that died before anyone did (an allocation ended, a killed head).
DRIVER_LOG, DRIVER_END = "driver.log", "driver_end.json"
LOG_TAIL_LINES = 20
PACKAGES = ("torch", "ray", "verl", "transformers", "vllm", "bridge-ray", "wandb", "huggingface_hub")
COPIED_FILES = ("config.json", "metrics.json")
FAILURES = (  # (class, pattern): the first that matches the log names the failure
    ("preflight", r"PreflightError|preflight (check )?failed"),
    ("out of memory", r"OutOfMemoryError|CUDA out of memory|out of memory|oom-kill|OOM killer|MemoryError"),
    ("NCCL timeout", r"Watchdog caught collective operation timeout|NCCL.{0,80}[Tt]imeout|[Tt]imeout.{0,80}NCCL"),
    ("node lost", r"NodeDiedError|node .{0,60}(died|was terminated|is dead|marked dead)|RayletDiedError|"
                  r"ActorDiedError.{0,200}node"),
    ("time limit", r"DUE TO TIME LIMIT|TIME LIMIT|time limit reached|wall ?time limit"),
)


def job_env(submission_id: str, env_vars: dict[str, str]) -> dict[str, str]:
    """Env vars every job gets so it can write into its run folder (the caller's own values win)."""
    folder = run_dir(submission_id)
    return {RUN_DIR_ENV: str(folder), **tracking.job_env(folder, env_vars)}


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def known_secrets(env: dict[str, str] | None = None) -> list[str]:
    """The values of secret-looking variables in ``env`` and in this process's environment."""
    merged = {**os.environ, **(env or {})}
    return [value for key, value in merged.items() if runtime_env.is_secret(key) and value]


def _git(project: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def git_state(project: Path, folder: Path, secrets: list[str]) -> dict:
    """Commit and dirty state of ``project``; its ``git diff HEAD`` goes to ``folder/git.diff``."""
    if _git(project, "rev-parse", "--is-inside-work-tree") is None:
        return {"repo": False}
    commit = (_git(project, "rev-parse", "HEAD") or "").strip() or None
    changed = (_git(project, "status", "--porcelain", "--", ".") or "").splitlines()
    diff = (_git(project, "diff", "HEAD", "--", ".") or "") if commit else ""
    state = {"repo": True, "commit": commit, "dirty": bool(changed), "changed": changed[:200], "diff_file": None}
    if diff:
        (folder / "git.diff").write_text(scrub(diff, secrets))
        state["diff_file"] = "git.diff"
    return state


def start_run(plan: SubmitPlan, record: records.ClusterRecord) -> Path:
    """Write the run record of a submission about to be sent; return its folder.

    Written before the job is submitted, so a home that cannot take it stops the submission
    instead of hiding a job that already runs.

    Args:
        plan: what will be submitted.
        record: the cluster it goes to.

    Raises:
        HomeNotWritable: the run folder cannot be written (nothing was submitted).
    """
    folder = records.writable_dir(run_dir(plan.submission_id))
    secrets = known_secrets({**plan.runtime_env.get("env_vars", {}), **plan.secrets})
    project = Path(plan.runtime_env["working_dir"])
    run = RunRecord(
        submission_id=plan.submission_id, cluster=plan.cluster, recipe=plan.metadata.get("recipe", ""),
        entrypoint=scrub(plan.entrypoint, secrets), runtime_env=runtime_env.redact(plan.runtime_env),
        project_dir=str(project), git=git_state(project, folder, secrets),
        cluster_record=dataclasses.asdict(record), start_time=time.time(), run_dir=str(folder))
    fields = {k: v for k, v in dataclasses.asdict(run).items() if v is not None}
    # A fast job may already have written RUNNING (or more) through record_job: keep its status.
    update_fields(folder, fields, defaults={"status": fields.pop("status")})
    return folder


def forget_run(submission_id: str) -> None:
    """Remove the record of a submission that never reached the cluster."""
    shutil.rmtree(run_dir(submission_id), ignore_errors=True)


def classify_failure(logs: str) -> str | None:
    """The failure's class when the log makes it clear, else None."""
    for name, pattern in FAILURES:
        if re.search(pattern, logs):
            return name
    return None


def job_error(logs: str) -> str:
    """The cause a job's driver printed as its last ``error: ...`` line when bridge-ray stopped it
    (``bridge_ray.jobs.launch``), or ''. Only the log's last lines count: that line ends the job."""
    for line in reversed(logs.rstrip().splitlines()[-20:]):
        if line.startswith("error: "):
            return line[len("error: "):].strip()
    return ""


def first_line(message: str) -> str:
    """The first line of Ray's message about a job (Ray appends up to 20,000 characters of log to it)."""
    return re.sub(r",? last available logs.*$", "", (message.strip().splitlines() or [""])[0])


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def finish_run(submission_id: str, status: str, message: str = "", logs: str = "",
               end_time: float | None = None) -> RunRecord | None:
    """Record the end of a run (safe to call again; the first end is kept). None if it has no record.

    Args:
        submission_id: the job.
        status: its terminal status.
        message: Ray's message for it.
        logs: the job's whole log: kept in the run folder (``job.log``, secrets scrubbed); a failed
            run's record also keeps its last lines and a failure class.
        end_time: when it ended (UNIX seconds; default now).
    """
    folder = run_dir(submission_id)
    if not (folder / "run.json").exists():
        return None
    try:
        current = read_record(folder)
    except RunRecordBroken:
        return None
    credentials.remove(current.cluster, submission_id)
    if has_ended(dataclasses.asdict(current)):
        return read_run(folder)
    secrets = known_secrets()
    lines = logs.rstrip().splitlines()
    message = (status == "FAILED" and job_error(logs)) or first_line(message)
    fields = {"status": status, "message": scrub(message, secrets), "end_time": end_time or time.time(),
              "failure": classify_failure("\n".join(lines[-500:])) if status != "SUCCEEDED" else None,
              "log_tail": scrub("\n".join(lines[-LOG_TAIL_LINES:]), secrets) if status != "SUCCEEDED" else ""}
    if logs:
        _write_private(folder / JOB_LOG, scrub(logs, secrets))
    _copy_outputs(folder, current.output_dir)
    run = with_outputs(RunRecord.from_dict({**dataclasses.asdict(current), **fields}))
    fields.update(last_step=run.last_step, metrics=run.metrics, wandb=run.wandb)
    # Another process (a follower, `down --force`) may have recorded the end since the read above: its stays.
    update_fields(folder, fields, unless=has_ended)
    return read_run(folder)


def mark_lost(cluster: str, cause: str) -> list[str]:
    """Record every unfinished run of ``cluster`` as FAILED because the cluster went away; return their ids.

    Args:
        cluster: the cluster's name.
        cause: what happened, e.g. "the head of cluster 'x' at URL stopped answering".
    """
    lost = []
    for path in sorted(runs_root().glob("*/run.json")):
        try:
            run = read_record(path.parent)
        except RunRecordBroken:
            continue
        if run.cluster != cluster or run.status in TERMINAL:
            continue
        logs = _read_text(path.parent / DRIVER_LOG)
        ended = _driver_end(path.parent)
        if ended is not None:  # it ended before its cluster went: its own record of that end wins
            code = ended["exit_code"]
            finish_run(run.submission_id, "SUCCEEDED" if code == 0 else "FAILED",
                       f"ended with exit code {code} before its cluster went ({cause})", logs, ended["ended_at"])
            continue
        credentials.remove(cluster, run.submission_id)
        if logs:  # what the driver printed before the cluster went
            _write_private(path.parent / JOB_LOG, scrub(logs, known_secrets()))
        if update_fields(path.parent, {"status": "FAILED", "failure": CLUSTER_LOST, "message": cause,
                                       "end_time": time.time()}, unless=lambda data: data.get("status") in TERMINAL):
            lost.append(run.submission_id)
    return lost


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _driver_end(folder: Path) -> dict | None:
    """What the job's driver wrote when it ended (``record_driver_end``), or None."""
    try:
        ended = json.loads((folder / DRIVER_END).read_text())
    except (OSError, ValueError):
        return None
    valid = isinstance(ended, dict) and isinstance(ended.get("exit_code"), int) and isinstance(
        ended.get("ended_at"), (int, float))
    return ended if valid else None


def record_driver_end(exit_code: int) -> None:
    """In a job's driver: write its exit code and time into its run folder (``RUN_DIR_ENV``), for ``mark_lost``."""
    folder = os.environ.get(RUN_DIR_ENV)
    if folder and Path(folder).is_dir():
        try:
            _write_private(Path(folder) / DRIVER_END, json.dumps({"exit_code": exit_code, "ended_at": time.time()}))
        except OSError:
            pass  # a run folder the driver cannot write: the cluster's own record of the end is all there is


def record_stopped(submission_id: str, message: str) -> None:
    """Record a run as STOPPED with ``message`` (who stopped it: ``down --force``); no-op without a record.

    A follower of the job (``logs --follow``, ``submit --follow``) may have recorded the end first,
    with Ray's own words ("Job was intentionally stopped."): the message then says who stopped it.
    """
    folder = run_dir(submission_id)
    if not (folder / "run.json").exists():
        return
    run = finish_run(submission_id, "STOPPED", message)
    if run is not None and run.status == "STOPPED" and run.message != message:
        update_fields(folder, {"message": message})


def _copy_outputs(folder: Path, output_dir: str | None) -> None:
    """Snapshot the output dir's config/metrics: a later run may reuse (and overwrite) that dir."""
    if not output_dir or Path(output_dir).resolve() == folder.resolve():
        return
    for name in COPIED_FILES:
        source = Path(output_dir) / name
        if source.is_file():
            shutil.copyfile(source, folder / name)


# Inside the job ---------------------------------------------------------------------------------

def current_run_dir() -> Path | None:
    """The run folder of the job this process belongs to (``BRIDGE_RAY_RUN_DIR``), or None."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def update_run(**fields) -> RunRecord | None:
    """Inside a job: add fields (``hf_model=...``, ``output_dir=...``) to its record; no-op outside one.

    Raises:
        TypeError: for a name that is not a ``RunRecord`` field.
    """
    folder = current_run_dir()
    if folder is None:
        return None
    unknown = set(fields) - {f.name for f in dataclasses.fields(RunRecord)}
    if unknown:
        raise TypeError(f"update_run() got fields RunRecord does not have: {sorted(unknown)}")
    return RunRecord.from_dict(update_fields(folder, fields))


def packages() -> dict[str, str | None]:
    """Python and package versions in this process's environment (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def record_job(output_dir: str | Path | None = None, loggers: tuple[str, ...] = (), **fields) -> Path | None:
    """Inside a job, at the start of training: record the host, the package versions, the output dir.

    Prints where W&B writes (and the ``wandb sync`` command when offline) if ``"wandb"`` is in
    ``loggers``. A no-op outside a bridge-ray job.

    Returns:
        The run folder, or None outside a bridge-ray job.

    A workload calls it through ``lifecycle.start``.
    """
    folder = current_run_dir()
    if folder is None:
        return None
    versions = packages()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "packages.json").write_text(json.dumps(versions, indent=2))
    if output_dir:
        fields["output_dir"] = str(output_dir)
    update_run(host=socket.gethostname(), packages=versions, status="RUNNING", **fields)
    if "wandb" in loggers:
        print(tracking.announce(), flush=True)
    return folder
