"""Environment variables that select bridge-ray's CPU platform inside verl.

Kept apart from ``cpu.py`` so that reading them imports neither torch nor verl.
"""
from __future__ import annotations

CPU_PLATFORM_MODULE = "bridge_ray.platforms.cpu"


def cpu_env() -> dict[str, str]:
    """Env vars that make verl train on CPU with bridge-ray's ``cpu`` platform.

    Put them in a job's ``runtime_env["env_vars"]``, a torchrun environment or a
    Ray Train worker's environment *before* verl is imported there.

    - ``VERL_USE_EXTERNAL_MODULES``: verl imports this module at ``import verl``,
      which registers the ``cpu`` platform.
    - ``VERL_PLATFORM=cpu``: selects it (verl would otherwise fall back to nvidia).
    - ``VERL_ENGINE_DEVICE=cuda``: verl registers its FSDP engine only under the
      ``cuda``/``npu`` keys; this is a registry lookup key, no CUDA is used.

    Returns:
        A new dict of variable name to value.
    """
    return {
        "VERL_USE_EXTERNAL_MODULES": CPU_PLATFORM_MODULE,
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",
    }
