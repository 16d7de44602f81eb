"""Jobs through one Ray Job Submission client: submit, follow, stop, list.

Every call goes through ``ray.job_submission.JobSubmissionClient`` against the
recorded cluster, so ``ray job list`` with the same address and token sees the
same jobs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shlex
import time
from pathlib import Path
from typing import Callable

from bridge_ray import records, runs, runtime_env
from bridge_ray.cluster import health
from bridge_ray.cluster.auth import auth_headers
from bridge_ray.errors import JobFailed, JobNotFound, RecipeError
from bridge_ray.records import DEFAULT_CLUSTER, ClusterRecord

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOG_TAIL_LINES = 20


def client(record: ClusterRecord):
    """A JobSubmissionClient for the recorded cluster, authenticated with its token."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(record.dashboard_url, headers=auth_headers(record))


@dataclasses.dataclass
class SubmitPlan:
    """Everything ``submit`` would send; ``--dry-run`` prints it (secrets redacted)."""

    cluster: str
    submission_id: str
    entrypoint: str
    runtime_env: dict
    metadata: dict

    def shown(self) -> dict:
        return {"cluster": self.cluster, "submission_id": self.submission_id, "entrypoint": self.entrypoint,
                "runtime_env": runtime_env.redact(self.runtime_env), "metadata": self.metadata}


class Job:
    """A handle on one submitted job.

    Example:
        >>> job = bridge_ray.submit("recipes/hello_cluster.py")
        >>> job.wait()          # raises JobFailed with the last log lines on failure
        'SUCCEEDED'
    """

    def __init__(self, submission_id: str, cluster: str = DEFAULT_CLUSTER):
        self.submission_id = submission_id
        self.cluster = cluster

    def __repr__(self) -> str:
        return f"Job({self.submission_id!r}, cluster={self.cluster!r})"

    def _client(self):
        record = records.load(self.cluster)
        health.check_alive(record)
        return client(record)

    def info(self):
        """Ray's JobDetails for this job. Raises JobNotFound for an unknown id."""
        c = self._client()
        try:
            return c.get_job_info(self.submission_id)
        except RuntimeError as err:
            if "does not exist" in str(err) or "404" in str(err):
                raise JobNotFound(
                    f"no job {self.submission_id!r} on cluster {self.cluster!r}: "
                    f"list the jobs with `bridge-ray list{_name_flag(self.cluster)}`"
                ) from None
            raise

    def status(self) -> str:
        """The job's status name: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return str(self.info().status.value)

    def logs(self) -> str:
        """All of the job's driver log so far."""
        self.info()
        return self._client().get_job_logs(self.submission_id)

    def follow(self, write: Callable[[str], None] = print) -> str:
        """Stream the log to ``write`` until the job ends; return the final status."""
        self.info()
        c = self._client()

        async def stream():
            async for chunk in c.tail_job_logs(self.submission_id):
                write(chunk.rstrip("\n"))

        asyncio.run(stream())
        return self.wait(timeout_s=30)

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2) -> str:
        """Block until the job ends; return SUCCEEDED or raise JobFailed with the last log lines."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info()
            state = str(info.status.value)
            if state in TERMINAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                return state
            time.sleep(poll_s)
        logs = self.logs() if state != "SUCCEEDED" else ""
        runs.finish_run(self.submission_id, state, info.message or "", logs,
                        end_time=info.end_time / 1000 if info.end_time else None)
        if state != "SUCCEEDED":
            tail = "\n".join(logs.rstrip().splitlines()[-LOG_TAIL_LINES:])
            raise JobFailed(self.submission_id, state, info.message or "", log_tail=tail)
        return state

    def stop(self) -> bool:
        """Ask Ray to stop the job; True if it was still running."""
        self.info()
        return self._client().stop_job(self.submission_id)


def _name_flag(cluster: str) -> str:
    return "" if cluster == DEFAULT_CLUSTER else f" --name {cluster}"


def check_recipe(recipe: str | Path) -> Path:
    """Resolve the recipe path, or raise RecipeError saying what is wrong."""
    path = Path(recipe)
    if not path.exists():
        raise RecipeError(f"recipe {recipe} does not exist: pass the path of a .py file, e.g. recipes/hello_cluster.py")
    if path.is_dir() or path.suffix != ".py":
        raise RecipeError(f"recipe {recipe} is not a Python file: pass a .py file, e.g. recipes/hello_cluster.py")
    return path.resolve()


def plan(recipe: str | Path, args: list[str] | tuple[str, ...] = (), *, cluster: str = DEFAULT_CLUSTER,
         env: dict[str, str] | None = None, excludes: tuple[str, ...] = (),
         submission_id: str | None = None) -> SubmitPlan:
    """Build what ``submit`` sends, checking the recipe, the cluster record and the upload size."""
    from bridge_ray.network.profile import profile_env

    path = check_recipe(recipe)
    record = records.load(cluster)
    env_block = runtime_env.build(path, env or {}, profile_env(cluster), excludes)
    rel = path.relative_to(env_block["working_dir"])
    entrypoint = shlex.join([record.python, str(rel), *args])
    submission_id = submission_id or f"{path.stem.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    env_block["env_vars"] = {**runs.job_env(submission_id, env_block["env_vars"]), **env_block["env_vars"]}
    metadata = {"bridge_ray": "1", "recipe": str(rel), "cluster": cluster}
    return SubmitPlan(cluster, submission_id, entrypoint, env_block, metadata)


def submit(recipe: str | Path, args: list[str] | tuple[str, ...] = (), *, cluster: str = DEFAULT_CLUSTER,
           env: dict[str, str] | None = None, excludes: tuple[str, ...] = (),
           submission_id: str | None = None) -> Job:
    """Submit a recipe as a Ray job on the recorded cluster.

    Args:
        recipe: path of a recipe ``.py`` file; its project dir becomes the working_dir.
        args: arguments for the recipe (e.g. dotted overrides ``sft.lr=1e-5``).
        cluster: the cluster's name.
        env: extra env vars for the job (win over everything else).
        excludes: more working_dir exclude patterns.
        submission_id: the job id to use (default ``<recipe>-<time>-<hex>``).

    Returns:
        A Job handle.

    Raises:
        RecipeError, ClusterNotFound, ClusterStale, AuthError, WorkingDirTooLarge: nothing submitted.

    Example:
        >>> job = bridge_ray.submit("recipes/sft_gsm8k.py", ["sft.optim.lr=1e-4"])
        >>> job.follow()
    """
    p = plan(recipe, args, cluster=cluster, env=env, excludes=excludes, submission_id=submission_id)
    record = records.load(cluster)
    health.check_alive(record)
    client(record).submit_job(entrypoint=p.entrypoint, submission_id=p.submission_id,
                              runtime_env=p.runtime_env, metadata=p.metadata)
    runs.start_run(p, record)
    return Job(p.submission_id, cluster)


def list_jobs(cluster: str = DEFAULT_CLUSTER) -> list:
    """Ray's JobDetails for every job on the cluster, oldest first."""
    record = records.load(cluster)
    health.check_alive(record)
    jobs = client(record).list_jobs()
    return sorted(jobs, key=lambda j: j.start_time or 0)
