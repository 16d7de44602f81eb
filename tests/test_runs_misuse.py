"""`bridge-ray runs`, `export` and `upload` misused: one line, exit 2 for what the user can fix, nothing lost.

    .venv/bin/python -m pytest tests/test_runs_misuse.py -q      # unit, seconds (no cluster, no real merge)
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge_ray import runs
from bridge_ray.cli import cli
from bridge_ray.models import checkpoints, export as export_module

SHARD = "model_world_size_1_rank_0.pt"
HOW = ("training saves one every `save_freq` steps and at its end: train or resume the run until it saves one, "
       "or pass the output dir of a run that did")


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    return tmp_path / "home"


def _record(home: Path, submission_id: str, **fields) -> Path:
    folder = home / "runs" / submission_id
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"submission_id": submission_id, "cluster": "c", "recipe": "r.py",
                                                 "status": "SUCCEEDED", **fields}))
    return folder


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def _refused(result, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert result.output == f"error: {message}\n"


def _checkpoint(output_dir: Path, step: int, complete: bool = True) -> Path:
    folder = output_dir / "checkpoints" / f"global_step_{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / SHARD).write_bytes(b"shard")
    return folder


@pytest.mark.parametrize("field,value,said", [
    ("start_time", "yesterday", "\"start_time\" is a string: 'yesterday', not a number or null"),
    ("end_time", [1], '"end_time" is a list: [1], not a number or null'),
    ("start_time", True, '"start_time" is a bool: True, not a number or null'),
    ("start_time", 1e20, '"start_time" is 1e+20, not a UNIX time'),
    ("last_step", "6", "\"last_step\" is a string: '6', not an integer or null"),
    ("git", "abc", "\"git\" is a string: 'abc', not an object"),
    ("status", None, '"status" is null: None, not a string'),
])
def test_a_wrong_typed_record_is_broken_and_hides_no_other_run(home, field, value, said):
    _record(home, "good-1", start_time=100.0)
    bad = _record(home, "bad-1", **{"start_time": 50, field: value})
    listed = _cli("runs", "list")
    assert listed.exit_code == 0 and listed.stdout.startswith("good-1  SUCCEEDED") and "bad-1" not in listed.stdout
    assert listed.stderr == f"warning: the run record {bad / 'run.json'} is unreadable ({said}): fix or delete {bad}\n"
    _refused(_cli("runs", "show", "bad-1"),
             f"the run record {bad / 'run.json'} is unreadable ({said}): fix or delete {bad}")


def test_the_list_is_aligned_and_a_reader_that_stops_early_is_no_error(home):
    """`bridge-ray runs | head` printed "error: unexpected BrokenPipeError ... a bridge-ray bug"."""
    import sys

    from conftest import REPO

    for n in range(700):  # ~80 KB of lines: more than a pipe holds, so the write after `head` left fails
        _record(home, f"{'run-' * (n % 3)}{n:04d}", start_time=1.7e9 + n)
    lines = _cli("runs").output.splitlines()
    assert len({line.index("SUCCEEDED") for line in lines}) == 1  # ids of unequal length, one column
    reader = subprocess.Popen([sys.executable, "-m", "bridge_ray", "runs"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**os.environ, "BRIDGE_RAY_HOME": str(home)})
    assert reader.stdout.readline().startswith(b"0000 ")
    reader.stdout.close()  # what `head -1` does
    assert (reader.wait(timeout=120), reader.stderr.read()) == (0, b"")


def test_nan_start_time_is_broken_too(home):
    bad = home / "runs" / "nan-1"
    bad.mkdir(parents=True)
    (bad / "run.json").write_text('{"submission_id": "nan-1", "start_time": NaN}')
    _refused(_cli("runs", "show", "nan-1"),
             f'the run record {bad / "run.json"} is unreadable ("start_time" is nan, not a UNIX time): '
             f"fix or delete {bad}")
    assert _cli("runs").exit_code == 0


def test_no_runs_yet_says_how_to_make_one_beside_the_empty_list(home):
    """An empty `bridge-ray runs` printed nothing at all: a new user could not tell it from a broken home."""
    listed = _cli("runs")
    assert (listed.exit_code, listed.stdout) == (0, "")
    assert listed.stderr == (f"no runs recorded in {home / 'runs'} yet: submit one with "
                             "`bridge-ray submit recipes/hello_cluster.py --follow`\n")


def test_export_of_a_run_without_an_output_dir(home):
    _record(home, "hello-1")
    _refused(_cli("export", "hello-1"), "run hello-1 recorded no output dir, so it has no checkpoint to export (it "
             "trained nothing, or its job never called bridge_ray.runs.lifecycle.start): pass the folder its "
             "training wrote to instead")
    _refused(_cli("upload", "hello-1", "--repo-id", "me/m"),
             "run hello-1 has no merged model to upload and recorded no output dir to merge one from: upload a "
             "model folder instead (`bridge-ray upload FOLDER --repo-id ...`)")


def test_export_and_upload_of_a_run_that_saved_no_checkpoint(home, tmp_path):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    _refused(_cli("export", "sft-1"), f"no checkpoint to export: {out} does not exist; {HOW}")
    _refused(_cli("upload", "sft-1", "--repo-id", "me/m"),
             f"run sft-1 has no merged model to upload and none to merge: no checkpoint to export: {out} does not "
             f"exist; {HOW}")
    (out / "checkpoints").mkdir(parents=True)
    _refused(_cli("export", "sft-1"), f"no checkpoint to export under {out / 'checkpoints'}: the run saved none; {HOW}")
    _refused(_cli("export", "sft-1", "--step", "3"),
             f"no checkpoint for step 3 under {out / 'checkpoints'} (steps there: none): {HOW}")


def test_export_of_unfinished_checkpoints_says_so(home, tmp_path):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    _checkpoint(out, 3, complete=False)
    root = out / "checkpoints"
    unfinished = "holds no model shards (model_world_size_*_rank_*.pt: a save that did not finish)"
    _refused(_cli("export", "sft-1"), f"no complete checkpoint to export under {root}: global_step_3 {unfinished}; {HOW}")
    _refused(_cli("export", "sft-1", "--step", "3"),
             f"no complete checkpoint to export under {root}: global_step_3 {unfinished}; {HOW}")
    _checkpoint(out, 2)
    _refused(_cli("export", "sft-1", "--step", "3"),
             f"no complete checkpoint to export under {root}: global_step_3 {unfinished}; "
             "pass --step with a complete one (2)")
    _refused(_cli("export", "sft-1", "--step", "5"),
             f"no checkpoint for step 5 under {root} (steps there: 2): pass --step with one of them")
    # With no --step the latest complete one is merged, as the docs say.
    assert export_module.find_checkpoint(out) == root / "global_step_2"
    _checkpoint(out, 4)
    assert export_module.find_checkpoint(out) == root / "global_step_4"


@pytest.fixture
def fake_merge(monkeypatch):
    """verl's merger and the generation check stood in for: the merge writes one file."""
    merged = []

    def merge(weights, target, env=None, log_file=None):
        Path(target).mkdir(parents=True)
        (Path(target) / "config.json").write_text("{}")
        merged.append((weights, Path(target)))
        return Path(target)

    monkeypatch.setattr(export_module, "merge_to_hf", merge)
    monkeypatch.setattr(export_module, "check_hf_model", lambda path: "ok")
    monkeypatch.setattr(export_module, "_merge_env", lambda: {})
    return merged


def test_export_target_dir_that_is_not_empty_needs_overwrite(home, tmp_path, fake_merge):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    _checkpoint(out, 3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _refused(_cli("export", "sft-1", "--target-dir", str(mine)),
             f"--target-dir {mine} is not empty: pass --overwrite to replace what is in it, or choose a new folder "
             f"(default: {out / 'hf_step_3'})")
    assert (mine / "notes.txt").read_text() == "keep" and not fake_merge
    done = _cli("export", "sft-1", "--target-dir", str(mine), "--overwrite")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in mine.iterdir()) == ["config.json"]  # replaced, not mixed
    assert runs.load_run("sft-1").exports == {"3": str(mine)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_to_the_default_target_again_replaces_it(home, tmp_path, fake_merge):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    _checkpoint(out, 3)
    (out / "hf_step_3").mkdir()
    (out / "hf_step_3" / "stale.bin").write_text("old")
    assert _cli("export", "sft-1").exit_code == 0
    assert sorted(p.name for p in (out / "hf_step_3").iterdir()) == ["config.json"]


def test_export_target_dir_never_the_checkpoint_or_a_file(home, tmp_path, fake_merge):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    step = _checkpoint(out, 3)
    default = out / "hf_step_3"
    for target in (out, step, step / "hf"):
        _refused(_cli("export", "sft-1", "--target-dir", str(target), "--overwrite"),
                 f"--target-dir {target} holds or lies inside the checkpoint {step}: choose a folder outside it, "
                 f"e.g. {default}")
    a_file = tmp_path / "model.txt"
    a_file.write_text("x")
    _refused(_cli("export", "sft-1", "--target-dir", str(a_file), "--overwrite"),
             f"--target-dir {a_file} is a file: choose a folder, e.g. {default}")
    assert (step / SHARD).read_bytes() == b"shard" and a_file.read_text() == "x" and not fake_merge


def test_export_overwrite_never_replaces_another_checkpoint_or_a_record(home, tmp_path, fake_merge):
    """`export RUN --target-dir <its run folder> --overwrite` replaced the run's record with a model (and failed with
    a TypeError); `--target-dir <out>/checkpoints/global_step_3 --overwrite` replaced another checkpoint's shards."""
    out = tmp_path / "out"
    folder = _record(home, "sft-1", output_dir=str(out))
    older = _checkpoint(out, 3)
    newest = _checkpoint(out, 5)
    default = out / "hf_step_5"
    for target, what in ((older, f"the checkpoint {older}"), (older / "actor", f"the checkpoint {older}"),
                         (folder, "the record folder of run sft-1"), (home / "runs", "the record folder of run sft-1"),
                         (home, "the record folder of run sft-1"), (home / "runs" / "x", "bridge-ray's runs folder"),
                         (home / "clusters" / "x", "bridge-ray's clusters folder")):
        _refused(_cli("export", "sft-1", "--target-dir", str(target), "--overwrite"),
                 f"--target-dir {target} holds or lies inside {what}: choose a folder outside it, e.g. {default}")
    assert (older / SHARD).read_bytes() == b"shard" and (newest / SHARD).read_bytes() == b"shard"
    assert runs.load_run("sft-1").submission_id == "sft-1" and not fake_merge
    _refused(_cli("export", "sft-1", "--target-dir", "/proc/bridge-ray-x"),
             f"--target-dir /proc/bridge-ray-x cannot be written (No such file or directory): choose a writable "
             f"folder, e.g. {default}")
    for empty in ("", " "):
        _refused(_cli("export", empty), "an empty run: give a run id from `bridge-ray runs`, a run folder or a "
                                        "training output folder")
        _refused(_cli("runs", "show", empty), "an empty run id: give one that `bridge-ray runs` lists, or none for the "
                                              "latest run")


def test_a_failed_merge_is_one_line_and_keeps_the_earlier_model(home, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    step = _checkpoint(out, 3)
    (out / "hf_step_3").mkdir()
    (out / "hf_step_3" / "config.json").write_text("earlier")
    output = "loading shards\nTraceback (most recent call last):\n  File x\nRuntimeError: bad shard\n"
    monkeypatch.setattr(export_module, "_merge_env", lambda: {})
    monkeypatch.setattr(checkpoints.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, stdout="", stderr=output))
    staging = out / f".hf_step_3.merging-{os.getpid()}"
    log = out / "hf_step_3-merge.log"
    result = _cli("export", "sft-1")
    assert result.exit_code == 1
    # stderr: the phase lines (progress), then the error as one line.
    assert result.output.splitlines()[-1] == (f"error: merging {step} failed (exit 1): RuntimeError: bad shard "
                                              f"(whole output: {log})")
    assert [line for line in result.output.splitlines() if not line.startswith("[bridge-ray] ")] == [
        result.output.splitlines()[-1]]
    assert log.read_text() == output and (out / "hf_step_3" / "config.json").read_text() == "earlier"
    assert not staging.exists() and runs.load_run("sft-1").exports == {}


def test_upload_of_a_run_with_a_checkpoint_but_no_merged_model_says_export(home, tmp_path):
    out = tmp_path / "out"
    _record(home, "sft-1", output_dir=str(out))
    _checkpoint(out, 3)
    _refused(_cli("upload", "sft-1", "--repo-id", "me/m"),
             "run sft-1 has no merged model recorded: merge one with `bridge-ray export sft-1` and upload that folder")


def test_a_run_at_its_last_checkpoint_is_refused_before_training(tmp_path):
    """verl's SFT and PPO trainers count on from the checkpoint before checking for the end: a finished run
    submitted again trained step N+1 of N and replaced its merged model."""
    from bridge_ray.errors import ConfigError
    from bridge_ray.runs import lifecycle

    root = tmp_path / "out" / "checkpoints"
    lifecycle.refuse_finished(root, 6, "auto", "sft.trainer.total_steps")  # nothing there yet: trains
    _checkpoint(tmp_path / "out", 3)
    lifecycle.refuse_finished(root, 6, "auto", "sft.trainer.total_steps")  # resumes from step 3
    _checkpoint(tmp_path / "out", 6)
    with pytest.raises(ConfigError) as err:
        lifecycle.refuse_finished(root, 6, "auto", "sft.trainer.total_steps")
    assert str(err.value) == (f"{tmp_path / 'out'} already holds this run's last checkpoint (step 6 of 6): nothing to "
                              "train; raise sft.trainer.total_steps to train on from it, or give a new output dir to "
                              "start over")
    lifecycle.refuse_finished(root, 8, "auto", "sft.trainer.total_steps")  # more steps: trains on
    lifecycle.refuse_finished(root, 6, "disable", "sft.trainer.total_steps")  # starts over
    lifecycle.refuse_finished(root, None, "auto", "sft.trainer.total_steps")  # length set by epochs
