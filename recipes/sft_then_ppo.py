"""SFT, then GRPO from the merged SFT model, in one job; submitting it again skips finished stages.

Stage records live in RUN_DIR/stages.json (default $BRIDGE_RAY_HOME/outputs/sft-then-grpo, or
sft-then-grpo-tiny with --tiny).

Run:
    bridge-ray submit recipes/sft_then_ppo.py --follow -- sft.optim.lr=2e-5 ppo.rollout.n=8
    bridge-ray submit recipes/sft_then_ppo.py --follow -- --tiny
        # offline tiny Llama, all on CPU (what `make demo` runs): SFT on 2 CPU workers, then GRPO
        # with vLLM's CPU build; the model and data are built once under $BRIDGE_RAY_HOME/demo
    bridge-ray submit recipes/sft_then_ppo.py --follow -- --tiny --assets /abs/assets --run-dir /abs/runs/chain
    python recipes/sft_then_ppo.py --dry-run        # both stages' verl overrides; no cluster
"""
import argparse
import sys

from bridge_ray import ppo, sft
from bridge_ray.errors import ConfigError
from bridge_ray.models import assets
from bridge_ray.pipelines import sft_then_ppo, stages


def tiny_configs(assets_dir: str, run_dir: str):
    files = assets.build_demo_assets(assets_dir)
    return (sft.sft_tiny_cpu(str(files["model"]), str(files["train"]), str(files["val"]), f"{run_dir}/sft"),
            ppo.grpo_tiny_cpu(str(files["model"]), str(files["rl_train"].parent), f"{run_dir}/ppo"))


def _arguments(argv: list[str]):
    """(SFT config, PPO config, run dir, the remaining arguments) from the recipe's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="absolute folder for both stages")
    parser.add_argument("--tiny", action="store_true", help="the offline tiny model and data, all on CPU")
    parser.add_argument("--assets", help="with --tiny: absolute folder for its model and data (default "
                                         "$BRIDGE_RAY_HOME/demo), built there once")
    args, rest = parser.parse_known_args(argv)
    if args.assets and not (args.tiny and args.assets.startswith("/")):
        raise ConfigError(f"--assets {args.assets}: give an absolute folder, with --tiny (the job runs on the cluster)")
    run_dir = args.run_dir or str(stages.default_run_dir("sft-then-grpo-tiny" if args.tiny else "sft-then-grpo"))
    if args.tiny:
        return (*tiny_configs(args.assets or str(sft.home_dir() / "demo"), run_dir), run_dir, rest)
    return sft.sft_gsm8k_llama1b(), ppo.grpo_gsm8k_llama1b(), run_dir, rest


def config(argv: list[str]):
    """Both stages' configs these arguments ask for (`bridge-ray submit` checks them here before submitting)."""
    return sft_then_ppo.stage_configs(*_arguments(argv))


if __name__ == "__main__":
    try:
        arguments = _arguments(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sft_then_ppo.main(*arguments)
