"""The model pretraining starts from: a Llama-style config in a named shape, with random weights.

verl 0.9.1's FSDP engine always loads ``from_pretrained(model.path)``; it has no random-init
switch. So ``build_init_model`` writes a seeded random-init ``LlamaForCausalLM`` with the run's
tokenizer into ``<output_dir>/init`` once (skipped when it is there), and verl loads that. Its
vocabulary is the tokenizer's, rounded up to a multiple of 64.

``flops_per_token`` and ``peak_flops`` give the model-FLOPs utilisation the run reports (PaLM's
and torchtitan's convention: 6·N + 12·L·H·Q·T, N the parameters with tied embeddings counted once).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from bridge_ray.errors import ConfigError
from bridge_ray.models.assets import LLAMA_SHAPES, LlamaShape

ROPE = {"rope_type": "default", "rope_theta": 10000.0}
SHAPES: dict[str, LlamaShape] = {
    # 2 layers, hidden 64, heads of 32: seconds per step on 2 CPU ranks.
    "tiny": LlamaShape(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=256,
                       max_position_embeddings=2048, rope_parameters=ROPE, tie_word_embeddings=True),
    # GPT-3 Small / the older workflow's 0.125B: 12 layers, hidden 768 (~110M with a 32k vocabulary).
    "0.1b": LlamaShape(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_size=2048,
                       max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                       tie_word_embeddings=True),
    # Llama-3.2-1B's layers with the run's own vocabulary (~1.0B with a 32k vocabulary).
    "1b": dataclasses.replace(LLAMA_SHAPES["llama-3.2-1b"], vocab_size=0),
}
# Dense bf16 peak FLOP/s by the start of the GPU's name (torch.cuda.get_device_name()).
PEAK_FLOPS = {"NVIDIA H200": 989.4e12, "NVIDIA H100": 989.4e12, "NVIDIA A100": 312e12, "NVIDIA L40S": 362e12}


def llama_config(shape: str, tokenizer, seq_len: int):
    """A ``LlamaConfig`` of a named shape for ``tokenizer``, long enough for ``seq_len``.

    Raises:
        ConfigError: an unknown shape.
    """
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise ConfigError(f"pretrain.model.shape={shape!r} is not known: choose from {', '.join(SHAPES)}")
    spec = SHAPES[shape]
    eos = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids("<|eot_id|>")]
                                      if "<|eot_id|>" in tokenizer.get_vocab() else [])
    return LlamaConfig(
        vocab_size=spec.vocab_size or -(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=max(spec.max_position_embeddings, seq_len), rope_parameters=dict(spec.rope_parameters),
        tie_word_embeddings=spec.tie_word_embeddings, rms_norm_eps=1e-5, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=tokenizer.pad_token_id,
    )


INIT_STAMP = "bridge_ray_init.json"


def init_stamp(shape: str, tokenizer_dir: str | Path, seq_len: int, seed: int = 0) -> dict:
    """What makes the init model: its shape, the tokenizer (folder and the digest of its ``tokenizer.json``), the
    sequence length and the seed."""
    vocab = Path(tokenizer_dir) / "tokenizer.json"
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest() if vocab.is_file() else None
    return {"shape": shape, "tokenizer": str(tokenizer_dir), "tokenizer_sha256": digest, "seq_len": seq_len,
            "seed": seed}


def init_differences(out_dir: str | Path, stamp: dict) -> list[str]:
    """The keys of ``stamp`` that differ from the init model saved in ``out_dir`` (none when there is none; a key an
    older stamp lacks is not compared)."""
    try:
        saved = json.loads((Path(out_dir) / INIT_STAMP).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(saved, dict):
        return []
    return [key for key, value in stamp.items() if key in saved and saved[key] != value]


def build_init_model(out_dir: str | Path, shape: str, tokenizer_dir: str | Path, seq_len: int, seed: int = 0) -> Path:
    """Save a random-init model of ``shape`` with the tokenizer in ``out_dir`` (fp32; reused if there)."""
    out_dir = Path(out_dir)
    stamp = init_stamp(shape, tokenizer_dir, seq_len, seed)
    stamp_file = out_dir / INIT_STAMP
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out_dir  # before torch and transformers are imported: a resubmitted run's driver is ready sooner
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(shape, tokenizer, seq_len)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stamp_file.write_text(json.dumps(stamp, indent=2))
    return out_dir


def num_params(config: dict) -> int:
    """Parameters of a Llama config (a ``config.json`` dict), tied embeddings counted once."""
    hidden, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter + 2 * hidden
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * per_layer + hidden


def flops_per_token(config: dict, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (PaLM, torchtitan)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 6 * num_params(config) + 12 * config["num_hidden_layers"] * heads * head_dim * seq_len


def peak_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by name, or None (CPU, unknown GPU)."""
    return next((peak for prefix, peak in PEAK_FLOPS.items() if device_name and device_name.startswith(prefix)), None)
