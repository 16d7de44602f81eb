"""Curves of a run (SFT's metrics.json history, verl's PPO metrics.jsonl), the figures `runs show`
ends with, and `runs plot` (a PNG; several runs overlaid). A real SFT run's plot is made in
test_runs.py."""
from __future__ import annotations

import json

import pytest

from bridge_ray.runs import curves


@pytest.fixture
def sft_dir(tmp_path):
    folder = tmp_path / "sft"
    folder.mkdir()
    history = [{"step": s, "loss": 6.0 - s, "val_loss": (6.5 - s) if s % 2 == 0 else None, "tokens_per_s": 400.0 + s}
               for s in range(1, 5)]
    (folder / "metrics.json").write_text(json.dumps({"final": history[-1], "history": history}))
    return folder


@pytest.fixture
def ppo_dir(tmp_path):
    folder = tmp_path / "ppo"
    folder.mkdir()
    rows = [{"step": s, "data": {"critic/score/mean": 0.1 * s, "critic/vf_loss": 1.0 / s, "actor/pg_loss": 0.01,
                                  "perf/throughput": 60.0}} for s in (1, 2, 3)]
    (folder / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + '\n{"step": 4, "da')  # one being written
    return folder


def test_sft_and_ppo_curves_and_their_figures(sft_dir, ppo_dir):
    sft = curves.of_folder(sft_dir)
    assert sft["loss"] == [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.0)] and sft["val_loss"] == [(2, 4.5), (4, 2.5)]
    assert curves.summary(sft)["loss"] == {"first": 5.0, "last": 2.0, "best": 2.0, "best_step": 4}
    ppo = curves.of_folder(ppo_dir)
    assert [step for step, _ in ppo["reward"]] == [1, 2, 3]
    figures = curves.summary(ppo)
    assert figures["reward"]["best_step"] == 3 and figures["critic_loss"]["best"] == pytest.approx(1 / 3)
    assert figures["tokens_per_s"] == {"mean": 60.0, "last": 60.0}


def test_plot_writes_a_png_and_overlays_runs(sft_dir, ppo_dir, tmp_path):
    one = curves.plot({"sft": curves.of_folder(sft_dir)}, tmp_path / "one.png")
    both = curves.plot({"a": curves.of_folder(sft_dir), "b": curves.of_folder(ppo_dir)}, tmp_path / "out" / "both.png")
    for png in (one, both):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plot_of_an_unknown_run_is_one_line(tmp_path):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bridge_ray", "runs", "plot", "nope"], capture_output=True, text=True,
                         env={**os.environ, "BRIDGE_RAY_HOME": str(tmp_path)})
    assert out.returncode == 2 and out.stderr.strip() == (
        f"error: no run 'nope' in {tmp_path / 'runs'}: list the runs with `bridge-ray runs`")


def test_a_plot_target_that_is_no_png_in_no_folder_or_taken_is_refused_before_anything(tmp_path):
    """`--out README.md` gave "unexpected ValueError: Format 'md' is not supported"; `--out /nonexistent/dir/x.png`
    created that folder; `--out noext` wrote noext.png; an existing file was replaced unasked."""
    import os
    import subprocess
    import sys

    taken = tmp_path / "taken.png"
    taken.write_bytes(b"mine")
    for out, message in (
            ("README.md", "--out README.md: the plot is a PNG: give a path ending in .png"),
            ("noext", "--out noext: the plot is a PNG: give a path ending in .png"),
            (str(tmp_path / "none" / "x.png"), f"--out {tmp_path / 'none' / 'x.png'}: the folder {tmp_path / 'none'} "
                                               "does not exist: create it first, or give a path in an existing folder"),
            (str(taken), f"--out {taken} exists: pass --overwrite to replace it, or give another path")):
        done = subprocess.run([sys.executable, "-m", "bridge_ray", "runs", "plot", "nope", "--out", out], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, "BRIDGE_RAY_HOME": str(tmp_path)})
        assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: {message}\n")
    assert taken.read_bytes() == b"mine" and not (tmp_path / "none").exists()
    curves.check_target(taken, overwrite=True)  # asked: no refusal


@pytest.mark.parametrize("text", ['[{"step": 1, "loss": 2.0}]', '{"history": {"step": 1}}',
                                  '{"history": [3, null, {"loss": 1.0}, {"step": "2", "loss": 1.0}]}', "{"])
def test_a_metrics_file_of_another_shape_gives_no_curves_instead_of_failing(tmp_path, text):
    """A hand-edited or foreign metrics.json beside a run made `runs show` fail with an AttributeError."""
    (tmp_path / "metrics.json").write_text(text)
    assert curves.of_folder(tmp_path) == {}
