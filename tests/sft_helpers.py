"""Shared helpers for the SFT tests: tiny offline model, tokenizer and data.

Uses ``bridge_ray.assets.build_demo_assets`` when that module exists; until then it
builds an equivalent throwaway set here (random 2-layer Llama, word-level tokenizer
with a chat template, GSM8K-like ``messages`` parquet).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [str(i) for i in range(10)] + "what is plus minus times the answer so + - * = ? . , a".split()
    special = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(special + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(True)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out_dir)
    return hf


def _rows(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({
            "messages": [
                {"role": "user", "content": f"what is {a} plus {b} ?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b} . the answer is {a + b}"},
            ]
        })
    return rows


def build_fallback_assets(out_dir: Path) -> dict[str, str]:
    """Tiny model dir, tokenizer and train/val parquet under ``out_dir``."""
    import pandas as pd
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    model_dir = out_dir / "model"
    tokenizer = _build_tokenizer(model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    data_dir = out_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(_rows(64, 0)).to_parquet(data_dir / "train.parquet")
    pd.DataFrame(_rows(16, 1)).to_parquet(data_dir / "val.parquet")
    return {"model_dir": str(model_dir), "train": str(data_dir / "train.parquet"),
            "val": str(data_dir / "val.parquet")}


def build_assets(out_dir: Path) -> dict[str, str]:
    """The tiny demo assets: from ``bridge_ray.assets`` when present, else the fallback."""
    try:
        from bridge_ray.assets import build_demo_assets
    except ImportError:
        return build_fallback_assets(out_dir)
    paths = build_demo_assets(out_dir, shape="tiny", num_train=256, num_val=32)
    return {"model_dir": str(paths["model"]), "train": str(paths["train"]), "val": str(paths["val"])}


LOSS_LINE = re.compile(r"step:(\d+) - .*?train/loss:([0-9.eE+-]+)")


def losses_from_log(text: str) -> dict[int, float]:
    """{step: loss} from verl's console-logger lines (dedupes repeated lines)."""
    return {int(m.group(1)): float(m.group(2)) for m in LOSS_LINE.finditer(text)}


def losses_from_metrics(path: Path) -> dict[int, float]:
    """{step: loss} from the run's ``metrics.json`` history."""
    data = json.loads(Path(path).read_text())
    return {int(row["step"]): float(row["loss"]) for row in data["history"]}
