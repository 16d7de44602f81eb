"""A ``cpu`` platform for verl: train on CPU ranks over gloo (CI, laptops, demos).

verl imports this module when ``VERL_USE_EXTERNAL_MODULES=bridge_ray.platforms.cpu``
and selects the platform with ``VERL_PLATFORM=cpu`` (see ``bridge_ray.platforms.cpu_env``).
verl's own files are not touched. What verl 0.9.1 needs from a CPU platform, and why:

- device ``cpu``, collective backend ``gloo`` (there is no NCCL);
- ``current_device()`` returns ``"cpu"``: verl moves modules with ``.to(get_device_id())``,
  and an integer there would mean ``cuda:N``;
- a device module whose ``get_device_name()`` answers ``"CPU"`` (verl's FLOPs counter asks
  it; an unknown name gives MFU 0) and whose memory calls answer zeros;
- verl builds the backend string ``"cpu:gloo,<device>:<backend>"``, which is
  ``"cpu:gloo,cpu:gloo"`` here and which torch rejects ("Duplicate device type cpu");
  while this platform is active, ``init_process_group`` maps that string to ``"gloo"``.
"""
from __future__ import annotations

import functools
import types
from contextlib import contextmanager
from typing import Any, Optional

import psutil
import torch
import torch.distributed

from verl.plugin.platform import PlatformBase, PlatformRegistry


def _cpu_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda``-style calls verl makes on its device module."""
    module = types.ModuleType("bridge_ray_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    zero = lambda *args, **kwargs: 0  # noqa: E731 - memory counters do not exist on CPU
    none = lambda *args, **kwargs: None  # noqa: E731 - cache/IPC controls do not exist on CPU
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(module, name, zero)
    for name in ("empty_cache", "ipc_collect", "set_per_process_memory_fraction", "reset_peak_memory_stats"):
        setattr(module, name, none)
    module.get_device_name = lambda *args, **kwargs: "CPU"
    module.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    module.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.mem_get_info = lambda *args, **kwargs: (psutil.virtual_memory().available, psutil.virtual_memory().total)
    return module


def _gloo_backend(backend: Any) -> Any:
    """Map verl's ``"cpu:gloo,cpu:gloo"`` to ``"gloo"``; leave every other value alone."""
    if isinstance(backend, str) and backend.replace(" ", "") == "cpu:gloo,cpu:gloo":
        return "gloo"
    return backend


def _patch_init_process_group() -> None:
    original = torch.distributed.init_process_group
    if getattr(original, "_bridge_ray_cpu", False):
        return

    @functools.wraps(original)
    def init_process_group(backend=None, *args, **kwargs):
        return original(_gloo_backend(backend), *args, **kwargs)

    init_process_group._bridge_ray_cpu = True
    torch.distributed.init_process_group = init_process_group


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only processes: device ``cpu``, collectives over gloo."""

    def __init__(self):
        # Created by verl's get_platform() only when VERL_PLATFORM=cpu selects it, and
        # before verl builds its backend string, so the mapping is active exactly then.
        _patch_init_process_group()
        self._device_module = _cpu_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        # Never auto-detected: a GPU host must not silently train on CPU.
        return False

    def current_device(self) -> str:  # type: ignore[override]
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
