"""bridge-ray: a Ray-native launcher for verl post-training, from a laptop to SLURM.

The public surface other teams use; everything else lives in submodules.

Example:
    >>> import bridge_ray
    >>> bridge_ray.up()                                   # local Ray head, token auth
    >>> job = bridge_ray.submit("recipes/hello_cluster.py")
    >>> job.wait()
    >>> bridge_ray.down()

Errors a caller may catch are all here (and in ``bridge_ray.errors``); each says what went wrong
and how to fix it. Training entry points live in ``bridge_ray.sft`` (``fit``) and ``bridge_ray.ppo`` (``run``);
``bridge_ray.network.run_doctor`` checks a cluster's network.
"""
from bridge_ray.cluster import ClusterStatus, down, status, up
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import (
    BridgeRayError,
    CheckpointError,
    ClusterLost,
    ClusterNotFound,
    ClusterStale,
    ClusterUnresponsive,
    ConfigError,
    HubError,
    JobFailed,
    JobNotFound,
    PPOFailed,
    PreflightError,
    RewardFailed,
    RunNotFound,
    TrainingFailed,
)
from bridge_ray.jobs import Job, list_jobs, list_runs, load_run, submit
from bridge_ray.models.export import export
from bridge_ray.models.hub import upload
from bridge_ray.runs import RunRecord

__all__ = [
    "up",
    "down",
    "status",
    "submit",
    "list_jobs",
    "Job",
    "list_runs",
    "load_run",
    "RunRecord",
    "export",
    "upload",
    "ClusterRecord",
    "ClusterStatus",
    "BridgeRayError",
    "CheckpointError",
    "ClusterLost",
    "ClusterNotFound",
    "ClusterStale",
    "ClusterUnresponsive",
    "ConfigError",
    "HubError",
    "JobFailed",
    "JobNotFound",
    "PPOFailed",
    "PreflightError",
    "RewardFailed",
    "RunNotFound",
    "TrainingFailed",
]
