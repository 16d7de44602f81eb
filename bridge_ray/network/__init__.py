"""Network settings (NCCL / InfiniBand / Gloo) detected per node, checked, and carried to every job.

``run_doctor(name)`` probes each node of a recorded cluster, derives the profile, proves it with
an all-reduce and saves it beside the record; ``profile_env(name)`` is what each job's
runtime_env gets; the SLURM bootstrap sources ``env_file_path(name)`` before ``ray start``.
"""
from bridge_ray.network.checks import Check
from bridge_ray.network.doctor import DoctorReport, doctor, render_table, run_doctor, to_json
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
    without_reserved,
)

__all__ = [
    "Check",
    "ClusterProfile",
    "DoctorReport",
    "NodeProbe",
    "VERL_PPO_RESERVED_KEYS",
    "derive_profile",
    "doctor",
    "env_file_path",
    "load_profile",
    "node_env",
    "parse_env_assignments",
    "probe_node",
    "profile_env",
    "render_table",
    "run_doctor",
    "save_profile",
    "to_json",
    "without_reserved",
]
