"""SFT, then GRPO from the merged SFT model, in one job; submitting it again skips finished stages.

Stage records live in RUN_DIR/stages.json (default $BRIDGE_RAY_HOME/outputs/sft-then-grpo, or
sft-then-grpo-tiny with --tiny).

Run:
    bridge-ray submit recipes/sft_then_ppo.py --follow -- sft.optim.lr=2e-5 ppo.rollout.n=8
    bridge-ray submit recipes/sft_then_ppo.py --follow -- --tiny
        # offline tiny Llama, all on CPU (what `make demo` runs): SFT on 2 CPU workers, then GRPO
        # with vLLM's CPU build; the model and data are built once under $BRIDGE_RAY_HOME/demo
    bridge-ray submit recipes/sft_then_ppo.py --follow -- --tiny /abs/assets --run-dir /abs/runs/chain
    python recipes/sft_then_ppo.py --dry-run        # both stages' verl overrides; no cluster
"""
import argparse
import sys

from bridge_ray import assets, pipeline, ppo, sft


def tiny_configs(assets_dir: str, run_dir: str):
    files = assets.build_demo_assets(assets_dir)
    return (sft.sft_tiny_cpu(str(files["model"]), str(files["train"]), str(files["val"]), f"{run_dir}/sft"),
            ppo.grpo_tiny_cpu(str(files["model"]), str(files["rl_train"].parent), f"{run_dir}/ppo"))


def _arguments(argv: list[str]):
    """(SFT config, PPO config, run dir, the remaining arguments) from the recipe's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="absolute folder for both stages")
    parser.add_argument("--tiny", metavar="ASSETS_DIR", nargs="?", const=str(sft.home_dir() / "demo"),
                        help="the offline tiny model and data, built here (default $BRIDGE_RAY_HOME/demo); all on CPU")
    args, rest = parser.parse_known_args(argv)
    run_dir = args.run_dir or str(pipeline.default_run_dir("sft-then-grpo-tiny" if args.tiny else "sft-then-grpo"))
    if args.tiny:
        return (*tiny_configs(args.tiny, run_dir), run_dir, rest)
    return sft.sft_gsm8k_llama1b(), ppo.grpo_gsm8k_llama1b(), run_dir, rest


def config(argv: list[str]):
    """Both stages' configs these arguments ask for (`bridge-ray submit` checks them here before submitting)."""
    return pipeline.stage_configs(*_arguments(argv))


if __name__ == "__main__":
    pipeline.main(*_arguments(sys.argv[1:]))
