"""verl plugins that bridge-ray ships, loaded through verl's ``VERL_USE_EXTERNAL_MODULES``.

- ``bridge_ray.platforms.cpu``: a ``cpu`` platform (verl has none), so verl trains on CPU
  ranks over gloo; ``cpu_env()`` gives the variables that load and select it.
- ``bridge_ray.platforms.value_model``: the PPO critic loads with the configured attention
  (verl 0.9.1 hard-codes flash_attention_2); ``verl_plugin_env()`` loads it.
- ``bridge_ray.platforms.cpu_rollout`` (+ ``vllm_cpu_worker``, a vLLM worker extension):
  PPO/GRPO on CPU with vLLM's CPU build as the rollout; ``cpu_ppo_env()`` loads it.

None edits verl's or vLLM's files.
"""
from bridge_ray.platforms.env import cpu_env, cpu_ppo_env, verl_plugin_env

__all__ = ["cpu_env", "cpu_ppo_env", "verl_plugin_env"]
