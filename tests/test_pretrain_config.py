"""Unit tier: pretraining configs against verl's own Hydra config, token shards, packed windows, FLOPs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridge_ray import pretrain
from bridge_ray.errors import ConfigError
from bridge_ray.pretrain.dataset import PackedTextDataset
from bridge_ray.pretrain.model import SHAPES, flops_per_token, num_params, peak_flops
from bridge_ray.pretrain.tokens import shard_path, tokenize_file, tokenize_files

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path, *overrides) -> pretrain.PretrainConfig:
    cfg = pretrain.pretrain_tiny_cpu(str(tmp_path / "tok"), [str(tmp_path / "a.jsonl")], [], str(tmp_path / "run"))
    return pretrain.apply_overrides(cfg, list(overrides))


@pytest.mark.parametrize("preset", sorted(pretrain.PRESETS))
def test_presets_compose_against_verls_config(preset, tmp_path):
    from bridge_ray.sft.worker import compose_verl_config

    make = pretrain.PRESETS[preset]
    cfg = (make(str(tmp_path / "tok"), [str(tmp_path / "a.jsonl")], [], str(tmp_path / "run"))
           if preset == "pretrain_tiny_cpu" else make(str(tmp_path / "tok"), [str(tmp_path / "a.jsonl")], str(tmp_path / "run")))
    overrides = pretrain.to_verl_overrides(pretrain.validate(cfg), [str(tmp_path / "a.bin")], [], total_epochs=3)
    config = compose_verl_config(overrides)
    assert config.data.custom_cls.path == "pkg://bridge_ray.pretrain.dataset"
    assert config.data.custom_cls.name == "PackedTextDataset"
    assert config.data.max_length == cfg.data.seq_len and config.model.use_remove_padding is False
    assert config.optim.lr_scheduler_type == "cosine" and list(config.optim.betas) == [0.9, 0.95]
    assert config.optim.lr_warmup_steps == cfg.optim.warmup_steps
    assert config.trainer.total_training_steps == cfg.trainer.total_steps and config.trainer.total_epochs == 3
    precision = config.engine.get("mixed_precision")
    assert (dict(precision) if precision else None) == ({"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
                                                        if preset == "pretrain_tiny_cpu" else None)
    assert config.model.use_fused_kernels is True and config.model.fused_kernel_options.impl_backend == "torch"
    assert config.engine.reshard_after_forward is True
    off = pretrain.apply_overrides(cfg, ["pretrain.workers.reshard_after_forward=false"])
    assert compose_verl_config(pretrain.to_verl_overrides(off, [str(tmp_path / "a.bin")])).engine.reshard_after_forward is False
    assert config.model.use_liger is False
    if cfg.workers.use_gpu:  # liger's layer kernels beside verl's fused log-probs (the torch backend stays)
        liger = compose_verl_config(pretrain.to_verl_overrides(
            pretrain.validate(pretrain.apply_overrides(cfg, ["pretrain.model.liger=true"])), [str(tmp_path / "a.bin")]))
        assert liger.model.use_liger is True and liger.model.use_fused_kernels is True
        assert liger.model.fused_kernel_options.impl_backend == "torch"


def test_liger_on_workers_without_it_is_one_line():
    from bridge_ray.platforms.hardware import Hardware, liger_missing

    setting, fix = "pretrain.model.liger=true", "pretrain.model.liger=false"
    assert liger_missing(setting, fix, Hardware(gpu="NVIDIA H100 80GB HBM3", triton=True)) == (
        "pretrain.model.liger=true needs liger-kernel on the workers (NVIDIA H100 80GB HBM3 has none): pip install "
        "liger-kernel there, or set pretrain.model.liger=false")
    assert liger_missing(setting, fix, Hardware(gpu="NVIDIA H100 80GB HBM3", liger=True)) is None
    assert liger_missing(setting, fix, Hardware()) is None  # no GPU visible to the probe: nothing to say


def test_bad_values_are_listed_together(tmp_path):
    cfg = tiny(tmp_path, "model.shape=huge", "data.global_batch_size=6", "optim.warmup_steps=20",
               "trainer.output_dir=run", "workers.strategy=fsdp", "model.liger=true", "trainer.test_freq=8")
    with pytest.raises(ConfigError) as err:
        pretrain.validate(cfg)
    assert err.value.problems == [
        "pretrain.model.shape='huge' is not known: choose from tiny, 0.1b, 1b",
        "pretrain.model.liger=true needs GPU workers (liger-kernel's kernels are Triton): set pretrain.model.liger=false",
        "pretrain.data.global_batch_size=6 must split into workers.num_workers=2 equal shares, each a multiple of "
        "data.micro_batch_size_per_worker=4",
        "pretrain.workers.strategy=fsdp (FSDP1) runs on GPU workers only: set pretrain.workers.strategy=fsdp2 for "
        "CPU workers (workers.gpus_per_worker=0)",
        "pretrain.trainer.output_dir='run' must be an absolute path (relative paths land in Ray's unpacked working_dir)",
        "pretrain.optim.warmup_steps=20 must be below trainer.total_steps=16",
        "pretrain.trainer.test_freq=8 validates on pretrain.data.val_files, which is empty: give "
        "pretrain.data.val_files=[/abs/val_file], or set pretrain.trainer.test_freq=-1",
    ]


@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_reaches_the_optimizer_verl_builds(fused, tmp_path):
    import torch
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config.optimizer import build_optimizer

    from bridge_ray.sft.worker import compose_verl_config

    cfg = pretrain.validate(tiny(tmp_path, f"optim.fused={str(fused).lower()}"))
    config = compose_verl_config(pretrain.to_verl_overrides(cfg, [str(tmp_path / "a.bin")], [], total_epochs=1))
    optimizer = build_optimizer(torch.nn.Linear(4, 4).parameters(), omega_conf_to_dataclass(config.optim))
    assert bool(optimizer.defaults.get("fused")) is fused and optimizer.defaults["betas"] == (0.9, 0.95)


def test_gpu_presets_take_every_gpu_of_the_cluster_and_cpu_workers_need_a_count(tmp_path):
    assert pretrain.pretrain_1b("/t", ["/a.jsonl"], "/o").workers.num_workers == "auto"
    assert pretrain.pretrain_0p1b("/t", ["/a.jsonl"], "/o").workers.num_workers == "auto"
    with pytest.raises(ConfigError) as err:
        pretrain.validate(tiny(tmp_path, "workers.num_workers=auto"))
    assert err.value.problems == ["pretrain.workers.num_workers=auto counts the cluster's GPUs, but these are CPU "
                                  "workers (workers.gpus_per_worker=0): set pretrain.workers.num_workers=N"]


def test_token_shards_and_packed_windows(tmp_path):
    from transformers import AutoTokenizer

    from bridge_ray.models.assets import build_tokenizer

    build_tokenizer(tmp_path / "tok", ["hello world, once upon a time"] * 50, vocab_size=300)
    source = tmp_path / "a.jsonl"
    source.write_text("".join(json.dumps({"text": f"doc {i} hello world"}) + "\n" for i in range(20)))
    shard = tokenize_file(source, tmp_path / "tok", tmp_path / "tokens")
    assert shard.path == shard_path(source, tmp_path / "tokens") and shard.dtype == "uint16" and shard.num_documents == 20
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    tokens = np.memmap(shard.path, dtype=shard.dtype, mode="r")
    first = [tok.bos_token_id, *tok("doc 0 hello world", add_special_tokens=False).input_ids, tok.eos_token_id]
    assert tokens[:len(first)].tolist() == first and len(tokens) == shard.num_tokens
    mtime = shard.path.stat().st_mtime_ns
    assert tokenize_file(source, tmp_path / "tok", tmp_path / "tokens") == shard  # reused, not rewritten
    assert shard.path.stat().st_mtime_ns == mtime
    # current shards are read by the driver itself: no Ray task (no Ray at all here), nothing rewritten
    assert tokenize_files((str(source),), tmp_path / "tok", tmp_path / "tokens") == [shard]
    assert shard.path.stat().st_mtime_ns == mtime
    # two shards read as one stream: windows of 8 overlapping by one token, across the shard boundary
    second = tokenize_file(write(tmp_path / "b.jsonl", ["b1 b2", "b3"]), tmp_path / "tok", tmp_path / "tokens")
    data = PackedTextDataset([str(shard.path), str(second.path)], config={"max_length": 8})
    stream = np.concatenate([tokens, np.memmap(second.path, dtype=second.dtype, mode="r")])
    assert len(data) == (len(stream) - 1) // 7
    for i in range(len(data)):
        item = data[i]
        assert item["input_ids"].tolist() == stream[i * 7:i * 7 + 8].tolist()
        assert item["loss_mask"].tolist() == [0] + [1] * 7 and item["position_ids"].tolist() == list(range(8))
    assert len(PackedTextDataset([str(shard.path)], config={"max_length": 8}, max_samples=3)) == 3


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_model_flops_follow_torchtitans_convention():
    llama_1b = {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192, "num_attention_heads": 32,
                "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}
    assert num_params(llama_1b) == 1_235_814_400  # meta-llama/Llama-3.2-1B
    assert flops_per_token(llama_1b, 2048) == 6 * 1_235_814_400 + 12 * 16 * 32 * 64 * 2048
    assert peak_flops("NVIDIA H200") == 989.4e12 and peak_flops("CPU") is None
    assert set(SHAPES) == {"tiny", "0.1b", "1b"}


def test_recipe_dry_run_and_bad_override(tmp_path):
    env = {**__import__("os").environ, "BRIDGE_RAY_HOME": str(tmp_path)}
    shown = subprocess.run([sys.executable, "recipes/pretrain.py", "--dry-run", "pretrain.trainer.total_steps=4",
                            "pretrain.optim.warmup_steps=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "trainer.total_training_steps=4" in json.loads(shown.stdout)["verl_overrides"]
    bad = subprocess.run([sys.executable, "recipes/pretrain.py", "pretrain.data.seq_len=4", "preset=pretrain_tiny_cpu"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (bad.returncode, bad.stderr) == (2, "error: pretrain.data.seq_len=4 must be >= 8\n")


def test_fused_log_probs_keep_the_batch_shape_of_fixed_length_sequences(tmp_path):
    """``pretrain.model.fused_kernels`` hands verl the torch backend: for an unpacked (batch, sequence)
    input its log-probs stay (batch, sequence), which verl's ``prepare_model_outputs`` indexes. verl
    0.9.1's Triton backend flattens them (found on an H200); Triton has no CPU kernel, so that side is
    pinned through the override bridge-ray writes, not run here."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from verl.models.transformers.monkey_patch import patch_forward_with_backends

    torch.manual_seed(0)
    model_cls = type("PatchedLlama", (LlamaForCausalLM,), {})  # verl patches the class: keep it private
    model = model_cls(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="torch")
    ids = torch.randint(0, 64, (3, 16))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), return_dict=True)
    assert out.log_probs.shape == (3, 16)
    reference = torch.log_softmax(LlamaForCausalLM.forward(model, input_ids=ids).logits.float(), -1)
    rolled = torch.roll(ids, shifts=-1, dims=-1)
    expected = reference.gather(-1, rolled.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.log_probs.float(), expected, atol=1e-4)

    cfg = tiny(tmp_path, "model.fused_kernels=true")
    overrides = pretrain.to_verl_overrides(cfg, [str(tmp_path / "a.bin")])
    assert "model.use_fused_kernels=True" in overrides and "model.fused_kernel_options.impl_backend=torch" in overrides


def test_resuming_checkpoints_of_another_init_model_is_refused_before_anything_is_written(tmp_path):
    """Resubmitted with another tokenizer, a run rebuilt init/ for it, then verl failed on the checkpoint's
    embedding size with a traceback, and the run folder no longer matched itself."""
    from bridge_ray.pretrain.model import INIT_STAMP, init_stamp
    from bridge_ray.pretrain.trainer import refuse_other_init

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"vocab": 320}')
    cfg = tiny(tmp_path)
    refuse_other_init(cfg)  # a new run: nothing to compare
    init = tmp_path / "run" / "init"
    init.mkdir(parents=True)
    (init / INIT_STAMP).write_text(json.dumps(init_stamp("tiny", tok, 128)))
    (tmp_path / "run" / "checkpoints" / "global_step_2").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")  # verl's tracker
    refuse_other_init(cfg)  # the same init model: resumes
    (tok / "tokenizer.json").write_text('{"vocab": 400}')  # the tokenizer trained again into the same folder
    with pytest.raises(ConfigError) as err:
        refuse_other_init(pretrain.apply_overrides(cfg, ["data.seq_len=64"]))
    assert str(err.value) == (f"{tmp_path / 'run'} holds checkpoints of a model built otherwise (the tokenizer's "
                              "vocabulary, data.seq_len changed): resuming needs the same; give a new "
                              "pretrain.trainer.output_dir to start over, or set the run's settings back")
    refuse_other_init(pretrain.apply_overrides(cfg, ["data.seq_len=64", "trainer.resume_mode=disable"]))
    assert json.loads((init / INIT_STAMP).read_text())["seq_len"] == 128  # nothing was rebuilt
