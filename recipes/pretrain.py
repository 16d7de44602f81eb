r"""Pretrain a Llama-style model from scratch on raw text: verl's FSDP engine on Ray Train workers.

Run (default: the tiny model on offline template stories, 2 CPU workers, fp32/gloo; the demo text and
tokenizer are made once under $BRIDGE_RAY_HOME/demo):

    bridge-ray submit recipes/pretrain.py --follow

On GPUs, your text and a tokenizer from recipes/train_tokenizer.py (presets: pretrain_0p1b, pretrain_1b; one
worker per GPU of the cluster unless ``pretrain.workers.num_workers=N``):

    bridge-ray submit recipes/pretrain.py --follow -- preset=pretrain_1b \
        pretrain.model.tokenizer_path=/abs/tokenizer pretrain.data.train_files=[/abs/a.jsonl,/abs/b.jsonl] \
        pretrain.trainer.output_dir=/abs/runs/pretrain-1b

Submitting the same run again (same output_dir) resumes from its last checkpoint. The run ends with
the last checkpoint merged to Hugging Face format (tokenizer included) and the model's continuation
of the test prompt ("Once upon a time,"). Keys: ``pretrain.<model|data|optim|workers|trainer>.<key>``.
"""
import sys

from bridge_ray import pretrain, tokenizer
from bridge_ray.cluster import records
from bridge_ray.data.text import demo_text

DEMO = records.home_dir() / "demo"


def config(argv: list[str]) -> pretrain.PretrainConfig:
    """The run these arguments ask for (the demo tokenizer and text for the tiny preset)."""
    preset, overrides = pretrain.parse_args(argv, default_preset="pretrain_tiny_cpu")
    output_dir = str(records.home_dir() / "outputs" / preset.replace("_", "-"))
    if preset == "pretrain_tiny_cpu":
        train, val = demo_text(DEMO / "text", create=False)
        cfg = pretrain.pretrain_tiny_cpu(str(DEMO / "tokenizer"), map(str, train), map(str, val), output_dir)
    else:
        cfg = pretrain.PRESETS[preset]("", (), output_dir)
    return pretrain.apply_overrides(cfg, overrides)


def write_demo(cfg: pretrain.PretrainConfig) -> None:
    """Demo text and tokenizer, when the run uses them and they are not there yet."""
    if cfg.data.train_files and cfg.data.train_files[0].startswith(str(DEMO)):
        demo_text(DEMO / "text")
    if cfg.model.tokenizer_path == str(DEMO / "tokenizer"):
        files = tuple(str(p) for p in demo_text(DEMO / "text")[0])
        if not (DEMO / "tokenizer" / "tokenizer.json").is_file():
            tokenizer.train(tokenizer.TokenizerConfig(files=files, vocab_size=320, output_dir=cfg.model.tokenizer_path))


if __name__ == "__main__":
    pretrain.main(config, sys.argv[1:], before=write_demo)
