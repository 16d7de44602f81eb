"""Offline model assets: a small BPE tokenizer, a random-init Llama, and demo data.

Nothing is downloaded. The tokenizer is trained here on synthetic GSM8K-style text and carries a
Llama-3-style chat template, so verl's SFT dataset and RL prompts can apply it. The model is a
``LlamaForCausalLM`` with random weights in a named shape; its folder also holds the tokenizer,
so ``model.path=<dir>`` alone is enough for verl.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bridge_ray.data.gsm8k import INSTRUCTION, OUTPUT_NAMES, generate_synthetic, sample_examples
from bridge_ray.errors import ConfigError
from bridge_ray.models.checkpoints import quiet_progress

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, HEADER_START, HEADER_END, EOT)
# Llama-3's layout without its date system prompt. The BOS opens only the first turn, so verl's
# MultiTurnSFTDataset (which renders each turn alone and strips the BOS from later ones) gets
# exactly the tokens of the whole conversation rendered at once.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
STAMP_NAME = "bridge_ray_assets.json"
# 2: the SFT rows carry the RL prompt (question + instruction); 3: the tiny shape's heads became 2 x 32
# (vLLM's CPU attention supports head sizes 32, 64, 80, ... only).
STAMP_VERSION = 3


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The numbers of a Llama architecture. ``vocab_size`` 0 means "the tokenizer's, rounded up to 64"."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_parameters: dict
    tie_word_embeddings: bool
    vocab_size: int = 0


LLAMA_SHAPES = {
    # Head dim 32: the smallest head size vLLM's CPU attention runs (the PPO/GRPO rollout on CPU).
    "tiny": LlamaShape(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
        max_position_embeddings=1024, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
    ),
    # meta-llama/Llama-3.2-1B's config. The vocabulary stays at 128256 so parameter and FLOP counts
    # match the real model; rows past the small tokenizer's ids are in no data (an untrained model generates
    # them: its merged-model check shows their ids, `checkpoints.describe_tokens`).
    "llama-3.2-1b": LlamaShape(
        hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192,
        max_position_embeddings=131072, tie_word_embeddings=True, vocab_size=128256,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ),
}


def default_corpus(num_examples: int = 2000, seed: int = 0) -> list[str]:
    """Synthetic GSM8K-style text (questions, RL instruction, answers) to train the tokenizer on."""
    return [f"{e.question} {INSTRUCTION}\n{e.answer}" for e in sample_examples(num_examples, seed)]


def build_tokenizer(out_dir: str | Path, corpus_texts: list[str] | None = None, vocab_size: int = 4096) -> Path:
    """Train a byte-level BPE tokenizer locally and save it as a ``PreTrainedTokenizerFast``.

    Digits are split one by one (as arithmetic wants); any byte sequence can be encoded.

    Args:
        out_dir: Folder to save into (``tokenizer.json``, ``tokenizer_config.json``).
        corpus_texts: Training text; synthetic GSM8K-style problems when None.
        vocab_size: Upper bound on the vocabulary (a small corpus may yield fewer tokens).

    Returns:
        ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus_texts or default_corpus(), trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOT, pad_token=PAD,
                                      chat_template=CHAT_TEMPLATE)
    wrapped.save_pretrained(out_dir)
    return Path(out_dir)


def llama_config(shape: str, tokenizer):
    """A ``LlamaConfig`` for a named shape, with the tokenizer's special-token ids.

    Raises:
        ConfigError: The shape is not one of ``LLAMA_SHAPES``.
    """
    from transformers import LlamaConfig

    if shape not in LLAMA_SHAPES:
        raise ConfigError(f"unknown model shape {shape!r}; choose one of: {', '.join(LLAMA_SHAPES)}")
    spec = LLAMA_SHAPES[shape]
    return LlamaConfig(
        vocab_size=spec.vocab_size or -(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings, rope_parameters=dict(spec.rope_parameters),
        tie_word_embeddings=spec.tie_word_embeddings, rms_norm_eps=1e-5, hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_llama(
    out_dir: str | Path,
    shape: str = "tiny",
    tokenizer_dir: str | Path | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Save a random-init ``LlamaForCausalLM`` (safetensors) and its tokenizer in one folder.

    Args:
        out_dir: Folder for the model and tokenizer; ``model.path=<out_dir>`` works in verl.
        shape: ``"tiny"`` (2 layers, hidden 64: quick on CPU) or ``"llama-3.2-1b"`` (the real 1B shape).
        tokenizer_dir: A saved tokenizer to pair with; a fresh ``build_tokenizer`` when None.
        dtype: Weight dtype as a torch name: ``"bfloat16"``, ``"float32"``, ``"float16"``.
        seed: Same seed, same weights.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: Unknown shape or dtype.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tokenizer_dir = build_tokenizer(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(shape, tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    with quiet_progress():
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _stamp(shape: str, num_train: int, num_val: int, seed: int) -> dict:
    return {"version": STAMP_VERSION, "shape": shape, "num_train": num_train, "num_val": num_val, "seed": seed}


def demo_asset_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where ``build_demo_assets(out_dir)`` puts its files (nothing is built or checked)."""
    data = Path(out_dir) / "data"
    return {"model": Path(out_dir) / "model", **{name: data / f"{name}.parquet" for name in OUTPUT_NAMES}}


def build_demo_assets(
    out_dir: str | Path, shape: str = "tiny", num_train: int = 2000, num_val: int = 128, seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Tokenizer + model + synthetic GSM8K data for a demo run, reused when already built alike.

    A stamp file records the arguments; when it matches and every file exists nothing is rebuilt. Assets
    built there with other arguments are rebuilt only with ``overwrite`` (runs may be reading them).

    Args:
        out_dir: Folder for ``model/`` and ``data/``.
        shape: Model shape, see ``build_llama``.
        num_train: Synthetic training problems.
        num_val: Synthetic validation problems.
        seed: Seed for data, tokenizer corpus and weights.
        overwrite: rebuild assets built in ``out_dir`` with other arguments.

    Returns:
        Paths keyed ``model`` (a folder for ``model.path``), ``train``, ``val`` (SFT parquets) and
        ``rl_train``, ``rl_val`` (RL parquets).

    Raises:
        ConfigError: ``out_dir`` holds a ``model/`` or data files that no build of this function made there, or
            (without ``overwrite``) assets built with other arguments.

    Example:
        >>> assets = build_demo_assets("outputs/demo")
        >>> assets["model"], assets["train"]
    """
    out_dir = Path(out_dir)
    paths, stamp_path, stamp = demo_asset_paths(out_dir), out_dir / STAMP_NAME, _stamp(shape, num_train, num_val, seed)
    saved = _read_stamp(stamp_path) if stamp_path.is_file() else None
    if saved == stamp and _complete(paths):
        return paths
    changed = [f"{key} {saved[key]}, not {value}" for key, value in stamp.items() if key != "version"
               and isinstance(saved, dict) and saved.get("version") == STAMP_VERSION and saved.get(key) != value]
    if changed and not overwrite:
        options = f"--shape {shape} --num-train {num_train} --num-val {num_val}"
        raise ConfigError(f"{out_dir} holds demo assets built with other options ({', '.join(changed)}): rebuild "
                          f"them with `bridge-ray assets demo {out_dir} {options} --overwrite` (runs that read them "
                          "see the new files), or give another folder")
    if not stamp_path.is_file():  # no build of ours was ever here: what is there is the user's
        theirs = [path for name, path in paths.items()
                  if ((path.is_dir() and any(path.iterdir())) if name == "model" else path.exists())]
        if theirs:
            shown = ", ".join(str(path.relative_to(out_dir)) for path in theirs)
            raise ConfigError(f"{out_dir} holds files bridge-ray did not make ({shown}): demo assets are built into a "
                              "new or empty folder (or one they were built in before); give another folder, or move "
                              "those files away")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({"building": stamp}))  # ours from here on, even if the build is cut short
    generate_synthetic(out_dir / "data", num_train=num_train, num_val=num_val, seed=seed, overwrite=True)
    build_tokenizer(paths["model"], default_corpus(seed=seed))
    build_llama(paths["model"], shape=shape, tokenizer_dir=paths["model"], seed=seed)
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return paths


def _read_stamp(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _complete(paths: dict[str, Path]) -> bool:
    model = paths["model"]
    data_done = all(path.is_file() for name, path in paths.items() if name != "model")
    model_done = (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
    return data_done and model_done and any(model.glob("*.safetensors"))
