"""The replay-poll plugin: verl's PPO trainer looks for finished rollouts every 0.1 s, not every 2 s.

Unit tier: verl's own ``ReplayBuffer`` class is built in a fresh process after ``import verl``
with the env a PPO job's workers get; no TransferQueue or cluster is needed to construct it.
"""
from __future__ import annotations

import os
import subprocess
import sys

from bridge_ray import ppo
from bridge_ray.platforms import verl_plugin_env
from bridge_ray.ppo.config import verl_plugins

BUILD = ("import sys, verl\n"
         "loaded = 'verl.trainer.ppo.v1.replay_buffer' in sys.modules\n"
         "from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync\n"
         "kw = dict(trainer_config={}, max_off_policy_threshold=None, max_off_policy_strategy='drop', sampler_kwargs={})\n"
         "print(loaded, ReplayBuffer(trainer_mode='sync', **kw).poll_interval,\n"
         "      ReplayBuffer(trainer_mode='sync', poll_interval=0.5, **kw).poll_interval,\n"
         "      ReplayBufferAsync(trainer_mode='async', **kw).poll_interval)\n"
         "import inspect; inspect.getsource(ReplayBuffer.sample)  # tracebacks still show verl's source\n")


def _build(env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1].split()


def test_every_ppo_run_loads_the_plugin():
    assert "bridge_ray.platforms.replay_poll" in verl_plugins(ppo.grpo_gsm8k_llama1b())


def test_sync_trainers_poll_every_tenth_of_a_second_through_verls_own_hook():
    """Without the plugin verl waits in 2 s sleeps (a rollout takes a whole multiple of ~2 s); with it, in
    0.1 s ones. verl's async trainer (which reads the interval as its idle threshold) and an interval
    someone passed keep theirs; the module is patched when first imported, not at ``import verl``."""
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    assert _build(env) == ["False", "2.0", "0.5", "2.0"]
    assert _build({**env, **verl_plugin_env({}, verl_plugins(ppo.grpo_gsm8k_llama1b()))}) == [
        "False", "0.1", "0.5", "2.0"]


def test_an_already_imported_replay_buffer_is_patched_too():
    code = ("import verl.trainer.ppo.v1.replay_buffer as rb, bridge_ray.platforms.replay_poll\n"
            "import bridge_ray.platforms.replay_poll as p; p.install()  # twice: patched once\n"
            "print(rb.ReplayBuffer(trainer_mode='sync', trainer_config={}, max_off_policy_threshold=None,\n"
            "      max_off_policy_strategy='drop', sampler_kwargs={}).poll_interval)\n")
    env = {k: v for k, v in os.environ.items() if k != "VERL_USE_EXTERNAL_MODULES"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0.1"
