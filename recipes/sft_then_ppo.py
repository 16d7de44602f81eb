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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(pipeline.default_run_dir("sft-then-grpo")))
    parser.add_argument("--tiny", metavar="ASSETS_DIR", help="use the offline tiny model and data built here")
    args, rest = parser.parse_known_args(sys.argv[1:])
    if args.tiny:
        sft_cfg, ppo_cfg = tiny_configs(args.tiny, args.run_dir)
    else:
        sft_cfg, ppo_cfg = sft.sft_gsm8k_llama1b(), ppo.grpo_gsm8k_llama1b()
    pipeline.main(sft_cfg, ppo_cfg, args.run_dir, rest)
