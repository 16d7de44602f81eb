"""Unit tier: SFTConfig presets, overrides, validation messages, verl key names (no cluster)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_ray import sft
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.platforms import cpu_env
from bridge_ray.sft.config import resolve_workers, validate
from bridge_ray.sft.preflight import check_resources

REPO = Path(__file__).resolve().parents[1]


def tiny(**changes) -> sft.SFTConfig:
    cfg = sft.sft_tiny_cpu("/m", "/d/train.parquet", "/d/val.parquet", "/out")
    return sft.apply_overrides(cfg, [f"{k}={v}" for k, v in changes.items()])


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return hydra_compose(config_name="sft_trainer_engine", overrides=overrides)


@pytest.mark.parametrize("preset", [
    lambda: sft.sft_tiny_cpu("/m", "/d/train.parquet", "/d/val.parquet", "/out"),
    sft.sft_gsm8k_llama1b_seed,
], ids=["sft_tiny_cpu", "sft_gsm8k_llama1b_seed"])
def test_overrides_compose_against_verl(preset):
    cfg = validate(preset())
    verl = compose(sft.to_verl_overrides(cfg))
    assert verl.model.path == cfg.model.path
    assert list(verl.data.train_files) == list(cfg.data.train_files)
    assert verl.data.train_batch_size == cfg.data.global_batch_size
    assert verl.data.micro_batch_size_per_gpu == cfg.data.micro_batch_size_per_worker
    assert verl.data.pad_mode == "no_padding" and verl.data.use_dynamic_bsz is False
    assert verl.model.override_config.attn_implementation == "sdpa" and verl.model.external_lib is None
    assert verl.model.use_remove_padding is False
    assert verl.model.use_liger is False and verl.model.use_fused_kernels is False
    assert verl.engine.strategy == "fsdp2" and verl.engine.use_torch_compile is False
    assert verl.engine.reshard_after_forward is True
    assert verl.optim.lr == cfg.optim.lr
    assert verl.trainer.default_local_dir == cfg.trainer.output_dir + "/checkpoints"
    assert verl.trainer.resume_mode == "auto"
    assert list(verl.trainer.logger) == list(cfg.trainer.loggers)


ODD = "/tmp/out dir/ünï, a=b 'q' \\x"  # every character Hydra refuses bare, or reads as something else


def test_paths_and_names_hydra_would_misread_reach_verl_unchanged():
    """A path with a space, a comma, '=', a quote or a non-ASCII letter passed every check, then verl's Hydra
    refused it inside the workers (an empty "worker errors:" at the end of the run)."""
    cfg = validate(sft.sft_tiny_cpu(ODD + "/model", ODD + "/train.parquet", ODD + "/val.parquet", ODD + "/run"))
    cfg = sft.apply_overrides(cfg, ["trainer.project_name=my project, v2", "trainer.experiment_name=1e5"])
    verl = compose(sft.to_verl_overrides(cfg))
    assert verl.model.path == ODD + "/model"
    assert list(verl.data.train_files) == [ODD + "/train.parquet"] and list(verl.data.val_files) == [ODD + "/val.parquet"]
    assert verl.trainer.default_local_dir == ODD + "/run/checkpoints"
    assert (verl.trainer.project_name, verl.trainer.experiment_name) == ("my project, v2", "1e5")


def test_seed_preset_keeps_the_seeds_settings():
    cfg = sft.sft_gsm8k_llama1b_seed()
    assert cfg.model.path.endswith("Llama-3.2-1B-Instruct")
    assert cfg.data.micro_batch_size_per_worker == 8 and cfg.trainer.total_epochs == 2
    assert cfg.workers.use_gpu and cfg.trainer.output_dir.startswith("/")
    verl = compose(sft.to_verl_overrides(cfg))
    assert verl.model.enable_gradient_checkpointing is True
    assert verl.trainer.device == "cuda" and verl.trainer.total_training_steps is None
    assert verl.data.val_files[0].endswith("gsm8k/val.parquet")


def test_gpu_preset_is_fast_by_default_on_the_same_batches():
    fast, seed = sft.sft_gsm8k_llama1b(), sft.sft_gsm8k_llama1b_seed()
    assert (fast.model.attn_implementation, fast.model.kernels, fast.data.max_tokens_per_worker) == ("auto",) * 3
    assert fast.model.use_remove_padding and not fast.model.gradient_checkpointing
    assert not fast.workers.reshard_after_forward
    # the same samples in the same steps: global batch, epochs, optimiser, seed
    for group in ("optim", "trainer"):
        assert getattr(fast, group) == getattr(seed, group)
    assert (fast.data.global_batch_size, fast.data.train_files) == (seed.data.global_batch_size, seed.data.train_files)


H200_PLAIN = sft.Hardware(gpu="NVIDIA H200", torch_varlen=True, triton=True)


@pytest.mark.parametrize("hardware, attention, kernels, tokens", [
    (H200_PLAIN, "torch_varlen", "fused", 16384),
    # liger alone leaves verl's token-by-token log-prob loop in place (4.3x slower on an H100): fused wins
    (sft.Hardware(gpu="NVIDIA H200", torch_varlen=True, triton=True, liger=True), "torch_varlen", "fused", 16384),
    (sft.Hardware(gpu="NVIDIA H100", flash_attn=True, torch_varlen=True, triton=True, liger=True),
     "flash_attention_2", "fused", 16384),
    (sft.Hardware(gpu="Tesla V100", triton=True), "sdpa", "fused", 4096),  # no varlen kernel before sm80
    (sft.Hardware(gpu="some GPU"), "sdpa", "none", 4096),
    (None, "torch_varlen", "fused", 16384),  # unprobed (dry runs): hardware.UNPROBED_GPU
], ids=["h200", "h200+liger", "flash-attn+liger", "v100", "bare", "unprobed"])
def test_auto_picks_the_fastest_correct_settings(hardware, attention, kernels, tokens):
    cfg = validate(sft.resolve(sft.sft_gsm8k_llama1b(), hardware))
    assert (cfg.model.attn_implementation, cfg.model.kernels, cfg.data.max_tokens_per_worker) == (attention, kernels, tokens)
    assert sft.resolve(cfg, hardware) == cfg


H100 = sft.Hardware(gpu="NVIDIA H100 80GB HBM3", torch_varlen=True, triton=True, liger=True)


@pytest.mark.parametrize("overrides, hardware, message", [
    (["sft.model.kernels=liger+fused"], H200_PLAIN,
     "sft.model.kernels=liger+fused needs liger-kernel on the workers (NVIDIA H200 has none): pip install liger-kernel "
     "there, or set sft.model.kernels=fused"),
    (["sft.model.kernels=liger"], H200_PLAIN,
     "sft.model.kernels=liger needs liger-kernel on the workers (NVIDIA H200 has none): pip install liger-kernel there, "
     "or set sft.model.kernels=fused"),
    (["sft.model.attn_implementation=flash_attention_2"], H200_PLAIN,
     "sft.model.attn_implementation=flash_attention_2 needs flash-attn on the workers (NVIDIA H200 has none): install "
     "flash-attn there, or set sft.model.attn_implementation=auto"),
    (["sft.model.attn_implementation=torch_varlen"], sft.Hardware(gpu="Tesla V100", triton=True),
     "sft.model.attn_implementation=torch_varlen needs torch >= 2.10 with its varlen kernel on an Ampere or newer GPU "
     "(Tesla V100 lacks it): set sft.model.attn_implementation=auto"),
], ids=["liger+fused-liger-missing", "liger-missing", "flash-attn-missing", "varlen-pre-ampere"])
def test_an_explicit_speed_setting_the_probed_workers_lack_is_one_line(overrides, hardware, message):
    from bridge_ray.sft import hardware as hw

    cfg = validate(sft.resolve(sft.apply_overrides(sft.sft_gsm8k_llama1b(), overrides), hardware))
    assert hw.needs_probe(sft.apply_overrides(sft.sft_gsm8k_llama1b(), overrides))
    with pytest.raises(PreflightError) as err:
        hw.check(cfg, hardware)
    assert str(err.value) == message


def test_what_the_probed_workers_have_passes_the_check():
    from bridge_ray.sft import hardware as hw

    ok = dataclasses.replace(H100, flash_attn=True)  # liger+fused needs no CUTLASS DSL: verl's Triton log-prob
    for kernels in ("liger", "fused", "liger+fused", "none"):
        for attention in ("flash_attention_2", "torch_varlen", "sdpa"):
            cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(), [f"sft.model.kernels={kernels}",
                                                                f"sft.model.attn_implementation={attention}"])
            hw.check(validate(sft.resolve(cfg, ok)), ok)
    hw.check(validate(sft.resolve(sft.sft_gsm8k_llama1b(), None)), None)  # dry runs: nothing probed, nothing checked
    assert not hw.needs_probe(tiny())  # CPU workers run no probe


def test_auto_on_cpu_workers_keeps_what_runs_on_gloo():
    cfg = tiny(**{"model.attn_implementation": "auto", "model.kernels": "auto", "model.use_remove_padding": "true",
                  "data.max_tokens_per_worker": "auto"})
    got = validate(sft.resolve(cfg, sft.Hardware(gpu="NVIDIA H200", flash_attn=True, liger=True, triton=True)))
    assert (got.model.attn_implementation, got.model.kernels, got.data.max_tokens_per_worker) == ("sdpa", "none", 4096)


def test_auto_without_packing_stays_padded():
    cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(), ["sft.model.use_remove_padding=false"])
    got = sft.resolve(cfg, H200_PLAIN)
    assert (got.model.attn_implementation, got.data.max_tokens_per_worker) == ("sdpa", None)


@pytest.mark.parametrize("attention", ["flash_attention_2", "torch_varlen", "sdpa", "eager"])
@pytest.mark.parametrize("kernels", ["liger", "fused", "liger+fused", "none"])
def test_every_speed_field_composes_against_verl(attention, kernels):
    """Each new field reaches verl's own Hydra config under the key and with the value verl reads."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = validate(sft.apply_overrides(sft.sft_gsm8k_llama1b(), [
        f"sft.model.attn_implementation={attention}", f"sft.model.kernels={kernels}", "sft.data.max_tokens_per_worker=8192",
        "sft.model.gradient_checkpointing=true", "sft.workers.reshard_after_forward=true"]))
    verl = compose(sft.to_verl_overrides(cfg))
    assert verl.model.override_config.attn_implementation == attention
    assert verl.model.external_lib == ("bridge_ray.platforms.attention" if attention == "torch_varlen" else None)
    assert verl.model.use_remove_padding is True and verl.model.enable_gradient_checkpointing is True
    assert verl.model.use_liger is (kernels in ("liger", "liger+fused"))
    assert verl.model.use_fused_kernels is (kernels in ("fused", "liger+fused"))
    if verl.model.use_fused_kernels:
        assert verl.model.fused_kernel_options.impl_backend == "triton"  # liger+fused too: no CUTLASS DSL on Hopper
    assert verl.data.use_dynamic_bsz is True and verl.data.max_token_len_per_gpu == 8192
    engine = omega_conf_to_dataclass(verl.engine)  # verl's FSDPEngineConfig: types checked by verl
    assert engine.reshard_after_forward is True


def test_fast_preset_composes_against_verl():
    verl = compose(sft.to_verl_overrides(sft.resolve(sft.sft_gsm8k_llama1b(), H200_PLAIN)))
    assert verl.model.override_config.attn_implementation == "torch_varlen"
    assert verl.model.use_remove_padding is True and verl.model.enable_gradient_checkpointing is False
    assert verl.data.use_dynamic_bsz is True and verl.data.max_token_len_per_gpu == 16384
    assert verl.engine.reshard_after_forward is False


@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_reaches_the_optimizer_verl_builds(fused):
    """sft.optim.fused=true: verl's own optimizer builder makes torch's fused AdamW; false leaves verl's default."""
    import torch
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config.optimizer import build_optimizer

    verl = compose(sft.to_verl_overrides(validate(tiny(**{"sft.optim.fused": str(fused).lower()}))))
    optimizer = build_optimizer(torch.nn.Linear(4, 4).parameters(), omega_conf_to_dataclass(verl.optim))
    assert isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults.get("fused")) is fused
    assert verl.optim.override_optimizer_config == ({"fused": True} if fused else None)


def test_dotted_overrides_apply_and_stay_frozen():
    cfg = tiny(**{"sft.optim.lr": "2e-5", "sft.workers.num_workers": "4", "trainer.loggers": "[console,wandb]"})
    assert cfg.optim.lr == 2e-5 and cfg.workers.num_workers == 4
    assert cfg.trainer.loggers == ("console", "wandb")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0


def test_unknown_override_names_the_group_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'sft.optim.learning_rate': OptimConfig has "
                                          r"clip_grad, fused, lr, warmup_ratio, weight_decay"):
        tiny(**{"sft.optim.learning_rate": "1"})


@pytest.mark.parametrize("changes, message", [
    ({"model.path": "''"}, "model.path is empty: set sft.model.path=/abs/path/to/hf-model"),
    ({"trainer.output_dir": "runs/x"}, "trainer.output_dir='runs/x' must be an absolute path "
                                       "(relative paths land in Ray's unpacked working_dir)"),
    ({"data.global_batch_size": "7"}, "data.global_batch_size=7 must be divisible by workers.num_workers=2 "
                                      "(each worker takes an equal share)"),
    ({"data.micro_batch_size_per_worker": "8"}, "data.micro_batch_size_per_worker=8 is larger than the "
                                                "per-worker batch 4 (global_batch_size / num_workers): "
                                                "lower it or raise the batch"),
    ({"data.micro_batch_size_per_worker": "3"}, "per-worker batch 4 must be divisible by "
                                                "data.micro_batch_size_per_worker=3"),
    ({"data.pad_mode": "right"}, "data.pad_mode='right': verl 0.9.1's FSDP engine trains only with no_padding"),
    ({"model.attn_implementation": "flash_attention_2"}, "model.attn_implementation=flash_attention_2 runs on GPUs "
                                                          "only: set sft.model.attn_implementation=sdpa for CPU workers "
                                                          "(workers.gpus_per_worker=0)"),
    ({"model.attn_implementation": "torch_varlen", "model.use_remove_padding": "true"},
     "model.attn_implementation=torch_varlen runs on GPUs only: set sft.model.attn_implementation=sdpa for CPU "
     "workers (workers.gpus_per_worker=0)"),
    ({"model.kernels": "liger"}, "model.kernels=liger runs on GPUs only (Triton): set sft.model.kernels=none for CPU "
                                 "workers (workers.gpus_per_worker=0)"),
    ({"data.max_tokens_per_worker": "256"}, "data.max_tokens_per_worker=256 is below data.max_length=512: a whole "
                                            "sample must fit in one micro batch; raise it, or set "
                                            "sft.data.max_tokens_per_worker=null"),
    ({"model.attn_implementation": "flash-attn"}, "model.attn_implementation='flash-attn' is not one of 'auto', "
                                                  "'flash_attention_2', 'torch_varlen', 'sdpa', 'eager'"),
    ({"model.kernels": "triton"}, "model.kernels='triton' is not one of 'auto', 'liger', 'fused', 'liger+fused', "
                                  "'none'"),
    ({"data.max_tokens_per_worker": "lots"}, "data.max_tokens_per_worker='lots' is not an integer"),
    ({"trainer.save_freq": "0"}, "trainer.save_freq=0: use -1 (off) or a step count >= 1"),
    ({"trainer.loggers": "[console,mlflow]"}, "trainer.loggers has ['mlflow']: choose from "
                                              "console, wandb, file, tensorboard"),
    ({"data.prompt_key": "q"}, "data.prompt_key and data.response_key go together: set both or neither"),
    ({"workers.num_workers": "0"}, "workers.num_workers=0 must be >= 1"),
    ({"workers.cpus_per_worker": "0"}, "workers.cpus_per_worker=0 must be >= 1"),
    ({"data.micro_batch_size_per_worker": "0"}, "data.micro_batch_size_per_worker=0 must be >= 1"),
    ({"trainer.total_steps": "0"}, "trainer.total_steps=0: give a step count >= 1, or null to train for "
                                   "trainer.total_epochs"),
    ({"workers.num_workers": "auto"}, "sft.workers.num_workers=auto counts the cluster's GPUs, but these are CPU "
                                      "workers (workers.gpus_per_worker=0): set sft.workers.num_workers=N"),
    ({"workers.num_workers": "many"}, "workers.num_workers='many' is not an integer"),
    ({"workers.strategy": "fsdp"}, "sft.workers.strategy=fsdp (FSDP1) runs on GPU workers only: set "
                                   "sft.workers.strategy=fsdp2 for CPU workers (workers.gpus_per_worker=0)"),
    ({"model.compile_layers": "true", "workers.strategy": "fsdp"},
     "model.compile_layers=true needs workers.strategy=fsdp2 (FSDP1 wraps each layer's forward in its own): set "
     "sft.workers.strategy=fsdp2, or sft.model.compile_layers=false"),
    ({"model.compile_layers": "yes please"}, "model.compile_layers='yes please' is not a boolean: use true or false"),
    ({"data.val_files": "[]", "trainer.test_freq": "2"},
     "sft.trainer.test_freq=2 validates on sft.data.val_files, which is empty: give sft.data.val_files=[/abs/val_file], "
     "or set sft.trainer.test_freq=-1"),
    ({"optim.lr": "-1"}, "optim.lr=-1.0 must be > 0, e.g. sft.optim.lr=1e-5"),
    ({"optim.warmup_ratio": "1.5"}, "optim.weight_decay=0.01 must be >= 0, optim.clip_grad=1.0 > 0 and "
                                    "optim.warmup_ratio=1.5 in [0, 1)"),
])
def test_validation_messages(changes, message):
    with pytest.raises(ConfigError) as err:
        validate(tiny(**changes))
    assert message in err.value.problems


@pytest.mark.parametrize("value, shown", [("nan", "'nan'"), (".inf", "inf"), ("1e999", "'1e999'"), ("-.inf", "-inf")])
def test_a_number_that_is_not_finite_is_refused(value, shown):
    with pytest.raises(ConfigError) as err:
        tiny(**{"sft.optim.lr": value})
    assert err.value.problems == [f"sft.optim.lr={shown} is not a finite number"]


def test_an_override_that_is_not_valid_yaml_is_one_line_about_the_value():
    """An unclosed bracket or quote: YAML's own message spans lines with a caret under the value."""
    with pytest.raises(ConfigError) as err:
        tiny(**{"sft.optim.lr": "[1,2"})
    assert err.value.problems == ["sft.optim.lr=[1,2: the value is not valid YAML (expected ',' or ']', but got "
                                  "'<stream end>'): close its brackets or quotes, or pass a string quoted, e.g. "
                                  "'sft.optim.lr=\"text\"'"]


def test_varlen_attention_needs_packing_on_gpus():
    cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(), ["sft.model.attn_implementation=torch_varlen",
                                                        "sft.model.use_remove_padding=false"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.problems == ["model.attn_implementation=torch_varlen needs packed batches: set "
                                  "sft.model.use_remove_padding=true, or sft.model.attn_implementation=sdpa"]


def test_invalid_combination_is_one_line_and_exit_2_from_the_recipe(bridge_home):
    """What a user sees running the recipe with a bad combination: one line, exit 2, nothing started."""
    out = subprocess.run([sys.executable, str(REPO / "recipes" / "sft_gsm8k.py"), "--dry-run", "preset=sft_gsm8k_llama1b",
                          "sft.model.attn_implementation=torch_varlen", "sft.model.use_remove_padding=false"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: model.attn_implementation=torch_varlen needs packed batches: set "
                                       "sft.model.use_remove_padding=true, or sft.model.attn_implementation=sdpa"]
    assert out.stdout == ""


def test_dry_run_shows_the_resolved_fast_settings(bridge_home):
    shown = sft.dry_run(sft.sft_gsm8k_llama1b())
    assert shown["sft"]["model"]["attn_implementation"] == "torch_varlen" and shown["probed_at_run_time"] is True
    assert "data.max_token_len_per_gpu=16384" in shown["verl_overrides"]
    assert shown["speed"] == ("speed (GPU workers): packed micro batches of up to 16384 tokens, attention torch_varlen, "
                              "kernels fused, gradient checkpointing off, FSDP reshard after forward off")
    seed = sft.dry_run(sft.sft_gsm8k_llama1b_seed())
    assert seed["speed"].startswith("speed (GPU workers): padded micro batches of 8 samples, attention sdpa, kernels none")


def test_validation_collects_every_problem():
    with pytest.raises(ConfigError) as err:
        validate(tiny(**{"model.path": "''", "trainer.output_dir": "rel", "trainer.test_freq": "-5"}))
    assert len(err.value.problems) == 3


def node(cpu: float, gpu: float = 0) -> dict:
    return {"Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


def test_resources_fit_per_node():
    check_resources(tiny(), [node(1), node(1)])
    with pytest.raises(PreflightError, match=r"^2 workers x \(1 CPU, 0 GPU\) do not fit: the cluster has 1 CPU "
                                             r"and 0 GPU on 1 node\(s\), room for 1 worker\(s\); lower "
                                             r"sft.workers.num_workers / cpus_per_worker / gpus_per_worker "
                                             r"or add nodes$"):
        check_resources(tiny(), [node(1)])


def test_resources_count_gpus():
    cfg = sft.apply_overrides(sft.sft_gsm8k_llama1b(), ["sft.workers.num_workers=1"])
    check_resources(cfg, [node(16, 1)])
    with pytest.raises(PreflightError, match="1 workers x \\(8 CPU, 1 GPU\\) do not fit: the cluster has 16 CPU "
                                             "and 0 GPU"):
        check_resources(cfg, [node(16)])


def test_auto_workers_follow_the_clusters_gpus():
    """The GPU preset's ``num_workers=auto``: one worker per GPU of every node, whatever the recipe says."""
    workers = sft.sft_gsm8k_llama1b().workers
    assert workers.num_workers == "auto"
    assert resolve_workers(workers, [node(16, 1)], "sft").num_workers == 1
    assert resolve_workers(workers, [node(128, 8), node(128, 8), node(8)], "sft").num_workers == 16
    two_each = dataclasses.replace(workers, gpus_per_worker=2)
    assert resolve_workers(two_each, [node(128, 8), node(64, 3)], "sft").num_workers == 5
    assert resolve_workers(dataclasses.replace(workers, num_workers=3), [node(16, 1)], "sft").num_workers == 3
    with pytest.raises(PreflightError, match=r"^sft.workers.num_workers=auto found no GPU on the cluster \(1 node\(s\)\): "
                                             r"start it on GPU nodes, or run on CPU workers with "
                                             r"sft.workers.gpus_per_worker=0 sft.workers.num_workers=N$"):
        resolve_workers(workers, [node(16)], "sft")
    cfg = validate(sft.sft_gsm8k_llama1b())  # at submit the count is unknown: the batch is checked for one worker
    with pytest.raises(ConfigError) as err:  # ... and for the count the cluster gives, at the run's preflight
        validate(dataclasses.replace(cfg, workers=resolve_workers(cfg.workers, [node(64, 3)], "sft")))
    assert err.value.problems == ["data.global_batch_size=64 must be divisible by workers.num_workers=3 "
                                  "(each worker takes an equal share)"]


def test_cpu_env_selects_the_plugin():
    assert cpu_env() == {"VERL_USE_EXTERNAL_MODULES": "bridge_ray.platforms.value_model,bridge_ray.platforms.cpu",
                         "VERL_PLATFORM": "cpu", "VERL_ENGINE_DEVICE": "cuda", "GOMP_SPINCOUNT": "1000"}


def test_cpu_platform_answers_what_verl_asks(monkeypatch):
    from verl.plugin.platform import PlatformRegistry

    import bridge_ray.platforms.cpu as cpu

    platform = PlatformRegistry.get("cpu")()
    assert platform.device_name == "cpu" and platform.current_device() == "cpu"
    assert platform.communication_backend_name() == "gloo"
    assert platform.device_module.get_device_name() == "CPU"
    assert platform.device_module.max_memory_allocated() == 0
    assert not platform.is_platform_available(use_smi_check=True)
    assert cpu._gloo_backend("cpu:gloo,cpu:gloo") == "gloo"
    assert cpu._gloo_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"


def test_connect_without_cluster_says_how_to_fix(monkeypatch):
    import ray

    from bridge_ray.sft import trainer

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)  # bridge_ray.cluster.driver.connect
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # as in a job's driver
    with pytest.raises(PreflightError, match=r"no Ray cluster to attach to \(Could not find any running Ray "
                                             r"instance\): submit with `bridge-ray submit` or start one with "
                                             r"`bridge-ray up`"):
        trainer.connect()


def test_a_recipe_run_outside_a_job_is_one_line_at_once_not_minutes_of_waiting(tmp_path):
    """`python recipes/sft_gsm8k.py` (the README's dry-run line without --dry-run) used to wait 10 minutes for a
    GCS, or attach to whichever one it found on the host (another user's)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    out = subprocess.run([sys.executable, "recipes/sft_gsm8k.py", "preset=sft_tiny_cpu",
                          f"sft.trainer.output_dir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == ("error: this trains on a cluster, inside a Ray job: submit it with `bridge-ray submit "
                          "recipes/sft_gsm8k.py --follow` (`python recipes/sft_gsm8k.py --dry-run` checks it here), or call "
                          "ray.init(address=...) first\n")
    assert not (tmp_path / "run").exists()


def test_step_line_format():
    from bridge_ray.sft.worker import format_step

    row = {"step": 3, "total_steps": 6, "loss": 2.31104, "val_loss": None, "lr": 1e-3, "tokens_per_s": 1234.4,
           "tokens_per_s_per_worker": 617.2, "mfu": 0.01234, "step_time_s": 1.5}
    assert format_step(row) == ("[bridge-ray] step 3/6 loss 2.3110 lr 1.00e-03 tokens/s 1234 (617/worker) "
                                "mfu 0.0123 1.50s")


@pytest.mark.parametrize("argv, expected", [
    ([], ("sft_tiny_cpu", [])),
    (["--", "sft.optim.lr=1e-5"], ("sft_tiny_cpu", ["sft.optim.lr=1e-5"])),
    (["preset=sft_gsm8k_llama1b", "sft.optim.lr=1e-5"], ("sft_gsm8k_llama1b", ["sft.optim.lr=1e-5"])),
    (["--preset", "sft_gsm8k_llama1b"], ("sft_gsm8k_llama1b", [])),
    (["--preset=sft_gsm8k_llama1b"], ("sft_gsm8k_llama1b", [])),
])
def test_recipe_args(argv, expected):
    assert sft.parse_args(argv, default_preset="sft_tiny_cpu") == expected


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'llama70b': choose from sft_gsm8k_llama1b, "
                                          "sft_gsm8k_llama1b_seed, sft_tiny_cpu"):
        sft.parse_args(["preset=llama70b"], default_preset="sft_tiny_cpu")


def test_run_dir_is_absolute_under_home_outputs(bridge_home):
    path = sft.run_dir("x")
    assert path.is_absolute() and path.parent == bridge_home.absolute() / "outputs"


def test_prompt_response_files_become_messages(tmp_path):
    import pandas as pd

    from bridge_ray.sft.trainer import prepare_data

    src = tmp_path / "pairs.parquet"
    pd.DataFrame({"q": ["what is 2 + 3?"] * 4, "a": ["5"] * 4}).to_parquet(src)
    cfg = sft.apply_overrides(tiny(), [f"data.train_files=[{src}]", "data.val_files=[]", "data.prompt_key=q",
                                       "data.response_key=a", f"trainer.output_dir={tmp_path}/run"])
    out = prepare_data(cfg)
    assert out.data.prompt_key is None and out.data.train_files == (f"{tmp_path}/run/data/train_0.parquet",)
    rows = pd.read_parquet(out.data.train_files[0])
    assert [m["role"] for m in rows["messages"][0]] == ["user", "assistant"]


def test_step_rows_count_the_training_threads_own_cpu_not_the_other_threads():
    """``thread_usage`` (in each SFT step row, both benchmark sides) is the calling thread's alone:
    Ray's and NCCL's threads in the same worker process are not in it (process CPU time has them)."""
    import threading

    from bridge_ray.sft.worker import thread_usage

    def spin(seconds: float) -> None:
        start = thread_usage()[0]
        while thread_usage()[0] - start < seconds:
            pass

    before = thread_usage()
    other = threading.Thread(target=spin, args=(0.3,))
    other.start()
    other.join()  # this thread waits: it burns (almost) nothing meanwhile
    middle = thread_usage()
    spin(0.2)
    after = thread_usage()
    assert middle[0] - before[0] < 0.1 and after[0] - middle[0] >= 0.2
    assert middle[1] > before[1]  # join blocked this thread: a voluntary switch


def test_a_step_clock_lap_is_the_time_since_the_last_lap_by_each_clock():
    """``StepClock.lap`` (bridge-ray's step rows and the benchmark's torchrun side) measures from the
    previous lap: a lap that burned CPU shows it; the lap after a wait shows wall time, little CPU."""
    import threading

    from bridge_ray.sft.worker import StepClock, thread_usage

    clock = StepClock()
    start = thread_usage()[0]
    while thread_usage()[0] - start < 0.2:
        pass
    busy = clock.lap()
    threading.Event().wait(0.2)
    idle = clock.lap()
    assert busy["thread_cpu_time_s"] >= 0.2 and busy["cpu_time_s"] >= 0.2
    assert busy["step_time_s"] >= busy["thread_cpu_time_s"] - 0.01
    assert idle["step_time_s"] >= 0.2 and idle["thread_cpu_time_s"] < 0.1
    assert set(idle["thread_switches"]) == {"voluntary", "involuntary"} and idle["thread_switches"]["voluntary"] >= 1


def test_a_failed_training_is_one_line_with_each_ranks_cause():
    from ray.train import ControllerError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from bridge_ray.sft.trainer import failure_summary

    cause = "Traceback (most recent call last):\n  File \"x.py\", line 1\nTypeError: 'NoneType' object is not iterable\n"
    err = WorkerGroupError("[Rank 0]\n" + cause, {0: RuntimeError(cause), 1: RuntimeError(cause),
                                                 2: RuntimeError("OSError: disk full")})
    assert str(err).splitlines()[0] == "Training failed due to worker errors:"  # what the line showed before
    assert failure_summary(err) == ("ranks 0, 1: TypeError: 'NoneType' object is not iterable; rank 2: OSError: "
                                    "disk full (the whole traceback is in the job's log)")
    assert failure_summary(ControllerError(ValueError("bad\nworse"))) == "worse (the whole traceback is in the job's log)"
    assert len(failure_summary(RuntimeError("x" * 5000))) == 600 + len(" (the whole traceback is in the job's log)")
