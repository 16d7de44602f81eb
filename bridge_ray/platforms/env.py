"""Environment variables that load bridge-ray's verl plugins (and select its CPU platform).

Kept apart from the plugin modules so that reading them imports neither torch nor verl.
verl imports every module named in ``VERL_USE_EXTERNAL_MODULES`` (comma-separated) at
``import verl``, in every process that imports verl: torchrun ranks, Ray Train workers,
Ray Job drivers, verl's own Ray workers.
"""
from __future__ import annotations

import os

EXTERNAL_MODULES_ENV = "VERL_USE_EXTERNAL_MODULES"
CPU_PLATFORM_MODULE = "bridge_ray.platforms.cpu"
VALUE_MODEL_MODULE = "bridge_ray.platforms.value_model"
# PPO/GRPO: the trainer picks up finished rollouts within 0.1 s instead of verl's 2 s polls.
REPLAY_POLL_MODULE = "bridge_ray.platforms.replay_poll"
# The transformers attention plugin behind "torch_varlen" (verl's model.external_lib); importing it needs torch.
ATTENTION_PLUGIN = "bridge_ray.platforms.attention"
# torch's varlen flash kernel runs on CUDA GPUs of this compute capability or newer.
VARLEN_MIN_CAPABILITY = (8, 0)
CPU_ROLLOUT_MODULE = "bridge_ray.platforms.cpu_rollout"
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
STEP_TIMEOUT_ENV = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"


def external_modules(*modules: str, existing: str | None = None) -> str:
    """A ``VERL_USE_EXTERNAL_MODULES`` value: ``existing``'s modules, then ``modules`` not yet named."""
    names = [name for name in (existing or "").split(",") if name.strip()]
    return ",".join(names + [m for m in modules if m not in names])


def verl_plugin_env(environ: dict[str, str] | None = None, modules: tuple[str, ...] = ()) -> dict[str, str]:
    """Env that loads the plugins every verl run needs, and ``modules``, keeping modules ``environ`` already names.

    Every run needs ``value_model`` (the PPO critic loads with the configured attention, not
    verl's hard-coded flash_attention_2).

    Args:
        environ: the environment to extend (default ``os.environ``).
        modules: more plugins for this run (``ATTENTION_PLUGIN`` for ``torch_varlen``).

    Returns:
        ``{"VERL_USE_EXTERNAL_MODULES": ...}``.
    """
    environ = os.environ if environ is None else environ
    return {EXTERNAL_MODULES_ENV: external_modules(VALUE_MODEL_MODULE, *modules,
                                                   existing=environ.get(EXTERNAL_MODULES_ENV))}


def cpu_env() -> dict[str, str]:
    """Env vars that make verl train on CPU with bridge-ray's ``cpu`` platform.

    Put them in a job's ``runtime_env["env_vars"]``, a torchrun environment or a
    Ray Train worker's environment *before* verl is imported there.

    - ``VERL_USE_EXTERNAL_MODULES``: verl imports these modules at ``import verl``;
      ``cpu`` registers the ``cpu`` platform, ``value_model`` fixes the critic's loader.
    - ``VERL_PLATFORM=cpu``: selects it (verl would otherwise fall back to nvidia).
    - ``VERL_ENGINE_DEVICE=cuda``: verl registers its FSDP engine only under the
      ``cuda``/``npu`` keys; this is a registry lookup key, no CUDA is used.
    - ``GOMP_SPINCOUNT=1000``: torch's OpenMP threads wait ~1000 spins, not ~300k, before they
      sleep. On a busy CPU a thread spinning for a descheduled partner burns the time that partner
      needs: 3,000 small matmuls on 2 threads beside two busy loops took 14.7 s with the default,
      6.2 s with this (2-core VM, 2026-12-05), and 2.7 s either way on an idle machine.

    Returns:
        A new dict of variable name to value.
    """
    return {
        EXTERNAL_MODULES_ENV: external_modules(VALUE_MODEL_MODULE, CPU_PLATFORM_MODULE),
        "VERL_PLATFORM": "cpu",
        "VERL_ENGINE_DEVICE": "cuda",
        "GOMP_SPINCOUNT": "1000",
    }


def cpu_ppo_env(kv_cache_gib: int, environ: dict[str, str] | None = None,
                modules: tuple[str, ...] = ()) -> dict[str, str]:
    """Env vars for verl's PPO/GRPO on CPU with vLLM's CPU build, keeping modules ``environ`` names.

    ``cpu_env()``, plus:

    - ``bridge_ray.platforms.cpu_rollout`` among verl's external modules (placement and
      offload on CPU);
    - ``VLLM_TARGET_DEVICE=cpu``: vLLM's CPU platform, whatever else the host has;
    - ``VLLM_CPU_KVCACHE_SPACE``: the KV cache in GiB of host memory (vLLM CPU reads its
      ``gpu_memory_utilization`` as a share of all host RAM otherwise).
    - ``VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=3600``: how long vLLM's engine waits for one model
      step before it declares its worker dead (default 300 s, sized for a GPU). On a shared CPU
      machine one step of a batch can take minutes: beside two busy loops and another job, a
      4-request prefill passed 300 s and the engine died mid-rollout (2-core VM, 2026-12-05).

    Args:
        kv_cache_gib: vLLM's KV cache size in GiB.
        environ: the environment to extend (default ``os.environ``).
        modules: more plugins for this run (``bridge_ray.ppo.config.verl_plugins``).
    """
    environ, env = os.environ if environ is None else environ, cpu_env()
    names = external_modules(*env[EXTERNAL_MODULES_ENV].split(","), CPU_ROLLOUT_MODULE, *modules,
                             existing=environ.get(EXTERNAL_MODULES_ENV))
    return {**env, EXTERNAL_MODULES_ENV: names, "VLLM_TARGET_DEVICE": "cpu", KV_CACHE_ENV: str(kv_cache_gib),
            STEP_TIMEOUT_ENV: "3600"}
