"""The job's driver side: attach to the running cluster, never start a new one."""
from __future__ import annotations

import os

from bridge_ray.errors import PreflightError


def connect(env_vars: dict[str, str] | None = None) -> None:
    """Attach to the running Ray cluster (the job's RAY_ADDRESS, else ``auto``); never start one.

    Args:
        env_vars: extra job-level env for the tasks and actors this driver starts (merged with
            the job's runtime_env by Ray; keys the job already sets are left to the job).

    Raises:
        PreflightError: when no cluster answers.
    """
    import ray

    if ray.is_initialized():
        return
    extra = {k: v for k, v in (env_vars or {}).items() if k not in os.environ}
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True,
                 runtime_env={"env_vars": extra} if extra else None)
    except ConnectionError as err:
        raise PreflightError(
            f"no Ray cluster to attach to ({err}): submit with `bridge-ray submit` or start one with `bridge-ray up`"
        ) from err


def alive_nodes() -> list[dict]:
    """The connected cluster's alive nodes, as ``ray.nodes()`` rows (``Resources``, ``NodeID``, ...)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]
