"""What bridge-ray adds to verl and to the nodes it runs on.

verl plugins, loaded through verl's ``VERL_USE_EXTERNAL_MODULES``:

- ``bridge_ray.platforms.cpu``: a ``cpu`` platform (verl has none), so verl trains on CPU
  ranks over gloo; ``cpu_env()`` gives the variables that load and select it.
- ``bridge_ray.platforms.value_model``: the PPO critic loads with the configured attention
  (verl 0.9.1 hard-codes flash_attention_2); ``verl_plugin_env()`` loads it.
- ``bridge_ray.platforms.cpu_rollout`` (+ ``vllm_cpu_worker``, a vLLM worker extension):
  PPO/GRPO on CPU with vLLM's CPU build as the rollout; ``cpu_ppo_env()`` loads it.
- ``bridge_ray.platforms.attention``: packed (varlen) attention without flash-attn.
- ``bridge_ray.platforms.replay_poll``: the PPO trainer picks up finished rollouts within
  0.1 s instead of verl's fixed 2 s polls.

None edits verl's or vLLM's files.

Also here, not a plugin: ``bridge_ray.platforms.hardware``, the probe of a node's GPUs and
kernels that SFT, PPO and pretraining read to pick their defaults.
"""
from bridge_ray.platforms.env import cpu_env, cpu_ppo_env, verl_plugin_env

__all__ = ["cpu_env", "cpu_ppo_env", "verl_plugin_env"]
