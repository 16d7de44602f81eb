"""Submitting a recipe through the one Ray Job Submission client: the recipe and its arguments checked here, the
upload planned (``plan``), then sent (``submit``) and handed back as a ``Job`` (``bridge_ray.jobs.job``).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bridge_ray import runs, settings
from bridge_ray.cluster import health, records
from bridge_ray.cluster.processes import clean_env
from bridge_ray.cluster.records import DEFAULT_CLUSTER, ClusterRecord
from bridge_ray.errors import BridgeRayError, ConfigError, Interrupted, RecipeError
from bridge_ray.jobs import credentials, runtime_env
from bridge_ray.jobs.job import NO_AGENT, Job, api_call, client
from bridge_ray.jobs.runtime_env import SubmitPlan, is_secret

CHECK_TIMEOUT_S = 300.0
CHECK_NOTE_S = 30.0  # a check still running after this says so
# A busy machine can keep a fresh head's job agent unregistered past 60 s (seen once in CI beside a PPO job).
AGENT_WAIT_S = 180.0
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_recipe(recipe: str | Path) -> Path:
    """Resolve the recipe path and compile it, or raise RecipeError saying what is wrong."""
    path = Path(recipe)
    if not path.exists():
        raise RecipeError(f"recipe {recipe} does not exist: pass the path of a .py file, e.g. recipes/hello_cluster.py")
    if path.is_dir() or path.suffix != ".py":
        raise RecipeError(f"recipe {recipe} is not a Python file: pass a .py file, e.g. recipes/hello_cluster.py")
    try:
        compile(path.read_bytes(), str(path), "exec")
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes
        where = f" at line {err.lineno}" if getattr(err, "lineno", None) else ""
        raise RecipeError(f"recipe {recipe} does not compile{where}: {getattr(err, 'msg', err)}: fix it; "
                          "nothing was submitted") from None
    return path.resolve()


def check_args(record: ClusterRecord, project: Path, recipe: Path, args: list[str] | tuple[str, ...],
               env: dict[str, str], nodes: list[dict] | None = None) -> None:
    """Build and validate the configs the recipe declares (its ``config(argv)``) here (``bridge_ray.jobs.launch --check``).

    A bad override then fails here, in a second, instead of on the cluster after the upload.
    A recipe without ``config(argv)`` is not run here at all. With the cluster's alive ``nodes``
    (``health.alive_nodes``) the configs must also fit them: a GPU run on a cluster without GPUs,
    more workers than it has room for, fail here rather than in the job.

    Raises:
        ConfigError: the recipe refused its arguments (the recipe's own message).
        RecipeError: it failed here for another reason, or did not get to the cluster in time.
    """
    from bridge_ray.jobs import launch  # not at import: `python -m bridge_ray.jobs.launch` must find it unimported

    python = record.python if os.path.isfile(record.python) else sys.executable
    rel = str(recipe.relative_to(project))
    shape = {launch.NODES_ENV: json.dumps(nodes)} if nodes else {}
    proc = subprocess.Popen([python, "-m", "bridge_ray.jobs.launch", "--check", rel, *args], cwd=project,
                            env={**clean_env(), **env, **shape}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        try:
            stdout, stderr = proc.communicate(timeout=CHECK_NOTE_S)
        except subprocess.TimeoutExpired:  # a slow config(): say what is going on instead of staying silent
            print(f"note: still checking {rel}'s config() here (up to {CHECK_TIMEOUT_S:.0f} s; --no-check skips it)",
                  file=sys.stderr)
            stdout, stderr = proc.communicate(timeout=CHECK_TIMEOUT_S - CHECK_NOTE_S)
    except subprocess.TimeoutExpired:
        raise RecipeError(f"{rel}'s config({shlex.join(args)}) did not return within {CHECK_TIMEOUT_S:.0f} s when "
                          "checked here: submit with --no-check if it must run a long step first") from None
    finally:
        if proc.poll() is None:  # timed out, or Ctrl-C: the check never outlives the submit
            proc.kill()
            proc.wait()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    said = next((line for line in reversed(out.stderr.splitlines()) if line.strip()), "")
    if out.returncode == 0:
        return
    if out.returncode == launch.CANNOT_CHECK and said:
        print(f"note: {said}; submitting without checking its arguments", file=sys.stderr)
        return
    if said.startswith("error: "):
        raise ConfigError(said[len("error: "):])
    if out.returncode == launch.FAILED_HERE:
        raise RecipeError(f"{said}: fix it, or submit with --no-check if it only runs on the cluster")
    raise RecipeError(f"{shlex.join([rel, *args])} exited with code {out.returncode} when checked here"
                      + (f": {said}" if said else "") + "; nothing was submitted")


def _check_api_types(args, env) -> None:
    """What the Python API takes: ``args`` a list of strings (a single string was split into characters), ``env``
    a dict of strings (Ray refuses other values only after the upload)."""
    if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"args={args!r}: give the recipe's arguments as a list of strings, e.g. "
                          "[\"sft.optim.lr=1e-4\"]")
    if env is not None and (not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                               for k, v in env.items())):
        shown = {k: v for k, v in env.items() if not is_secret(str(k))} if isinstance(env, dict) else env
        raise ConfigError(f"env={shown!r}: give the job's variables as a dict of strings, e.g. {{\"NCCL_DEBUG\": \"INFO\"}}")


def _submission_id(path: Path) -> str:
    """``<recipe>-<time>-<hex>``, the recipe's name cut to what an id may hold (``_ID_RE``): a recipe named
    ``_try.py`` once gave ``-try-...``, which every command then read as an option."""
    name = re.sub(r"[^A-Za-z0-9.]+", "-", path.stem).strip("-.")[:80] or "job"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _cluster_nodes(record: ClusterRecord) -> list[dict]:
    """The cluster's alive nodes, asked of its head; ClusterStale (or AuthError) when it does not answer,
    BridgeRayError when it answers but does not list them."""
    health.check_alive(record)  # first: a killed local head's dashboard answers for a minute, its GCS does not
    try:
        nodes = health.alive_nodes(record)
    except OSError:  # a paused or stuck GCS: its dashboard takes the request and never answers (or answers 500)
        raise health.unresponsive_error(record, "listing its nodes") from None
    if nodes is None:
        raise BridgeRayError(f"the head of cluster {record.name!r} at {record.dashboard_url} answers but did not list "
                             f"its nodes (/api/v0/nodes): is it a Ray dashboard? See `bridge-ray "
                             f"status{records.name_flag(record.name)}`; `--no-check` sends the job unchecked; "
                             "nothing was submitted")
    return nodes


def plan(recipe: str | Path, args: list[str] | tuple[str, ...] = (), *, cluster: str = DEFAULT_CLUSTER,
         env: dict[str, str] | None = None, excludes: tuple[str, ...] = (),
         submission_id: str | None = None, check: bool = True, ask_cluster: bool = False) -> SubmitPlan:
    """Build what ``submit`` sends: the recipe compiled and its arguments checked here, the upload sized.

    Args:
        check: build and validate the recipe's declared configs here first (``check_args``).
        ask_cluster: with ``check``, also check them against the cluster's alive nodes (asked of its head;
            a dry run leaves it out).

    Raises:
        RecipeError, ConfigError, ClusterNotFound, WorkingDirTooLarge, and with ``ask_cluster`` ClusterStale
        or AuthError: nothing to submit.
    """
    from bridge_ray.network.profile import profile_env

    from bridge_ray.jobs import launch  # not at import: see check_args

    _check_api_types(args, env)
    path = check_recipe(recipe)
    misplaced = launch.local_only_flag(str(recipe), args)
    if misplaced:
        raise ConfigError(misplaced)
    record = records.load(cluster)
    env_block = runtime_env.build(path, env or {}, profile_env(cluster), excludes)
    if record.gcs_address:  # Ray's address lookups in the job's tasks and actors (Ray Train's placement-group
        # cleaner asks the state API with none) find every GCS on a host with two clusters, and fail
        env_block["env_vars"]["RAY_ADDRESS"] = record.gcs_address
    entity = settings.value("wandb.entity", path.parent)
    if entity and "WANDB_ENTITY" not in env_block["env_vars"]:  # your shell's or --env's wins
        env_block["env_vars"]["WANDB_ENTITY"] = entity
    project = Path(env_block["working_dir"])
    if check:
        nodes = _cluster_nodes(record) if ask_cluster else None
        check_args(record, project, path, list(args), env_block["env_vars"], nodes)
    rel = path.relative_to(project)
    entrypoint = shlex.join([record.python, "-m", "bridge_ray.jobs.launch", str(rel), *args])
    if submission_id and not _ID_RE.match(submission_id):
        raise ConfigError(f"--submission-id {submission_id!r} is not valid: use letters, digits, '.', '_' or '-' "
                          "(at most 128, starting with a letter or digit)")
    if submission_id and runs.find_run(submission_id) is not None:
        raise ConfigError(f"--submission-id {submission_id}: a run with that id is already recorded "
                          f"({runs.run_dir(submission_id)}): choose another id, or leave it out")
    submission_id = submission_id or _submission_id(path)
    job_env = runs.job_env(submission_id, env_block["env_vars"])
    plain, hidden = credentials.split({**job_env, **env_block["env_vars"]})
    env_block["env_vars"] = {**plain, credentials.ENV_FILE_ENV: str(credentials.env_file(cluster, submission_id))}
    env_block["worker_process_setup_hook"] = credentials.WORKER_HOOK
    metadata = {"bridge_ray": "1", "recipe": str(rel), "cluster": cluster}
    return SubmitPlan(cluster, submission_id, entrypoint, env_block, metadata, hidden)


def submit(recipe: str | Path, args: list[str] | tuple[str, ...] = (), *, cluster: str = DEFAULT_CLUSTER,
           env: dict[str, str] | None = None, excludes: tuple[str, ...] = (),
           submission_id: str | None = None, check: bool = True) -> Job:
    """Submit a recipe as a Ray job on the recorded cluster.

    Everything that can fail here (the recipe's arguments, the upload size, the run record,
    the secrets file) happens before the job is sent; after it, nothing can hide its id.

    Args:
        recipe: path of a recipe ``.py`` file; its project dir becomes the working_dir.
        args: arguments for the recipe (e.g. dotted overrides ``sft.optim.lr=1e-5``).
        cluster: the cluster's name.
        env: extra env vars for the job (win over everything else).
        excludes: more working_dir exclude patterns.
        submission_id: the job id to use (default ``<recipe>-<time>-<hex>``).
        check: build and validate the recipe's declared configs here first (see ``check_args``).

    Returns:
        A Job handle.

    Raises:
        RecipeError, ConfigError, ClusterNotFound, ClusterStale, AuthError, WorkingDirTooLarge,
        HomeNotWritable: nothing submitted.

    Example:
        >>> job = bridge_ray.submit("recipes/sft_gsm8k.py", ["sft.optim.lr=1e-4"])
        >>> job.follow()
    """
    p = plan(recipe, args, cluster=cluster, env=env, excludes=excludes, submission_id=submission_id, check=check,
             ask_cluster=True)
    record = records.load(cluster)
    if not check:  # with it, plan has asked the head already
        health.check_alive(record)
    c = client(record)
    runs.start_run(p, record)
    try:
        credentials.write(cluster, p.submission_id, p.secrets)
        _send(record, c, p)
    except KeyboardInterrupt:
        raise _interrupted_submit(record, c, p.submission_id) from None
    except Exception as err:
        credentials.remove(cluster, p.submission_id)
        runs.forget_run(p.submission_id)
        if isinstance(err, RuntimeError):  # Ray's client: "Request failed with status code ..."
            said = runs.first_line(str(err))
            raise BridgeRayError(f"cluster {cluster!r} refused job {p.submission_id}: {said}; nothing was submitted") from None
        raise
    return Job(p.submission_id, cluster)


def _send(record: ClusterRecord, c, p: SubmitPlan) -> None:
    """POST the job; while the head's job agent is not ready yet (a node just joined, a busy
    machine: Ray answers 500 "No available agent to submit job"), try again for up to
    ``AGENT_WAIT_S``. Nothing was accepted before such an answer, so trying again submits once."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            api_call(record, f"submitting job {p.submission_id}", c.submit_job, entrypoint=p.entrypoint,
                  submission_id=p.submission_id, runtime_env=p.runtime_env, metadata=p.metadata)
            return
        except RuntimeError as err:
            if NO_AGENT not in str(err):
                raise
            if time.monotonic() > deadline:
                raise BridgeRayError(f"cluster {record.name!r} took no job for {AGENT_WAIT_S:.0f} s (Ray: {NO_AGENT}): "
                                     f"see `bridge-ray status{records.name_flag(record.name)}`, then submit again") from None
            time.sleep(1.0)


def _interrupted_submit(record: ClusterRecord, c, submission_id: str) -> Interrupted:
    """Ctrl-C during the upload or the request: say whether the job got there (and undo if it did not)."""
    flag = records.name_flag(record.name)
    try:
        c.get_job_info(submission_id)
    except Exception:  # noqa: BLE001 - any answer but the job's details means it is not there
        credentials.remove(record.name, submission_id)
        runs.forget_run(submission_id)
        return Interrupted(f"interrupted before job {submission_id} reached cluster {record.name!r}: nothing was submitted")
    return Interrupted(f"interrupted, but job {submission_id} was submitted and runs: follow it with "
                       f"`bridge-ray logs {submission_id}{flag} --follow`, stop it with `bridge-ray stop {submission_id}{flag}`")
