"""A submitted job on the recorded cluster: ``Job`` (follow, wait, stop), ``list_jobs``, and the runs it recorded
(``load_run``, ``list_runs``, ``refresh_run``, asking the cluster about those not seen ending).

Every call goes through ``ray.job_submission.JobSubmissionClient`` against the recorded cluster, so ``ray job list``
with the same address and token sees the same jobs. A head that stops answering on the way is asked again for
``health.UNRESPONSIVE_S``; only one certainly gone (``health.head_gone``) has its unfinished runs recorded lost
(``ClusterLost``), one that is only slow changes nothing (``ClusterUnresponsive``).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

from bridge_ray import runs
from bridge_ray.cluster import client as cluster_client
from bridge_ray.cluster import health, records
from bridge_ray.cluster.records import DEFAULT_CLUSTER, ClusterRecord
from bridge_ray.errors import BridgeRayError, ClusterLost, ConfigError, JobFailed, JobNotFound
from bridge_ray.jobs.follow import stream as stream_log

NO_AGENT = "No available agent to submit job"  # Ray's 500 while the head's job agent is not ready
NOT_REFRESHED = "status not refreshed: "  # a run's message when its cluster could not be asked


def client(record: ClusterRecord):
    """A JobSubmissionClient for the recorded cluster only, authenticated with its token."""
    return cluster_client.client(record)


def _lost(record: ClusterRecord, doing: str) -> BridgeRayError:
    """The error for a head that stopped answering while ``doing``. Only a head certainly gone (``health.head_gone``)
    has its unfinished runs recorded lost (and their secrets files removed); one that only timed out changes
    nothing: its jobs may still be running."""
    flag = records.name_flag(record.name)
    if not health.head_gone(record):
        return health.unresponsive_error(record, doing)
    cause = f"the head of cluster {record.name!r} at {record.dashboard_url} stopped answering"
    if record.backend == "slurm":  # say why, when SLURM knows: the time limit, a cancel, a node failure
        from bridge_ray.cluster import slurm as slurm_backend

        state = slurm_backend.job_state(record).split(":")[0]
        if slurm_backend.ended(state):
            cause += f" (its SLURM allocation {record.slurm.get('job_id')} ended: {state}" + (
                ", the time limit" if state == "TIMEOUT" else "") + ")"
    runs.mark_lost(record.name, cause)
    return ClusterLost(f"{cause} while {doing}; its unfinished runs are recorded FAILED ({runs.CLUSTER_LOST}): "
                       f"see `bridge-ray status{flag}`, then `bridge-ray down{flag}` and `bridge-ray up{flag}`")


def _connected(record: ClusterRecord, doing: str):
    """A client for ``record``; a head that does not answer (asked again for ``health.UNRESPONSIVE_S``) raises ``_lost``."""
    health.require_started(record)
    try:
        if not health.answers_soon(record):
            raise _lost(record, doing)
        return client(record)
    except ConnectionError:
        raise _lost(record, doing) from None


def api_call(record: ClusterRecord, doing: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the Jobs API; the head going away on the way becomes one ``_lost`` line."""
    import requests

    try:
        return fn(*args, **kwargs)
    except requests.exceptions.Timeout as err:  # the client's own limits (cluster.client): a paused or stuck head
        if health.gcs_refuses(record):
            raise _lost(record, doing) from None
        waited = (cluster_client.CONNECT_S if isinstance(err, requests.exceptions.ConnectTimeout)
                  else cluster_client.ANSWER_S)
        raise health.unresponsive_error(record, doing, waited) from None
    except (requests.exceptions.ConnectionError, ConnectionError) as err:
        if health.answers_soon(record):
            raise BridgeRayError(f"the Jobs API of cluster {record.name!r} failed while {doing}: {err}") from None
        raise _lost(record, doing) from None
    except RuntimeError as err:  # Ray's client: "Request failed with status code 500: ..."
        if "status code 5" not in str(err) or NO_AGENT in str(err):  # _send asks again for the latter
            raise
        if health.gcs_refuses(record):  # the dashboard outlives its GCS by up to 60 s, answering 500s
            raise _lost(record, doing) from None
        raise BridgeRayError(f"the Jobs API of cluster {record.name!r} failed while {doing}: "
                             f"{runs.first_line(str(err))}") from None


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
        self._connection = None

    def __repr__(self) -> str:
        return f"Job({self.submission_id!r}, cluster={self.cluster!r})"

    def _session(self, doing: str):
        """The cluster's record and one Jobs API client, made on first use and kept: polling costs
        one request a poll, not a record read, a health probe and a new client each time. A head
        that stops answering later is caught where each call is made (``api_call``)."""
        if self._connection is None:
            record = records.load(self.cluster)
            self._connection = (record, _connected(record, doing))
        return self._connection

    def info(self):
        """Ray's JobDetails for this job. Raises JobNotFound for an unknown id."""
        record, c = self._session(f"asking about job {self.submission_id}")
        try:
            return api_call(record, f"asking about job {self.submission_id}", c.get_job_info, self.submission_id)
        except RuntimeError as err:
            if "does not exist" in str(err) or "404" in str(err):
                raise JobNotFound(
                    f"no job {self.submission_id!r} on cluster {self.cluster!r}: "
                    f"list the jobs with `bridge-ray list{records.name_flag(self.cluster)}`"
                ) from None
            raise

    def status(self) -> str:
        """The job's status name: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED (an end is recorded as seen)."""
        info = self.info()
        self.seen(info)
        return str(info.status.value)

    def logs(self) -> str:
        """All of the job's driver log so far (an end is recorded as seen)."""
        info = self.info()
        text = self._log_text()
        self.seen(info, text)
        return text

    def _log_text(self) -> str:
        record, c = self._session(f"reading the log of job {self.submission_id}")
        return api_call(record, f"reading the log of job {self.submission_id}", c.get_job_logs, self.submission_id)

    def seen(self, info, logs: str | None = None) -> None:
        """``info`` (its JobDetails) shows the job ended and its run record does not say so yet: record the end,
        which also removes the job's secrets file (README: "when the job is seen ending")."""
        if str(info.status.value) not in runs.TERMINAL:
            return
        try:
            run = runs.find_run(self.submission_id)
        except BridgeRayError:  # an unreadable record: `runs` names it
            return
        if run is not None and run.status not in runs.TERMINAL:
            self.record_end(info, logs)

    def follow(self, write: Callable[[str], None] = print) -> str:
        """Stream the log to ``write`` until the job ends; return the final status.

        Raises:
            JobFailed: the job ended FAILED or STOPPED (its log was just streamed, so no tail).
            ClusterLost: the head went away while following; the run is recorded as lost.
            KeyboardInterrupt: Ctrl-C; the job keeps running.
        """
        self.info()
        record, c = self._session(f"following job {self.submission_id}")
        import aiohttp


        try:
            if not asyncio.run(stream_log(c, record, self.submission_id, write)):
                return self._ended_without_cluster(record)
        except (OSError, RuntimeError, aiohttp.ClientError, asyncio.TimeoutError) as err:
            # Ray's client raises RuntimeError when the log's WebSocket closes abnormally.
            if health.is_alive(record):
                raise BridgeRayError(f"lost the log stream of job {self.submission_id} ({err}): reattach with "
                                     f"`bridge-ray logs {self.submission_id}{records.name_flag(self.cluster)} --follow`") from None
            return self._ended_without_cluster(record)
        try:
            return self.wait(streamed=True)
        except ClusterLost:
            return self._ended_without_cluster(record)

    def _ended_without_cluster(self, record: ClusterRecord) -> str:
        """The head went away while following: the end the run record holds (raised unless SUCCEEDED), else the loss."""
        run = runs.find_run(self.submission_id)
        if run is not None and run.status in runs.TERMINAL and run.failure != runs.CLUSTER_LOST:
            if run.status == "SUCCEEDED":
                return run.status
            raise JobFailed(self.submission_id, run.status, run.message) from None
        lost = _lost(record, f"following job {self.submission_id}")
        lost.exit_code = 1  # the job is gone with its cluster
        raise lost from None

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.2, streamed: bool = False) -> str:
        """Block until the job ends; return SUCCEEDED or raise JobFailed with the last log lines.

        Args:
            timeout_s: give up after this long and return the current status.
            poll_s: seconds between polls.
            streamed: the caller already showed the log: JobFailed then carries no tail.
        """
        info = self._polled(timeout_s, poll_s)
        state = str(info.status.value)
        if state not in runs.TERMINAL:
            return state
        logs = self._log_text()
        run = self.record_end(info, logs)
        if state != "SUCCEEDED":
            tail = "" if streamed else "\n".join(logs.rstrip().splitlines()[-runs.LOG_TAIL_LINES:])
            error = runs.job_error(logs)
            message = run.message if run else (error or runs.first_line(info.message or ""))
            if streamed and message == error:  # its cause was just shown: say how it ended
                message = runs.first_line(info.message or "")
            failed = JobFailed(self.submission_id, state, message, log_tail=tail)
            if info.driver_exit_code == ConfigError.exit_code:  # its driver rejected the input: as at submit
                failed.exit_code = ConfigError.exit_code
            raise failed
        return state

    def record_end(self, info, logs: str | None = None) -> "runs.RunRecord | None":
        """Write the ended job's outcome (``info``: its JobDetails; ``logs``: its log, read here when
        None and needed) into its run record: the one end-of-run path, for ``wait`` and for a
        refresh of a run nobody saw ending."""
        state = str(info.status.value)
        if logs is None:
            logs = self._log_text()
        return runs.finish_run(self.submission_id, state, info.message or "", logs,
                               end_time=info.end_time / 1000 if info.end_time else None)

    def stop(self) -> bool:
        """Ask Ray to stop the job; True if it was still running."""
        self.info()
        record, c = self._session(f"stopping job {self.submission_id}")
        return api_call(record, f"stopping job {self.submission_id}", c.stop_job, self.submission_id)

    def stopped(self, timeout_s: float, poll_s: float = 0.2) -> str:
        """After ``stop``: wait up to ``timeout_s`` for the job to end; record its end and return its
        state (STOPPED, or how it ended first), or the state it is still in."""
        info = self._polled(timeout_s, poll_s)
        if str(info.status.value) in runs.TERMINAL:
            self.record_end(info)
        return str(info.status.value)

    def _polled(self, timeout_s: float | None, poll_s: float):
        """The job's details once it has ended, or as they are after ``timeout_s`` (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.info()
            if str(info.status.value) in runs.TERMINAL or (deadline is not None and time.monotonic() > deadline):
                return info
            time.sleep(poll_s)


def refresh_run(run: runs.RunRecord) -> runs.RunRecord:
    """Ask the cluster about a run not seen ending; record its end if it has ended."""
    try:
        job = Job(run.submission_id, run.cluster)
        info = job.info()
        state = str(info.status.value)
        if state in runs.TERMINAL:
            return job.record_end(info)
        run.status = state
    except ClusterLost:  # its runs were just recorded as lost
        return runs.read_run(Path(run.run_dir))
    except BridgeRayError as err:
        run.message = f"{NOT_REFRESHED}{err}"
    return run


def load_run(submission_id: str | None = None, refresh: bool = False) -> runs.RunRecord:
    """The record of one run (an exact id or a unique prefix; None for the latest).

    Args:
        submission_id: the run's submission id, or the start of it; None for the latest run.
        refresh: ask the cluster for the status of a run not yet seen ending.

    Raises:
        RunNotFound: with the command that lists the runs.

    Example:
        >>> run = bridge_ray.load_run("sft-gsm8k-20261125-1730")
        >>> run.status, run.last_step, run.hf_model
    """
    if submission_id is not None and not isinstance(submission_id, str):
        raise ConfigError(f"submission_id={submission_id!r} is not a run id: give the id (or its start) as a string, "
                          "or None for the latest run")
    run = runs.load_run(submission_id)
    return refresh_run(run) if refresh and run.status not in runs.TERMINAL else run


def list_runs(refresh: bool = False) -> list[runs.RunRecord]:
    """Every recorded run, oldest first; ``refresh`` asks the clusters about those not seen ending (a cluster that
    could not be asked once is not asked again for its other runs: one unresponsive head costs one wait)."""
    listed, not_asked = [], {}
    for run in runs.list_runs():
        if refresh and run.status not in runs.TERMINAL:
            if run.cluster in not_asked:
                run.message = not_asked[run.cluster]
            else:
                run = refresh_run(run)
                if (run.message or "").startswith(NOT_REFRESHED):
                    not_asked[run.cluster] = run.message
        listed.append(run)
    return listed


def list_jobs(cluster: str = DEFAULT_CLUSTER) -> list:
    """Ray's JobDetails for every job on the cluster, oldest first."""
    record = records.load(cluster)
    c = _connected(record, "listing its jobs")
    jobs = api_call(record, "listing its jobs", c.list_jobs)
    for job in jobs:
        if job.submission_id:
            Job(job.submission_id, cluster).seen(job)
    return sorted(jobs, key=lambda j: j.start_time or 0)
