"""bridge-ray: a Ray-native launcher for verl post-training, from a laptop to SLURM.

The public surface other teams use; everything else lives in submodules.

Example:
    >>> import bridge_ray
    >>> bridge_ray.up()                                   # local Ray head, token auth
    >>> job = bridge_ray.submit("recipes/hello_cluster.py")
    >>> job.wait()
    >>> bridge_ray.down()
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
from bridge_ray.jobs import Job, list_jobs, submit
from bridge_ray.records import ClusterRecord

__all__ = [
    "up",
    "down",
    "status",
    "submit",
    "list_jobs",
    "Job",
    "ClusterRecord",
    "ClusterStatus",
    "BridgeRayError",
    "ClusterNotFound",
    "ClusterStale",
    "ConfigError",
    "JobFailed",
    "PreflightError",
]
