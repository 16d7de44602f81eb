"""The job side every workload goes through (``bridge_ray.runs.lifecycle``): record, config, metrics, merge, upload.

Unit tier: the merge and the generation check are stand-ins (the real ones run in test_sft_train.py,
test_pretrain_train.py and test_ppo_cpu.py); the run record is a real one in a temp folder.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_ray import runs
from bridge_ray.errors import CheckpointError, ConfigError
from bridge_ray.models.checkpoints import latest_checkpoint, weights_dir
from bridge_ray.runs import lifecycle


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A run folder as the submitter leaves it, and this process inside that job."""
    folder = tmp_path / "record"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"submission_id": "sft-1", "status": "PENDING"}))
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(folder))
    return folder


def record(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def step(root: Path, n: int, actor: bool = False) -> Path:
    """A ``global_step_n`` with one model shard, in the SFT layout or PPO's (``actor/``, ``critic/``)."""
    shards = root / f"global_step_{n}" / ("actor" if actor else "")
    shards.mkdir(parents=True)
    (shards / "model_world_size_1_rank_0.pt").write_bytes(b"")
    if actor:
        (root / f"global_step_{n}" / "critic").mkdir()
    return root / f"global_step_{n}"


def test_start_records_the_job_and_save_config_writes_config_json(job, tmp_path):
    out = tmp_path / "out"
    assert lifecycle.start(str(out), loggers=("console",)) == out
    run = record(job)
    assert (run["status"], run["output_dir"], run["host"]) == ("RUNNING", str(out), socket.gethostname())
    assert run["packages"]["python"] and (job / "packages.json").is_file()
    assert (out / lifecycle.LOCK_FILE).read_text() == f"job record (host {socket.gethostname()}, pid {os.getpid()})"
    lifecycle.save_config(out, {"sft": {"model": {"path": Path("/m")}}, "verl_overrides": ["a=1"]})
    assert (out / "config.json").read_text() == json.dumps(
        {"sft": {"model": {"path": "/m"}}, "verl_overrides": ["a=1"]}, indent=2)


def test_outside_a_job_only_the_files_are_written(tmp_path, monkeypatch):
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    assert lifecycle.start(tmp_path) == tmp_path
    assert lifecycle.record_metrics({"step": 2, "loss": 0.5}) == {"step": 2, "loss": 0.5}
    assert list(tmp_path.iterdir()) == [tmp_path / lifecycle.LOCK_FILE]  # held while this process lives


def test_a_run_that_uploads_at_its_end_needs_a_token_at_its_start(tmp_path, monkeypatch):
    """Hours of training, then "no token" at the upload: the token is looked for when the run starts."""
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no `hf auth login` token either
    with pytest.raises(ConfigError) as err:
        lifecycle.start(tmp_path / "out", hub_repo_id="me/model")
    assert str(err.value) == (
        "trainer.hub_repo_id=me/model needs a Hugging Face token in the job and it has none: `export HF_TOKEN=...` "
        "where you submit (bridge-ray hands it to the job in a private file) or `hf auth login` on the nodes; or leave "
        "the repo out and upload later with `bridge-ray upload RUN --repo-id ...`")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    assert lifecycle.start(tmp_path / "out2", hub_repo_id="me/model") == tmp_path / "out2"


HOLDER = """
import sys
from bridge_ray.runs import lifecycle
lifecycle.claim(sys.argv[1], "run_dir")
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


def test_a_folder_another_live_process_holds_is_refused_until_it_ends(tmp_path, monkeypatch):
    """Two runs on one output dir (a resubmission while the first still runs) would write the same
    checkpoints: the second stops at once, naming the holder; once the holder is gone, however it ended,
    the folder is free again (the kernel drops the lock with the process)."""
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError) as err:
            lifecycle.start(folder)
        assert str(err.value) == (f"output dir {folder} is in use by a process (host {socket.gethostname()}, pid "
                                  f"{holder.pid}): wait for that run to end or stop it (`bridge-ray stop ID`), or "
                                  "choose another output dir")
    finally:
        holder.kill()
        holder.wait()
    assert lifecycle.start(folder) == folder
    lifecycle.claim(folder, "run_dir")  # this process holds it already: no second lock against itself


def test_the_last_step_goes_into_the_run_record_numbers_only(job):
    assert lifecycle.record_metrics(None) is None and lifecycle.record_metrics({}) is None
    assert "last_step" not in record(job)
    assert lifecycle.record_metrics({"step": 6, "loss": 0.25, "lr": None, "note": "text"}) == {"step": 6, "loss": 0.25}
    assert (record(job)["last_step"], record(job)["metrics"]) == (6, {"step": 6, "loss": 0.25})


def test_finish_model_without_a_checkpoint_says_where_it_looked(job, tmp_path):
    with pytest.raises(CheckpointError) as err:
        lifecycle.finish_model(tmp_path / "checkpoints", tmp_path)
    assert str(err.value) == f"training ended without a checkpoint under {tmp_path / 'checkpoints'}"
    assert "hf_model" not in record(job)


@pytest.fixture
def merger(monkeypatch):
    """Stand-ins for verl's merger, the generation check and the upload; returns what each was called with."""
    calls = {}

    def merge(weights, target, env=None):
        calls["merge"] = (weights, target, env)
        return Path(target)

    def check(path, prompt="What is 2 + 3?", max_new_tokens=8):
        calls["check"] = (path, prompt, max_new_tokens)
        return " 5"

    def upload(hf_model, repo_id, private=False):
        calls["upload"] = (hf_model, repo_id, private)
        return f"https://huggingface.co/{repo_id}" if repo_id else None

    monkeypatch.setattr(lifecycle, "merge_to_hf", merge)
    monkeypatch.setattr(lifecycle, "check_hf_model", check)
    monkeypatch.setattr(lifecycle.hub, "upload_after_run", upload)
    return calls


def test_finish_model_merges_the_newest_step_records_and_uploads(job, tmp_path, merger, capsys):
    root = tmp_path / "checkpoints"
    step(root, 3)
    newest = step(root, 6)
    model = lifecycle.finish_model(root, tmp_path, env={"X": "1"}, hub_repo_id="me/m", hub_private=True)
    assert model == lifecycle.MergedModel(newest, tmp_path / "hf", " 5", "https://huggingface.co/me/m")
    assert merger["merge"] == (newest, tmp_path / "hf", {"X": "1"})
    assert merger["check"] == (tmp_path / "hf", "What is 2 + 3?", 8)
    assert merger["upload"] == (tmp_path / "hf", "me/m", True)
    assert capsys.readouterr().out == f"[bridge-ray] merged {newest} -> {tmp_path / 'hf'}; sample generation: ' 5'\n"
    assert record(job)["hf_model"] == str(tmp_path / "hf")


def test_finish_model_takes_the_ppo_actor_and_prints_a_test_prompt(job, tmp_path, merger, capsys):
    newest = step(tmp_path / "checkpoints", 2, actor=True)
    model = lifecycle.finish_model(tmp_path / "checkpoints", tmp_path, prompt="Once upon a time,", max_new_tokens=24)
    assert (model.checkpoint, model.hub_url) == (newest, None)
    assert merger["merge"][0] == newest / "actor" and merger["check"][1:] == ("Once upon a time,", 24)
    assert capsys.readouterr().out == (f"[bridge-ray] merged {newest / 'actor'} -> {tmp_path / 'hf'}; "
                                       "'Once upon a time,' -> ' 5'\n")


def test_the_step_folder_holding_the_model_is_the_same_for_export_and_the_run(tmp_path):
    sft_step, ppo_step = step(tmp_path / "sft", 4), step(tmp_path / "ppo", 4, actor=True)
    assert (weights_dir(sft_step), weights_dir(ppo_step)) == (sft_step, ppo_step / "actor")
    # Without verl's tracker file the newest step with shards counts, in either layout.
    step(tmp_path / "ppo", 8, actor=True)
    (tmp_path / "ppo" / "global_step_9").mkdir()  # a step being written: no shards yet
    assert latest_checkpoint(tmp_path / "ppo") == tmp_path / "ppo" / "global_step_8"
