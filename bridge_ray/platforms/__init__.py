"""verl platform plugins that bridge-ray ships.

verl selects its device backend through ``verl.plugin.platform`` and has no CPU
platform. ``bridge_ray.platforms.cpu`` registers one; ``cpu_env()`` gives the
environment variables that make verl load and select it in any process
(torchrun ranks, Ray Train workers, Ray Job drivers).
"""
from bridge_ray.platforms.env import cpu_env

__all__ = ["cpu_env"]
