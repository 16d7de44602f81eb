"""Cluster lifecycle: ``up``, ``down``, ``status`` over swappable backends.

Backends: ``local`` (a Ray head on this machine, the default), ``slurm`` (one
bootstrap allocation) and ``address`` (an existing cluster registered by URL).
Everything above this layer only sees a :class:`~bridge_ray.cluster.records.ClusterRecord`.

Beside the backends (``local``, ``slurm`` with ``slurm_node``, ``processes``, ``auth``, ``health``,
``client``): ``records`` (where each cluster lives), and what a job sees of its cluster from the
inside: ``driver`` (attach to it), ``walltime`` (when its allocation ends), ``report`` (its nodes).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import time
import urllib.parse
from pathlib import Path

from bridge_ray import runs
from bridge_ray.cluster import auth, records
from bridge_ray.cluster import health, local
from bridge_ray.cluster.records import DEFAULT_CLUSTER, ClusterRecord
from bridge_ray.errors import AuthError, ClusterExists, ClusterRecordBroken, ConfigError, Interrupted, JobsRunning
from bridge_ray.jobs import credentials

ACTIVE_JOB_STATES = ("PENDING", "RUNNING")
STOP_WAIT_S = 60.0


@dataclasses.dataclass
class ClusterStatus:
    """What ``bridge-ray status`` shows.

    Attributes:
        record: the cluster's record.
        alive: whether the head answered.
        nodes: one dict per node (``node_ip``, ``state``, ``is_head_node``, ``resources_total``).
        usage: resource name -> (used, total), e.g. ``{"CPU": (1.0, 2.0)}``.
        jobs: one dict per job (``submission_id``, ``status``, ``entrypoint``).
        slurm_state: the allocation's SLURM state (slurm backend only).
        gone: the head is certainly gone (``health.head_gone``, or the allocation ended), not only slow to answer.
    """

    record: ClusterRecord
    alive: bool
    nodes: list[dict] = dataclasses.field(default_factory=list)
    usage: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    jobs: list[dict] = dataclasses.field(default_factory=list)
    slurm_state: str | None = None
    gone: bool = False  # certainly gone (nothing listens, or the allocation ended), not only slow to answer

    @property
    def pending(self) -> bool:
        """The SLURM allocation is still waiting to start (not a dead head)."""
        return (self.slurm_state or "").startswith(("PENDING", "CONFIGURING"))


def up(name: str = DEFAULT_CLUSTER, *, address: str | None = None, token_file: str | None = None,
       python: str = "python", num_cpus: int | None = None, num_gpus: int | None = None,
       ports: dict[str, int | None] | None = None, slurm: dict | None = None) -> ClusterRecord:
    """Start (or register) a cluster and record it under ``name``.

    A start that fails or is interrupted (Ctrl-C, SIGTERM) stops what it started and leaves no
    record, token or empty folder behind (a SLURM allocation kept pending stays recorded).

    Args:
        name: the cluster's name; several clusters may live side by side.
        address: register an existing cluster's Jobs API URL instead of starting one.
        token_file: that existing cluster's Ray auth token file (with ``address``).
        python: the interpreter job drivers run with on that existing cluster (with ``address``).
        num_cpus: CPUs the local head offers (default: all).
        num_gpus: GPUs the local head offers (default: all).
        ports: Ray port flags to pin, e.g. ``{"dashboard-port": 8265}``; others are free ports.
        slurm: SLURM options (``nodes``, ``partition``, ...) to start the cluster in one allocation.

    Returns:
        The saved cluster record.

    Raises:
        ClusterExists: a live cluster already has this name.
        ConfigError: ``address`` is no Jobs API URL, or nothing answers there.
        PortInUse: a requested port is taken.
        Interrupted: Ctrl-C or SIGTERM arrived while the cluster was starting (all of it was stopped).

    Example:
        >>> record = bridge_ray.up()            # local Ray head, token auth, loopback only
        >>> bridge_ray.down()
    """
    records.check_name(name)
    bad = [f"{key}={value!r} must be a whole number >= 0 (or None: all of this machine's)"
           for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus))
           if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0)]
    if bad:
        raise ConfigError(bad)
    if address:  # nothing starts: a refused address leaves the home untouched
        _clear_stale(name)
        record = _register(name, address, token_file, python)
        records.save(record)
        return record
    with records.starting(name):
        return _start(name, num_cpus, num_gpus, ports, slurm)


def _start(name: str, num_cpus: int | None, num_gpus: int | None, ports: dict[str, int | None] | None,
           slurm: dict | None) -> ClusterRecord:
    _clear_stale(name)
    created, record = not records.cluster_dir(name).exists(), None
    try:
        with local.handling_signals(_raise_interrupt, signal.SIGTERM):
            if slurm is not None:
                from bridge_ray.cluster import slurm as slurm_backend

                record = slurm_backend.start(name, **slurm)
            else:
                record = local.start(name, num_cpus=num_cpus, num_gpus=num_gpus, ports=ports)
            records.save(record)
    except BaseException as err:
        with local.handling_signals(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut it short
            _abandon(name, record, everything=created and isinstance(err, KeyboardInterrupt))
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(f"interrupted: stopped what `bridge-ray up{records.name_flag(name)}` had started; "
                              f"nothing of cluster {name!r} is left") from None
        raise
    return record


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _abandon(name: str, record: ClusterRecord | None, everything: bool) -> None:
    """Undo an ``up`` that did not finish: stop a started but unrecorded cluster, drop its token and
    secrets, and its folder when empty, or when ``everything`` (an interrupted ``up`` that made it).

    A backend that raises has stopped what it started itself (``local.start``, ``slurm.start``). A record
    on disk stays: a SLURM allocation kept pending (``--keep-pending``) is recorded on purpose.
    """
    if records.record_path(name).exists():
        return
    if record is not None:
        _stop(record)
    if not records.cluster_dir(name).is_dir():  # nothing was made (a home that cannot be written)
        return
    _forget(name)
    if everything:
        shutil.rmtree(records.cluster_dir(name), ignore_errors=True)


def _clear_stale(name: str) -> None:
    if not records.record_path(name).exists():
        return
    record = records.load(name)
    if record.backend == "slurm" and not record.dashboard_url:
        _refuse_queued(record)
    up = ClusterExists(f"cluster {name!r} is already up at {record.dashboard_url}: use it, pick another --name, "
                       f"or stop it with `bridge-ray down{'' if name == DEFAULT_CLUSTER else ' --name ' + name}`")
    if _alive_or_auth_error(record):
        raise up
    gone = _gone(record)
    if not gone and health.answers_soon(record):
        raise up
    if not gone:  # a busy or paused head: starting over would kill it and its jobs
        raise ClusterExists(f"cluster {name!r} is recorded and its head at {record.dashboard_url} did not answer for "
                            f"{health.UNRESPONSIVE_S:.0f} s, but is not gone (busy or paused?): try again, or take it "
                            f"down first with `bridge-ray down{records.name_flag(name)} --force`")
    runs.mark_lost(name, f"the head of cluster {name!r} at {record.dashboard_url} was found dead by `bridge-ray up`")
    _stop(record)
    _forget(name)


def _refuse_queued(record: ClusterRecord) -> None:
    """A SLURM allocation kept queued (``up --slurm --keep-pending``) is the cluster still to come: a second ``up``
    cancelled it and queued another at the back of the queue, without a word."""
    from bridge_ray.cluster import slurm as slurm_backend

    state = slurm_backend.job_state(record)
    if slurm_backend.ended(state) or state.startswith("UNKNOWN"):
        return
    flag = records.name_flag(record.name)
    raise ClusterExists(f"cluster {record.name!r} is already queued as SLURM job {record.slurm['job_id']} "
                        f"({state.split(':')[0]}): see `bridge-ray status{flag}` for when it starts, or cancel it with "
                        f"`bridge-ray down{flag}` first")


def _gone(record: ClusterRecord) -> bool:
    """Whether the recorded head is certainly gone (``health.head_gone``, or its SLURM allocation has ended), or was
    never there to answer (an allocation that has not started has no Jobs API yet)."""
    if not record.dashboard_url:
        return True
    if record.backend == "slurm":
        from bridge_ray.cluster import slurm as slurm_backend

        if slurm_backend.ended(slurm_backend.job_state(record)):
            return True
    return health.head_gone(record)


def _alive_or_auth_error(record: ClusterRecord) -> bool:
    try:
        return health.is_alive(record)
    except AuthError:
        return True


def _jobs_api_url(address: str) -> str:
    """``address`` as a Jobs API URL (``HOST:PORT`` gets ``http://``), or ConfigError saying what it needs."""
    url = (address if "://" in address else f"http://{address}").rstrip("/")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if (parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9._:-]+", parts.hostname or "")
            or not port or parts.username or parts.query or parts.fragment or any(c.isspace() for c in url)):
        raise ConfigError(f"--address {address!r} is not a Jobs API URL: give http://HOST:PORT (or https://), "
                          "e.g. http://127.0.0.1:8265")
    return url


def _register(name: str, address: str, token_file: str | None, python: str) -> ClusterRecord:
    url = _jobs_api_url(address)
    if token_file and not Path(token_file).is_file():
        what = "is a folder" if Path(token_file).is_dir() else "does not exist"
        raise ConfigError(f"--token-file {token_file} {what}: pass the cluster's Ray auth token file")
    record = ClusterRecord(name=name, backend="address", gcs_address="", dashboard_url=url,
                           token_path=str(Path(token_file).resolve()) if token_file else None, python=python)
    auth.read_token(record)  # a file that holds no token is said so, not taken for a head that does not answer
    try:
        alive = health.is_alive(record)
    except AuthError:
        if not token_file:
            raise AuthError(f"the cluster at {url} requires an auth token: pass its Ray auth token file with "
                            "--token-file FILE") from None
        raise AuthError(f"the cluster at {url} refused the token in {token_file}: pass that cluster's own Ray auth "
                        "token file with --token-file FILE") from None
    if not alive:
        raise ConfigError(f"nothing answers at {url}: check the Jobs API address, e.g. http://HEAD:8265")
    return record


def _stop(record: ClusterRecord) -> None:
    if record.backend == "local":
        local.stop(record)
    elif record.backend == "slurm":
        from bridge_ray.cluster import slurm as slurm_backend

        slurm_backend.stop(record)


def _forget(name: str) -> None:
    """Drop the record, the jobs' secrets and the token bridge-ray made for the cluster.

    The cluster's logs stay (they hold no secret). A registered cluster's own token file lives
    where the user keeps it and is never touched.
    """
    records.delete(name)
    shutil.rmtree(credentials.secrets_dir(name), ignore_errors=True)
    (records.cluster_dir(name) / "auth_token").unlink(missing_ok=True)
    try:
        records.cluster_dir(name).rmdir()
    except OSError:  # it holds the cluster's logs, or there is none
        pass


def _active_jobs(record: ClusterRecord) -> list[dict] | None:
    """The cluster's PENDING/RUNNING jobs, after recording the end of each run that ended unseen
    (``_record_ended``); None when the head does not answer."""
    try:
        listed = health.get_json(record, "/api/jobs/", timeout_s=10.0) or []
    except (OSError, ValueError):
        return None
    _record_ended(record, listed)
    return [j for j in listed if j.get("status") in ACTIVE_JOB_STATES and j.get("submission_id")]


def _record_ended(record: ClusterRecord, listed: list[dict]) -> None:
    """Record the end, and keep the log, of every run whose job ended with nobody following it: once the cluster is
    down nothing could ask about it again, and its record stayed PENDING for good."""
    for job in listed:
        job_id, state = job.get("submission_id"), job.get("status")
        if not job_id or state not in runs.TERMINAL:
            continue
        run = runs.find_run(job_id)
        if run is None or run.cluster != record.name or (run.status in runs.TERMINAL and run.failure != runs.CLUSTER_LOST):
            continue
        try:
            logs = (health.get_json(record, f"/api/jobs/{job_id}/logs", timeout_s=10.0) or {}).get("logs") or ""
        except (OSError, ValueError):
            logs = ""
        end = job.get("end_time")
        runs.finish_run(job_id, state, job.get("message") or "", logs,
                        end_time=end / 1000 if isinstance(end, (int, float)) and end else None)


def _stop_jobs(record: ClusterRecord, jobs: list[dict]) -> None:
    """Stop ``jobs``, wait (bounded) until Ray has them STOPPED, and record each run as STOPPED."""
    from bridge_ray.cluster.client import client

    c = client(record)
    ids = [j["submission_id"] for j in jobs]
    for job_id in ids:
        c.stop_job(job_id)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and any(c.get_job_status(i).value in ACTIVE_JOB_STATES for i in ids):
        time.sleep(0.2)
    for job_id in ids:
        runs.record_stopped(job_id, f"stopped by `bridge-ray down{records.name_flag(record.name)} --force`")


def _stop_unreadable(name: str) -> None:
    """Stop what was started for a cluster whose record cannot be read: its tagged processes, its allocation."""
    from bridge_ray.cluster import processes
    from bridge_ray.cluster import slurm as slurm_backend

    tag = str(records.cluster_dir(name))
    # The tagged processes name the cluster's temp dir in their environment; with it the stop also
    # finds the renamed ones that hold its files open (``local.stop`` does the same from the record).
    root = processes.private_root()
    temp_dirs = {d for d in (processes.env_value(p, processes.TEMP_DIR_ENV) for p in processes.find_pids(None, tag=tag))
                 if d and Path(d).parent == root}

    def find() -> list[int]:
        found = set(processes.find_pids(None, tag=tag))
        for temp_dir in temp_dirs:
            found.update(processes.find_pids(temp_dir, by_open_files=True))
        return sorted(found)

    processes.stop_all(find, grace_s=3.0)
    for temp_dir in temp_dirs:
        shutil.rmtree(temp_dir, ignore_errors=True)
    slurm_backend.cancel_started_in(records.cluster_dir(name))


def down(name: str = DEFAULT_CLUSTER, force: bool = False) -> ClusterRecord | None:
    """Stop the named cluster's processes (or cancel its allocation) and remove its record.

    A cluster that still runs jobs is left alone unless ``force``: then its jobs are stopped
    first and their runs recorded as STOPPED. The runs of a cluster whose head no longer answers
    are recorded as lost. Registered (``address``) clusters are only forgotten, never stopped.
    Running it twice is fine: the second call finds no record and returns None.

    Raises:
        JobsRunning: jobs are still running (nothing was stopped); ``force`` stops them.
        ClusterRecordBroken: the record cannot be read; ``force`` stops what was started for it.
        ClusterExists: an ``up`` is starting this cluster right now (nothing to stop yet).
    """
    if not records.record_path(name).exists():
        pid = records.starter(name)
        if pid is not None:  # "not recorded; nothing to do" would read as down, and then the head comes up
            flag = records.name_flag(name)
            raise ClusterExists(f"cluster {name!r} is being started right now by `bridge-ray up{flag}`"
                                f"{f' (pid {pid})' if pid else ''}: run `bridge-ray down{flag}` once it is up, or "
                                "interrupt that `up` (Ctrl-C): it stops what it started")
        return None
    try:
        record = records.load(name)
    except ClusterRecordBroken:
        if not force:
            raise
        _stop_unreadable(name)
        _forget(name)
        return ClusterRecord(name=name, backend="unreadable", gcs_address="", dashboard_url="")
    if record.backend != "address":
        try:
            active = _active_jobs(record)
        except AuthError:
            if not force:
                raise JobsRunning(f"cluster {name!r} refused its token, so its jobs cannot be listed: "
                                  f"`bridge-ray down{records.name_flag(name)} --force` stops it with whatever runs on it") from None
            active = None
        if active is None and not force and not _gone(record):
            raise JobsRunning(f"cluster {name!r}'s head at {record.dashboard_url} did not answer, so its jobs cannot be "
                              f"listed, but it is not gone (busy or paused?): try again, or run `bridge-ray "
                              f"down{records.name_flag(name)} --force` to take it down with whatever runs on it")
        if active and not force:
            listed = ", ".join(f"{j['submission_id']} ({j['status']})" for j in active)
            raise JobsRunning(f"cluster {name!r} still runs {len(active)} job(s): {listed}: stop them with "
                              f"`bridge-ray stop ID{records.name_flag(name)}`, or run `bridge-ray down{records.name_flag(name)} --force` "
                              "to stop them and take the cluster down")
        if active:
            _stop_jobs(record, active)
        if active is None:
            runs.mark_lost(name, f"the head of cluster {name!r} at {record.dashboard_url} did not answer "
                                 "when it was taken down")
    _stop(record)
    _forget(name)
    return record


def status(name: str = DEFAULT_CLUSTER) -> ClusterStatus:
    """The named cluster's nodes, resource usage and jobs.

    Raises:
        ClusterNotFound: no such record.
        AuthError: the head refused the recorded token.
    """
    record = records.load(name)
    result = ClusterStatus(record=record, alive=health.is_alive(record))
    if record.backend == "slurm":
        from bridge_ray.cluster import slurm as slurm_backend

        result.slurm_state = slurm_backend.job_state(record)
    if not result.alive and not result.pending:
        result.gone = _gone(record)
        result.alive = not result.gone and health.answers_soon(record)  # a busy or paused head is not a dead one
    if not result.alive:
        if result.gone:
            runs.mark_lost(name, f"the head of cluster {name!r} at {record.dashboard_url} does not answer")
        return result
    try:
        _fill(result)
    except (OSError, ValueError):  # the head went away between the two calls
        result.alive = False
    return result


def _fill(result: ClusterStatus) -> None:
    record = result.record
    nodes = health.get_json(record, "/api/v0/nodes?detail=1&limit=10000")
    result.nodes = nodes["data"]["result"]["result"]
    report = health.get_json(record, "/api/cluster_status")["data"]["clusterStatus"]
    usage = (report.get("loadMetricsReport") or {}).get("usage") or {}
    for key in ("CPU", "GPU"):
        # Totals from the live nodes (the autoscaler's usage report lags right after `up`).
        total = sum(n["resources_total"].get(key, 0.0) for n in result.nodes if n["state"] == "ALIVE")
        if total:
            result.usage[key] = (float(usage.get(key, (0.0,))[0]), total)
    jobs = health.get_json(record, "/api/jobs/") or []
    result.jobs = sorted(jobs, key=lambda job: job.get("start_time") or 0)  # oldest first, as `list`
