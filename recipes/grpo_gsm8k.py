"""GRPO on GSM8K with Llama-3.2-1B-Instruct: 5 samples per prompt, KL in the loss, verl's GSM8K reward.

Run:
    bridge-ray submit recipes/grpo_gsm8k.py --follow
    bridge-ray submit recipes/grpo_gsm8k.py --follow -- ppo.rollout.n=8 ppo.trainer.total_steps=50
    bridge-ray submit recipes/grpo_gsm8k.py -- ppo.reward.function=my_team.rewards:score   # your reward
    python recipes/grpo_gsm8k.py --dry-run       # the verl overrides, composed against verl; no cluster

On CPU (a laptop, CI; vLLM's CPU build as the rollout), 2 steps of a tiny offline Llama:
    bridge-ray up --num-cpus 4 && bridge-ray submit recipes/grpo_gsm8k.py --follow -- preset=grpo_tiny_cpu
"""
import sys

from bridge_ray import ppo


def config(argv: list[str]) -> ppo.PPOConfig:
    """The run these arguments ask for (`bridge-ray submit` builds and checks it here before submitting)."""
    return ppo.from_args(ppo.grpo_gsm8k_llama1b(), argv)


if __name__ == "__main__":
    ppo.main(config, sys.argv[1:])
