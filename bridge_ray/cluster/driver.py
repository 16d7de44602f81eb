"""The job's driver side: attach to the running cluster, never start a new one."""
from __future__ import annotations

import os
import sys
import time

from bridge_ray.errors import PreflightError

# Set by Ray's job supervisor in every job's driver (ray._private.runtime_env.constants).
IN_A_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class DriverClock:
    """The driver's own clock for its start: seconds since the process started (its imports included),
    then each phase's seconds, so a slow start names its phase in the job log (``summary()``). A later
    workload of the same process (a pipeline's next stage) counts from its own start instead."""

    process_counted = False  # a clock of this process has counted the start of the process

    def __init__(self):
        self._last = time.time()
        if DriverClock.process_counted:
            self.origin, self.laps = "the stage started", {}
            return
        import psutil

        DriverClock.process_counted = True
        self.origin = "its process started"
        self.laps = {"python + imports": round(self._last - psutil.Process().create_time(), 2)}

    @classmethod
    def next_stage(cls) -> None:
        """The next clock of this process counts from its own start: a pipeline's stages share one process."""
        cls.process_counted = True

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name], self._last = round(now - self._last, 2), now

    def summary(self) -> str:
        return (f"{sum(self.laps.values()):.1f} s after {self.origin} ("
                + ", ".join(f"{name} {s:.1f} s" for name, s in self.laps.items()) + ")")


def connect(env_vars: dict[str, str] | None = None) -> None:
    """Attach to the running Ray cluster (the job's RAY_ADDRESS, else ``auto``); never start one, and never
    attach outside a Ray job unless Ray is initialised already.

    Args:
        env_vars: extra job-level env for the tasks and actors this driver starts (merged with
            the job's runtime_env by Ray; keys the job already sets are left to the job).

    Raises:
        PreflightError: when no cluster answers, or this process is no job's driver and Ray is not initialised.
    """
    import ray

    if ray.is_initialized():
        return
    if IN_A_JOB_ENV not in os.environ:  # `auto` would take any GCS on this host, or wait minutes for none
        script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "RECIPE.py"
        raise PreflightError(f"this trains on a cluster, inside a Ray job: submit it with `bridge-ray submit "
                             f"{script} --follow` (`python {script} --dry-run` checks it here), or call "
                             "ray.init(address=...) first")
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
