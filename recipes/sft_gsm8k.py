"""Supervised fine-tuning on GSM8K: verl's SFT trainer on Ray Train workers.

Run (default: a tiny random Llama on synthetic GSM8K, 2 CPU workers, a few steps; the
demo model and data are built once under $BRIDGE_RAY_HOME/demo):

    bridge-ray submit recipes/sft_gsm8k.py
    bridge-ray submit recipes/sft_gsm8k.py -- sft.optim.lr=1e-4 sft.trainer.total_steps=20

Llama-3.2-1B-Instruct on GSM8K (one GPU worker per GPU of the cluster, however many nodes; model and
parquet files must exist on the cluster; ``sft.workers.num_workers=N`` uses N):

    bridge-ray submit recipes/sft_gsm8k.py -- preset=sft_gsm8k_llama1b sft.model.path=/abs/Llama-3.2-1B-Instruct

On GPUs the preset trains fast by default (packed batches, the fastest attention and kernels the
workers have); ``preset=sft_gsm8k_llama1b_seed`` is the seed's slower padded run. Print what would
run, without a cluster:

    python recipes/sft_gsm8k.py --dry-run preset=sft_gsm8k_llama1b

Overrides are dotted ``sft.<group>.<key>=value`` (groups: model, data, optim, workers, trainer).
The run folder (config.json, metrics.json, checkpoints/, hf/) is printed at the end.
"""
import sys

from bridge_ray import sft


def demo_config() -> sft.SFTConfig:
    """The tiny CPU preset on demo assets built (or reused) under $BRIDGE_RAY_HOME/demo."""
    from bridge_ray.models.assets import build_demo_assets

    assets = build_demo_assets(sft.home_dir() / "demo", shape="tiny")
    return sft.sft_tiny_cpu(str(assets["model"]), str(assets["train"]), str(assets["val"]),
                            str(sft.run_dir("sft-tiny-cpu")))


def config(argv: list[str]) -> sft.SFTConfig:
    """The run these arguments ask for (`bridge-ray submit` builds and checks it here before submitting)."""
    return sft.from_args(argv, configs={"sft_tiny_cpu": demo_config}, default_preset="sft_tiny_cpu")


if __name__ == "__main__":
    sft.main(sys.argv[1:], configs={"sft_tiny_cpu": demo_config}, default_preset="sft_tiny_cpu")
