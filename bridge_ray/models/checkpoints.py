"""verl checkpoints (SFT, pretraining, PPO/GRPO): find the latest, merge it into a Hugging Face model, check it loads.

verl 0.9.1's SFT trainer writes, under ``trainer.default_local_dir``::

    latest_checkpointed_iteration.txt        # "N"
    global_step_N/
        model_world_size_W_rank_R.pt         # FSDP shards, one per rank
        optim_world_size_W_rank_R.pt, extra_state_world_size_W_rank_R.pt, data_R.pt
        fsdp_config.json
        huggingface/                         # config, tokenizer, chat template (no weights)

(no ``actor/`` level, unlike the PPO trainer, whose ``global_step_N`` holds ``actor/`` and ``critic/``
with these files each). ``weights_dir`` names the folder holding a step's model; ``verl.model_merger``
turns it into a ``save_pretrained`` folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bridge_ray.errors import CheckpointError


@contextlib.contextmanager
def quiet_progress():
    """transformers' progress bars off inside the block ("Writing model shards", "Loading weights"): bridge-ray's
    commands say what they do in their own lines; those bars were stray noise on stderr."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()

TRACKER_FILE = "latest_checkpointed_iteration.txt"
MODEL_SHARDS = "model_world_size_*_rank_*.pt"
_STEP_DIR = re.compile(r"^global_step_(\d+)$")


def weights_dir(step_dir: str | Path) -> Path:
    """The folder of a ``global_step_N`` that holds the model's shards: PPO/GRPO's ``actor/`` (the
    critic is no model to export), else the step folder itself (SFT, pretraining)."""
    step_dir = Path(step_dir)
    return step_dir / "actor" if (step_dir / "actor").is_dir() else step_dir


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete ``global_step_N`` folder under ``checkpoint_dir``, or None.

    verl's tracker file names the last checkpoint it finished; without it, the highest
    step folder that holds model shards (in its ``weights_dir``) counts.
    """
    root = Path(checkpoint_dir)
    tracker = root / TRACKER_FILE
    if tracker.is_file():
        step_dir = root / f"global_step_{tracker.read_text().strip()}"
        if step_dir.is_dir():
            return step_dir
    steps = sorted(
        (int(m.group(1)), p) for p in root.glob("global_step_*")
        if (m := _STEP_DIR.match(p.name)) and any(weights_dir(p).glob(MODEL_SHARDS))
    ) if root.is_dir() else []
    return steps[-1][1] if steps else None


def merge_to_hf(checkpoint: str | Path, target_dir: str | Path, env: dict[str, str] | None = None,
                log_file: str | Path | None = None) -> Path:
    """Merge verl FSDP shards in ``checkpoint`` (a ``global_step_N`` folder) into an HF model.

    Runs ``python -m verl.model_merger merge --backend fsdp`` in a subprocess, on a view of the
    checkpoint (links to its shards, a copy of its ``huggingface/``) whose HF config carries no
    ``attn_implementation``: verl writes the training run's attention there (``torch_varlen``,
    ``flash_attention_2``, ...), which the merger — a fresh process, maybe on a host without
    flash-attn — may not know. It is how that run computed attention, not part of the model;
    the merged model loads with transformers' default. The checkpoint itself is left as it is.

    Args:
        checkpoint: A folder of FSDP shards: a ``global_step_N``'s ``weights_dir``.
        target_dir: Folder for the merged ``save_pretrained`` output.
        env: Extra environment for the merger (e.g. ``cpu_env()`` on CPU-only hosts).
        log_file: Where the merger's whole output goes when it fails (default ``<target_dir>-merge.log``).

    Returns:
        ``target_dir``.

    Raises:
        CheckpointError: one line with the merger's last output line and where its whole output is.
    """
    checkpoint, target_dir = Path(checkpoint), Path(target_dir)
    if not any(checkpoint.glob(MODEL_SHARDS)):
        raise CheckpointError(f"no FSDP model shards in {checkpoint}: expected model_world_size_*_rank_*.pt")
    with tempfile.TemporaryDirectory(prefix="bridge-ray-merge-") as view:
        cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
               "--local_dir", str(_merge_view(checkpoint, Path(view))), "--target_dir", str(target_dir)]
        proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "no output")
        log = Path(log_file) if log_file else target_dir.with_name(f"{target_dir.name}-merge.log")
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(output + "\n")
            where = f" (whole output: {log})"
        except OSError:
            where = ""
        raise CheckpointError(f"merging {checkpoint} failed (exit {proc.returncode}): {last}{where}")
    return target_dir


def _merge_view(checkpoint: Path, view: Path) -> Path:
    """``view`` holding links to ``checkpoint``'s files and a copy of its ``huggingface/`` without
    the training run's ``attn_implementation`` (see ``merge_to_hf``)."""
    for entry in checkpoint.iterdir():
        if entry.name != "huggingface":
            (view / entry.name).symlink_to(entry.absolute())
    hf = checkpoint / "huggingface"
    if hf.is_dir():
        shutil.copytree(hf, view / "huggingface")
        config_path = view / "huggingface" / "config.json"
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError):  # the merger says what is wrong with it
            return view
        if isinstance(config, dict) and config.pop("attn_implementation", None) is not None:
            config_path.write_text(json.dumps(config, indent=2) + "\n")
    return view


def check_hf_model(path: str | Path, prompt: str = "What is 2 + 3?", max_new_tokens: int = 8) -> str:
    """Load a merged model with transformers and generate a few tokens.

    Returns:
        The generated text (after the prompt).

    Raises:
        CheckpointError: when the model or tokenizer does not load or generates nothing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"merged model at {path} does not load with transformers: {first}") from err
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    if len(new_tokens) == 0:
        raise CheckpointError(f"merged model at {path} generated no tokens")
    return describe_tokens(tokenizer, new_tokens.tolist())


def describe_tokens(tokenizer, ids: list[int]) -> str:
    """Generated ids as text; where the text is empty (special tokens only, as an untrained model often
    gives, or ids past the tokenizer's vocabulary, as a model whose vocabulary is padded past it can),
    the special tokens' own text, else the ids themselves, so that a check shows the model generated."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.strip():
        return text
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if text.strip():
        return text
    shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
    return f"<{len(ids)} token(s) with no text in the tokenizer ({len(tokenizer)} ids): {shown}>"
