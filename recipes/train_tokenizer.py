r"""Train a sentencepiece tokenizer (unigram or BPE) on raw text in a Ray task; saved for sentencepiece and transformers.

Run (default: offline template stories, written once under $BRIDGE_RAY_HOME/demo/text, 320 pieces):

    bridge-ray submit recipes/train_tokenizer.py --follow

The older workflow's tokenizer (its spm_train flags, on your jsonl files, 16 threads):

    bridge-ray submit recipes/train_tokenizer.py --follow -- tokenizer.files=[/abs/a.jsonl,/abs/b.jsonl] \
        tokenizer.vocab_size=32000 tokenizer.input_sentence_size=3000000 tokenizer.num_cpus=16 \
        tokenizer.output_dir=/abs/tokenizer

Keys (``tokenizer.<key>=value``): files, text_key, model_type (unigram|bpe), vocab_size,
input_sentence_size, shuffle_input_sentence, character_coverage, num_cpus, num_threads, output_dir (new, empty, or
this tokenizer's own: a rerun with the same settings trains nothing), overwrite.
"""
import sys

from bridge_ray import tokenizer
from bridge_ray.cluster import records
from bridge_ray.data.text import demo_text

DEMO = records.home_dir() / "demo" / "text"


def config(argv: list[str]) -> tokenizer.TokenizerConfig:
    """The run these arguments ask for; the demo text when no files are given."""
    base = tokenizer.TokenizerConfig(files=tuple(str(p) for p in demo_text(DEMO, create=False)[0]), vocab_size=320,
                                     output_dir=str(records.home_dir() / "outputs" / "tokenizer"))
    return tokenizer.apply_overrides(base, argv)


def write_demo_text(cfg: tokenizer.TokenizerConfig) -> None:
    if cfg.files and cfg.files[0].startswith(str(DEMO)):
        demo_text(DEMO)


if __name__ == "__main__":
    tokenizer.main(config, sys.argv[1:], before=write_demo_text)
