"""bridge-ray: a Ray-native launcher for verl post-training, from a laptop to SLURM.

The public surface other teams use; everything else lives in submodules.

Example:
    >>> import bridge_ray
    >>> bridge_ray.up()                                   # local Ray head, token auth
    >>> job = bridge_ray.submit("recipes/hello_cluster.py")
    >>> job.wait()
    >>> bridge_ray.down()

Training entry points live in ``bridge_ray.sft`` (``fit``) and ``bridge_ray.ppo`` (``run``);
``bridge_ray.network.run_doctor`` checks a cluster's network.
"""
from bridge_ray.cluster import ClusterStatus, down, status, up
from bridge_ray.errors import (
    BridgeRayError,
    ClusterNotFound,
    ClusterStale,
    ConfigError,
    JobFailed,
    PreflightError,
)
from bridge_ray.export import export
from bridge_ray.hub import upload
from bridge_ray.jobs import Job, list_jobs, submit
from bridge_ray.records import ClusterRecord
from bridge_ray.runs import RunRecord, list_runs, load_run

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
    "ClusterNotFound",
    "ClusterStale",
    "ConfigError",
    "JobFailed",
    "PreflightError",
]
