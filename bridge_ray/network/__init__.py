"""Network settings (NCCL / InfiniBand / Gloo) detected per node, checked, and carried to every job.

``run_doctor(name)`` probes each node of a recorded cluster, derives the profile, proves it with
an all-reduce and saves it beside the record; ``profile_env(name)`` is what each job's
runtime_env gets; the SLURM bootstrap sources ``env_file_path(name)`` before ``ray start``.
"""
from bridge_ray.network.checks import Check
from bridge_ray.network.probe import NodeProbe, probe_node
from bridge_ray.network.profile import (
    VERL_PPO_RESERVED_KEYS,
    ClusterProfile,
    derive_profile,
    env_file_path,
    load_profile,
    node_env,
    parse_env_assignments,
    profile_env,
    save_profile,
    saved_profile_note,
    without_reserved,
)

# The doctor drives a Ray cluster and imports Ray (~0.4 s): loaded when first used, so that
# `submit` (which needs only ``profile_env``) stays quick.
# ``bridge_ray.network.doctor`` is the module; its function of that name is ``doctor.doctor``.
_DOCTOR = ("DoctorReport", "render_table", "run_doctor", "to_json")


def __getattr__(name: str):
    if name in _DOCTOR:
        import importlib

        return getattr(importlib.import_module("bridge_ray.network.doctor"), name)
    raise AttributeError(f"module 'bridge_ray.network' has no attribute {name!r}")


__all__ = [
    "Check",
    "ClusterProfile",
    "DoctorReport",
    "NodeProbe",
    "VERL_PPO_RESERVED_KEYS",
    "derive_profile",
    "env_file_path",
    "load_profile",
    "node_env",
    "parse_env_assignments",
    "probe_node",
    "profile_env",
    "render_table",
    "run_doctor",
    "save_profile",
    "saved_profile_note",
    "to_json",
    "without_reserved",
]
