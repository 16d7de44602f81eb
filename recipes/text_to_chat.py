r"""Raw text to a published chat model, one command: tokenizer -> pretrain -> export (+ test prompt) ->
instruction-tune -> export -> upload. Each stage is recorded in RUN_DIR/stages.json and skipped on a rerun.

Run (default: tiny everything on 2 CPU workers, offline stories and oasst-style trees made once under
$BRIDGE_RAY_HOME/demo, run folder $BRIDGE_RAY_HOME/outputs/text-to-chat-tiny-cpu; no upload):

    bridge-ray submit recipes/text_to_chat.py --follow
    bridge-ray submit recipes/text_to_chat.py --follow -- hub_repo_id=my-org/tiny-chat
        # with HF_TOKEN exported in your shell (never on a command line): the job gets it in a 0600 file

The older workflow's run, on GPUs (your jsonl text and OpenAssistant trees on the shared filesystem):

    bridge-ray submit recipes/text_to_chat.py --follow -- preset=chain_1b run_dir=/abs/runs/ja-1b \
        tokenizer.files=[/abs/a.jsonl,/abs/b.jsonl] pretrain.data.train_files=[/abs/a.jsonl,/abs/b.jsonl] \
        conversations=[/abs/oasst2.trees.jsonl] conversations_lang=ja hub_repo_id=my-org/ja-1b-chat

Keys: ``run_dir``, ``tokenizer.*``, ``pretrain.*``, ``instruct.*`` (an SFT config), ``conversations``,
``conversations_lang``, ``conversations_mode`` (top|all), ``hub_repo_id``, ``hub_private``.
"""
import sys

from bridge_ray.cluster import records
from bridge_ray.data.conversations import generate_synthetic_conversations
from bridge_ray.data.text import demo_text
from bridge_ray.errors import ConfigError
from bridge_ray.pipelines import text_to_chat

DEMO = records.home_dir() / "demo"


def config(argv: list[str]) -> text_to_chat.ChainConfig:
    """The chain these arguments ask for: ``preset=chain_tiny_cpu`` (default) or ``preset=chain_1b``."""
    presets = [a.split("=", 1)[1] for a in argv if a.startswith("preset=")]
    overrides = [a for a in argv if not a.startswith("preset=") and a != "--"]
    preset = presets[-1] if presets else "chain_tiny_cpu"
    if preset not in text_to_chat.PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose from {', '.join(text_to_chat.PRESETS)}")
    run_dir = str(records.home_dir() / "outputs" / preset.replace("chain_", "text-to-chat-").replace("_", "-"))
    if preset == "chain_tiny_cpu":
        train, val = demo_text(DEMO / "text", create=False)
        trees = str(DEMO / "conversations" / "trees.jsonl")
        cfg = text_to_chat.chain_tiny_cpu(run_dir, map(str, train), map(str, val), [trees])
    else:
        cfg = text_to_chat.PRESETS[preset](run_dir, (), ())
    return text_to_chat.apply_overrides(cfg, overrides)


def write_demo(cfg: text_to_chat.ChainConfig) -> None:
    """The demo text and conversations, when the chain uses them and they are not there yet."""
    if any(f.startswith(str(DEMO)) for f in cfg.tokenizer.files + cfg.pretrain.data.train_files):
        demo_text(DEMO / "text")
    demo_trees = DEMO / "conversations" / "trees.jsonl"
    if str(demo_trees) in cfg.conversations and not demo_trees.is_file():
        generate_synthetic_conversations(demo_trees)


if __name__ == "__main__":
    text_to_chat.main(config, sys.argv[1:], before=write_demo)
