"""PPO (GAE, with a critic) on GSM8K: Llama-3.2-1B-Instruct as actor and critic, verl's GSM8K reward.

Train batch 256, prompt 512 / response 256, actor lr 1e-6, critic lr 1e-5, KL coef 0.001,
15 epochs, save and test every 10 steps, on every GPU the cluster has.

Run:
    bridge-ray submit recipes/ppo_gsm8k.py --follow
    bridge-ray submit recipes/ppo_gsm8k.py --follow -- ppo.trainer.total_steps=20 ppo.trainer.nnodes=2
    python recipes/ppo_gsm8k.py --dry-run        # the verl overrides, composed against verl; no cluster

On CPU (a laptop, CI; vLLM's CPU build as the rollout), 2 steps of a tiny offline Llama:
    bridge-ray up --num-cpus 4 && bridge-ray submit recipes/ppo_gsm8k.py --follow -- preset=ppo_tiny_cpu
"""
import sys

from bridge_ray import ppo


def config(argv: list[str]) -> ppo.PPOConfig:
    """The run these arguments ask for (`bridge-ray submit` builds and checks it here before submitting)."""
    return ppo.from_args(ppo.ppo_gsm8k_llama1b(), argv)


if __name__ == "__main__":
    ppo.main(config, sys.argv[1:])
