"""Secrets a job needs (``HF_TOKEN``, ``WANDB_API_KEY``, ...) travel in a 0600 file, never in its runtime_env.

Ray writes a job's runtime_env into every worker's command line (``ps`` shows it to every user
of the machine) and into ``runtime_env_agent.log``. So ``submit`` keeps secret-looking
variables out of the runtime_env: it writes them to
``$BRIDGE_RAY_HOME/clusters/<name>/secrets/<submission_id>.env`` (folder 0700, file 0600, on
the shared home a SLURM allocation sees) and the runtime_env carries only that file's path
(``BRIDGE_RAY_ENV_FILE``). The job's driver loads it through ``bridge_ray.jobs.launch``; every
worker the job starts (tasks, actors, Ray Train workers, verl's workers and what they spawn)
loads it through Ray's ``worker_process_setup_hook`` (``setup_worker``) before its first task.
The file is removed when the submitter sees the job end (``remove``) and with the cluster.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bridge_ray.cluster import records
from bridge_ray.jobs.runtime_env import is_secret

ENV_FILE_ENV = "BRIDGE_RAY_ENV_FILE"
WORKER_HOOK = "bridge_ray.jobs.credentials.setup_worker"


def split(env_vars: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(plain, secret)``: the variables that may sit in a runtime_env, and those that may not."""
    plain = {k: v for k, v in env_vars.items() if not is_secret(k)}
    return plain, {k: v for k, v in env_vars.items() if is_secret(k)}


def secrets_dir(cluster: str) -> Path:
    """``$BRIDGE_RAY_HOME/clusters/<cluster>/secrets`` (not created)."""
    return records.cluster_dir(cluster) / "secrets"


def env_file(cluster: str, submission_id: str) -> Path:
    """The file that carries ``submission_id``'s secrets (it may not exist)."""
    return secrets_dir(cluster) / f"{submission_id}.env"


def write(cluster: str, submission_id: str, secrets: dict[str, str]) -> Path:
    """Write ``secrets`` for one job, readable by this user only; return the file.

    Raises:
        HomeNotWritable: the bridge-ray home cannot take the file.
    """
    folder = records.writable_dir(secrets_dir(cluster))
    folder.chmod(0o700)
    path = env_file(cluster, submission_id)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(secrets, f)
        os.replace(partial, path)
    except OSError as err:
        raise records.home_error(path, err) from None
    return path


def remove(cluster: str, submission_id: str) -> None:
    """Delete a job's secrets file (safe to repeat)."""
    env_file(cluster, submission_id).unlink(missing_ok=True)


def load(environ: dict[str, str] | None = None) -> list[str]:
    """Inside a job: put the secrets named by ``BRIDGE_RAY_ENV_FILE`` into ``environ``; return their names.

    They win over what the process inherited, as runtime_env variables would. A file that cannot
    be read here (a node that does not share the bridge-ray home) is reported on stderr once;
    the job goes on without those variables.
    """
    environ = os.environ if environ is None else environ
    path = environ.get(ENV_FILE_ENV)
    if not path:
        return []
    try:
        secrets = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        import sys

        print(f"[bridge-ray] cannot read the job's secrets file {path} on this node ({err}): "
              "secret variables (HF_TOKEN, WANDB_API_KEY, ...) are not set here; the nodes must share "
              "$BRIDGE_RAY_HOME", file=sys.stderr, flush=True)
        return []
    environ.update(secrets)
    return sorted(secrets)


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for every worker of a bridge-ray job.

    Loads the job's secrets, and makes Ray's folders private again (a starting worker marks
    them 0777; see ``processes.make_private``).
    """
    from bridge_ray.cluster.processes import TEMP_DIR_ENV, make_private

    load()
    if os.environ.get(TEMP_DIR_ENV):
        make_private(Path(os.environ[TEMP_DIR_ENV]))
