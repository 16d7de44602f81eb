"""Unit tier: ``BRIDGE_RAY_PROFILE_STEPS`` (bridge_ray.sft.profiling): its form, its check before a run
starts, and the GPU-busy arithmetic on a Chrome trace. The profiler itself runs in a real CPU SFT run
(``tests/test_sft_train.py::test_total_steps_beyond_one_epoch_train_every_step_and_merge``)."""
from __future__ import annotations

import json

import pytest

from bridge_ray import pretrain, sft
from bridge_ray.errors import ConfigError
from bridge_ray.sft.profiling import PROFILE_STEPS_ENV, busy_seconds, parse_steps


def test_steps_one_or_a_range():
    assert parse_steps("5") == (5, 5) and parse_steps("5-6") == (5, 6) and parse_steps(" 2 - 4 ") == (2, 4)


@pytest.mark.parametrize("text", ["0", "6-5", "five", "5,6", "-3", "5-"])
def test_bad_steps_name_the_variable_and_the_form(text):
    with pytest.raises(ConfigError) as err:
        parse_steps(text)
    assert str(err.value) == (f"BRIDGE_RAY_PROFILE_STEPS={text!r}: give one step or a range of steps, e.g. "
                              "BRIDGE_RAY_PROFILE_STEPS=5 or BRIDGE_RAY_PROFILE_STEPS=5-6 (steps count from 1)")


def test_a_bad_value_stops_sft_and_pretraining_before_they_connect(monkeypatch, tmp_path):
    """Raised before ``connect()``: no cluster is needed, and none would be touched."""
    monkeypatch.setenv(PROFILE_STEPS_ENV, "x")
    cfg = sft.sft_tiny_cpu(str(tmp_path / "model"), str(tmp_path / "t.parquet"), None, str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="^BRIDGE_RAY_PROFILE_STEPS='x': give one step"):
        sft.fit(cfg)
    cfg = pretrain.pretrain_tiny_cpu(str(tmp_path / "tok"), [str(tmp_path / "a.jsonl")], [], str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="^BRIDGE_RAY_PROFILE_STEPS='x': give one step"):
        pretrain.fit(cfg)
    assert not (tmp_path / "run").exists()


def test_gpu_busy_is_the_union_of_kernel_and_copy_intervals():
    events = [
        {"cat": "kernel", "ts": 0, "dur": 100},
        {"cat": "kernel", "ts": 50, "dur": 100},       # overlaps the first: 0-150
        {"cat": "gpu_memcpy", "ts": 200, "dur": 50},   # 200-250
        {"cat": "cpu_op", "ts": 0, "dur": 10_000},     # host work is not the device's
        {"cat": "kernel", "ts": 240, "dur": 20},       # inside the copy's span, then beyond: 200-260
        {"cat": "ac2g", "ts": 300},                    # flow events have no duration
    ]
    assert busy_seconds(events) == pytest.approx(210e-6)
    assert busy_seconds([{"cat": "cpu_op", "ts": 0, "dur": 5}]) is None


def test_a_run_that_ends_inside_the_range_keeps_what_was_profiled(tmp_path, capsys):
    import torch

    from bridge_ray.sft.profiling import StepProfiler

    profiler = StepProfiler(2, 9, tmp_path, rank=0)
    for step in (1, 2, 3):
        profiler.before(step)
        torch.ones(64, 64) @ torch.ones(64, 64)
        profiler.after(step)
    assert not (tmp_path / "profile").exists()  # step 3 is inside 2-9: still profiling
    profiler.after(3, last_of_run=True)
    summary = json.loads((tmp_path / "profile" / "summary.json").read_text())
    assert summary["steps"] == [2, 3] and summary["gpu_busy_s"] is None
    assert "aten::mm" in (tmp_path / "profile" / "ops.txt").read_text()
    assert "[bridge-ray] profile of step(s) 2-3 (rank 0): " in capsys.readouterr().out
    assert StepProfiler.from_env({PROFILE_STEPS_ENV: "2"}, tmp_path, rank=1) is None  # rank 0 only
