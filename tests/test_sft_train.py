"""Integration tier: real Ray, real verl SFT on CPU with a tiny Llama (2 cores, ~3 minutes).

    .venv/bin/python -m pytest tests/test_sft_train.py -q -x

Ray runs in-process (``ray.init(num_cpus=2)``) with auth off explicitly; the 2-node test
shuts it down and uses ``ray.cluster_utils.Cluster`` with 1 CPU per node, which forces
one worker onto each node. Tests run in file order; the 2-node test is last.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bridge_ray import sft
from bridge_ray.errors import ConfigError, PreflightError
from bridge_ray.platforms import cpu_env
from bridge_ray.sft.preflight import preflight

sys.path.insert(0, str(Path(__file__).parent))
from sft_helpers import build_assets, losses_from_log, losses_from_metrics  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    return build_assets(tmp_path_factory.mktemp("sft-assets"))


@pytest.fixture(scope="module")
def local_ray():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never another test's cluster
    yield
    ray.shutdown()


def tiny(assets, output_dir, *overrides) -> sft.SFTConfig:
    cfg = sft.sft_tiny_cpu(assets["model_dir"], assets["train"], assets["val"], str(output_dir))
    return sft.apply_overrides(cfg, list(overrides))


@pytest.fixture(scope="module")
def ray_run(assets, local_ray, tmp_path_factory) -> sft.SFTResult:
    """One 2-worker run on one node, shared by the tests that only read its outputs."""
    return sft.fit(tiny(assets, tmp_path_factory.mktemp("sft-run") / "run"))


def test_two_workers_match_torchrun(ray_run, assets, tmp_path):
    cfg = tiny(assets, tmp_path / "torchrun")
    env = {**os.environ, **cpu_env()}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "verl.trainer.sft_trainer",
         *sft.to_verl_overrides(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = losses_from_log(proc.stdout)
    got = losses_from_metrics(ray_run.output_dir / "metrics.json")
    assert sorted(expected) == list(range(1, 7))
    assert got == pytest.approx(expected, rel=1e-6)


def test_run_writes_config_metrics_and_steps(ray_run):
    out = ray_run.output_dir
    assert (out / "config.json").is_file() and (out / "verl_config.json").is_file()
    history = ray_run.metrics["history"]
    assert [row["step"] for row in history] == list(range(1, 7))
    assert all(row["tokens_per_s"] > 0 and row["lr"] == pytest.approx(1e-3) for row in history)
    assert history[2]["val_loss"] is not None and ray_run.metrics["final"]["step"] == 6


def test_merged_checkpoint_loads_and_generates(ray_run):
    from bridge_ray.models.checkpoints import check_hf_model, latest_checkpoint

    assert ray_run.checkpoint.name == "global_step_6"
    assert latest_checkpoint(ray_run.output_dir / "checkpoints") == ray_run.checkpoint
    assert (ray_run.hf_model / "model.safetensors").is_file()
    assert check_hf_model(ray_run.hf_model, max_new_tokens=4)


def test_killed_worker_resumes_from_checkpoint(ray_run, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGE_RAY_TEST_KILL_AT_STEP", "5")
    result = sft.fit(tiny(assets, tmp_path / "killed", "trainer.max_failures=1"))
    assert (tmp_path / "killed" / ".test_kill_done").is_file()
    # steps 1-4 from the first attempt, then 4-6 again after resuming from global_step_3
    assert result.metrics["attempts_steps"] == [1, 2, 3, 4, 4, 5, 6]
    assert result.checkpoint.name == "global_step_6"
    uninterrupted = losses_from_metrics(ray_run.output_dir / "metrics.json")
    assert losses_from_metrics(result.output_dir / "metrics.json") == pytest.approx(uninterrupted, rel=1e-6)


def test_walltime_saves_before_the_deadline_and_a_resubmit_resumes(ray_run, assets, tmp_path, monkeypatch):
    import time

    from bridge_ray.cluster import walltime

    # A deadline closer than one step + a save: the first step becomes the last, and verl saves it.
    monkeypatch.setenv(walltime.DEADLINE_ENV, str(int(time.time() + walltime.SAVE_S)))
    cut = sft.fit(tiny(assets, tmp_path / "walltime", "trainer.save_freq=-1"))
    assert cut.checkpoint.name == "global_step_1" and cut.metrics["attempts_steps"] == [1]
    monkeypatch.delenv(walltime.DEADLINE_ENV)
    resumed = sft.fit(tiny(assets, tmp_path / "walltime", "trainer.save_freq=-1", "trainer.total_steps=2"))
    assert resumed.checkpoint.name == "global_step_2"
    assert resumed.metrics["attempts_steps"] == [1, 2]


def test_total_steps_beyond_one_epoch_train_every_step_and_merge(assets, local_ray, tmp_path, capsys, monkeypatch):
    """20 rows at 8 a step make 2 steps an epoch: 5 steps need 3 epochs. verl alone stops at the end of
    its one epoch without a final checkpoint (seen on the GPU host: the chain's instruct stage failed).
    The same run profiles steps 2-3 (``BRIDGE_RAY_PROFILE_STEPS``, passed to the workers)."""
    import json

    from bridge_ray.sft.profiling import PROFILE_STEPS_ENV

    monkeypatch.setenv(PROFILE_STEPS_ENV, "2-3")
    small = tmp_path / "small.parquet"
    pd.read_parquet(assets["train"]).head(20).to_parquet(small)
    result = sft.fit(tiny(assets, tmp_path / "run", f"data.train_files=[{small}]", "trainer.total_steps=5",
                          "trainer.save_freq=-1", "trainer.test_freq=-1"))
    assert "[bridge-ray] sft data: 20 rows, 2 step(s) an epoch; 3 epoch(s) for 5 steps" in capsys.readouterr().out
    assert result.metrics["attempts_steps"] == [1, 2, 3, 4, 5]
    assert result.checkpoint.name == "global_step_5" and result.hf_model is not None
    profile = tmp_path / "run" / "profile"
    summary = json.loads((profile / "summary.json").read_text())
    assert summary["steps"] == [2, 3] and summary["wall_s"] > 0 and summary["gpu_busy_s"] is None  # CPU run
    assert "Self CPU" in (profile / "ops.txt").read_text() and (profile / "trace-rank0.json.gz").stat().st_size > 0
    assert [row.get("profiled", False) for row in result.metrics["history"]] == [False, True, True, False, False]


def test_compiled_layers_train_the_same_steps(ray_run, assets, tmp_path, capsys):
    """``sft.model.compile_layers``: each decoder layer's forward through torch.compile (inductor, here its CPU
    code) inside verl's FSDP2 workers; the same losses as the eager run, step by step."""
    result = sft.fit(tiny(assets, tmp_path / "compiled", "model.compile_layers=true"))
    assert "[bridge-ray] torch.compile: 2 decoder layers (dynamic shapes; compiled at their first step)" in (
        capsys.readouterr().out)
    eager = losses_from_metrics(ray_run.output_dir / "metrics.json")
    assert losses_from_metrics(result.output_dir / "metrics.json") == pytest.approx(eager, rel=1e-4)


def test_preflight_missing_model(assets, local_ray, tmp_path):
    cfg = tiny(assets, tmp_path / "out", f"model.path={tmp_path}/nope")
    with pytest.raises(PreflightError, match=rf"^on node [0-9.]+: model.path {tmp_path}/nope has no config.json "
                                             r"\(a local Hugging Face model folder is needed\)$"):
        preflight(cfg)


def test_preflight_missing_data(assets, local_ray, tmp_path):
    cfg = tiny(assets, tmp_path / "out", f"data.val_files=[{tmp_path}/val.parquet]")
    with pytest.raises(PreflightError, match=rf"^on node [0-9.]+: data.val_files: {tmp_path}/val.parquet is "
                                             r"missing or unreadable$"):
        preflight(cfg)


def test_preflight_output_not_writable(assets, local_ray, tmp_path):
    (tmp_path / "file").write_text("")
    cfg = tiny(assets, tmp_path / "file" / "run")
    with pytest.raises(PreflightError, match=rf"^on node [0-9.]+: trainer.output_dir {tmp_path}/file/run is not "
                                             r"writable: Not a directory$"):
        preflight(cfg)


def test_preflight_too_many_workers(assets, local_ray, tmp_path):
    cfg = tiny(assets, tmp_path / "out", "workers.num_workers=4")
    with pytest.raises(PreflightError, match=r"^4 workers x \(1 CPU, 0 GPU\) do not fit: the cluster has 2 CPU "
                                             r"and 0 GPU on 1 node\(s\), room for 2 worker\(s\)"):
        preflight(cfg)


def test_a_chain_that_does_not_fit_fails_before_its_first_stage(local_ray, tmp_path):
    """text -> chat on a 2-CPU cluster asking for more: every stage too big is named, with its key, before the
    tokenizer starts (Ray would wait forever for a 4-CPU task; the workers would fail only after the tokenizer)."""
    from bridge_ray.pipelines import text_to_chat

    cfg = text_to_chat.plan(text_to_chat.apply_overrides(
        text_to_chat.chain_tiny_cpu(str(tmp_path / "chain"), ["/t/a.jsonl"], [], ["/t/trees.jsonl"]),
        ["tokenizer.num_cpus=4", "pretrain.workers.num_workers=3", "instruct.workers.num_workers=3"]))
    with pytest.raises(PreflightError) as err:
        text_to_chat.check_resources(cfg)
    assert str(err.value) == (
        "tokenizer.num_cpus=4, but the largest node of the cluster has 2 CPUs and the tokenizer trains on one node: "
        "set tokenizer.num_cpus=2 or less; "
        "3 workers x (1 CPU, 0 GPU) do not fit: the cluster has 2 CPU and 0 GPU on 1 node(s), room for 2 worker(s); "
        "lower pretrain.workers.num_workers / cpus_per_worker / gpus_per_worker or add nodes; "
        "3 workers x (1 CPU, 0 GPU) do not fit: the cluster has 2 CPU and 0 GPU on 1 node(s), room for 2 worker(s); "
        "lower instruct.workers.num_workers / cpus_per_worker / gpus_per_worker or add nodes")
    assert not (tmp_path / "chain").exists()
    text_to_chat.check_resources(text_to_chat.plan(text_to_chat.chain_tiny_cpu(
        str(tmp_path / "chain"), ["/t/a.jsonl"], [], ["/t/trees.jsonl"])))  # the preset fits
    with pytest.raises(PreflightError) as err:  # the GPU chain takes every GPU of the cluster: here there is none
        text_to_chat.check_resources(text_to_chat.plan(text_to_chat.chain_1b(str(tmp_path / "gpu"), ["/t/a.jsonl"],
                                                                              ["/t/trees.jsonl"])))
    assert str(err.value).split("; ")[1:] == [
        f"{group}.workers.num_workers=auto found no GPU on the cluster (1 node(s)): start it on GPU nodes, or run on "
        f"CPU workers with {group}.workers.gpus_per_worker=0 {group}.workers.num_workers=N" for group in ("pretrain", "instruct")]


def test_preflight_bad_batch(assets, local_ray, tmp_path):
    cfg = tiny(assets, tmp_path / "out", "data.micro_batch_size_per_worker=16")
    with pytest.raises(ConfigError, match=r"data.micro_batch_size_per_worker=16 is larger than the per-worker "
                                          r"batch 4"):
        preflight(cfg)


def test_preflight_data_schema(assets, local_ray, tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"text": ["a", "b"]}).to_parquet(bad)
    cfg = tiny(assets, tmp_path / "out", f"data.train_files=[{bad}]")
    with pytest.raises(ConfigError, match=str(bad)) as err:
        preflight(cfg)
    assert "messages" in str(err.value)


def test_preflight_too_few_rows(assets, local_ray, tmp_path):
    cfg = tiny(assets, tmp_path / "out", "data.global_batch_size=1024", "data.micro_batch_size_per_worker=2")
    rows = len(pd.read_parquet(assets["train"]))
    with pytest.raises(ConfigError, match=rf"data.train_files: {assets['train']} has {rows} rows, fewer than "
                                          r"data.global_batch_size=1024: no step could run"):
        preflight(cfg)


def test_one_worker_on_each_of_two_nodes(ray_run, assets, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        result = sft.fit(tiny(assets, tmp_path / "two-nodes"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    uninterrupted = losses_from_metrics(ray_run.output_dir / "metrics.json")
    assert losses_from_metrics(result.output_dir / "metrics.json") == pytest.approx(uninterrupted, rel=1e-6)
