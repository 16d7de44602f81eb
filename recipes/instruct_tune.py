r"""Instruction-tune a model on OpenAssistant-style conversations with the SFT path (verl SFT on Ray Train).

The conversation trees (oasst ``*.trees.jsonl``, oasst message rows, or files with a ``messages``
column) are flattened to message lists (the best-ranked reply at each turn), then fine-tuned on like
any SFT run: recorded, checkpointed, merged to Hugging Face format, checked, uploaded if asked.

Run (default: the model recipes/pretrain.py made, on offline oasst-style trees, 2 CPU workers):

    bridge-ray submit recipes/instruct_tune.py --follow
    bridge-ray submit recipes/instruct_tune.py --follow -- preset=instruct_1b --model /abs/pretrain-1b/hf \
        --conversations /abs/oasst2.trees.jsonl --lang en sft.trainer.hub_repo_id=my-org/my-chat-model
        # preset=instruct_1b: one GPU worker per GPU of the cluster (sft.workers.num_workers=N to choose)

Overrides are dotted ``sft.<group>.<key>=value``, as for recipes/sft_gsm8k.py.
"""
import argparse
import json
import sys

from bridge_ray import instruct, sft
from bridge_ray.cluster import records
from bridge_ray.data.conversations import generate_synthetic_conversations
from bridge_ray.errors import BridgeRayError

DEMO_CONVERSATIONS = records.home_dir() / "demo" / "conversations" / "trees.jsonl"


def _arguments(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="instruct_tiny_cpu", choices=sorted(instruct.PRESETS))
    parser.add_argument("--model", default=str(records.home_dir() / "outputs" / "pretrain-tiny-cpu" / "hf"))
    parser.add_argument("--conversations", nargs="+", default=[str(DEMO_CONVERSATIONS)])
    parser.add_argument("--lang", help="keep this language only (oasst's lang field, e.g. en, ja)")
    parser.add_argument("--output-dir", default=str(records.home_dir() / "outputs" / "instruct"))
    # preset=NAME, as the other recipes take it, or --preset NAME
    argv = [f"--preset={a.split('=', 1)[1]}" if a.startswith("preset=") else a for a in argv]
    return parser.parse_known_args([a for a in argv if a not in ("--dry-run", "--")])


def config(argv: list[str]) -> sft.SFTConfig:
    """The SFT run these arguments ask for (the flattened conversations land in its output dir)."""
    args, overrides = _arguments(argv)
    return sft.apply_overrides(instruct.PRESETS[args.preset](args.model, args.output_dir), overrides)


def main(argv: list[str]) -> None:
    args, _ = _arguments(argv)
    try:
        cfg = sft.validate(config(argv))
        if "--dry-run" in argv:
            print(json.dumps({"sft": sft.to_verl_overrides(cfg), "conversations": args.conversations}, indent=2))
            return
        if args.conversations == [str(DEMO_CONVERSATIONS)] and not DEMO_CONVERSATIONS.is_file():
            generate_synthetic_conversations(DEMO_CONVERSATIONS)
        result = instruct.instruct_tune(cfg, args.conversations, lang=args.lang)
    except BridgeRayError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    print(f"run folder: {result.output_dir}\nmerged Hugging Face model: {result.hf_model}")


if __name__ == "__main__":
    main(sys.argv[1:])
