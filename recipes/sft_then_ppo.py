"""SFT, then GRPO from the merged SFT model, in one job; submitting it again skips finished stages.

Stage records live in RUN_DIR/stages.json (default $BRIDGE_RAY_HOME/outputs/sft-then-grpo).

Run:
    bridge-ray submit recipes/sft_then_ppo.py --follow -- sft.optim.lr=2e-5 ppo.rollout.n=8
    bridge-ray submit recipes/sft_then_ppo.py --follow -- --tiny /abs/assets --run-dir /abs/runs/chain
        # offline tiny Llama: SFT on 2 CPU workers, then GRPO on the cluster's GPUs
    python recipes/sft_then_ppo.py --dry-run        # both stages' verl overrides; no cluster
"""
import argparse
import sys

from bridge_ray import assets, pipeline, ppo, sft


def tiny_configs(assets_dir: str, run_dir: str):
    files = {name: str(path) for name, path in assets.build_demo_assets(assets_dir).items()}
    return (sft.sft_tiny_cpu(files["model"], files["train"], files["val"], f"{run_dir}/sft"),
            ppo.tiny_gsm8k("grpo", files["model"], files["rl_train"], files["rl_val"], f"{run_dir}/ppo"))


def _arguments(argv: list[str]):
    """(SFT config, PPO config, run dir, the remaining arguments) from the recipe's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(pipeline.default_run_dir("sft-then-grpo")))
    parser.add_argument("--tiny", metavar="ASSETS_DIR", help="use the offline tiny model and data built here")
    args, rest = parser.parse_known_args(argv)
    if args.tiny:
        return (*tiny_configs(args.tiny, args.run_dir), args.run_dir, rest)
    return sft.sft_gsm8k_llama1b(), ppo.grpo_gsm8k_llama1b(), args.run_dir, rest


def config(argv: list[str]):
    """Both stages' configs these arguments ask for (`bridge-ray submit` checks them here before submitting)."""
    return pipeline.stage_configs(*_arguments(argv))


if __name__ == "__main__":
    pipeline.main(*_arguments(sys.argv[1:]))
