"""The console a person reads while a job runs (``bridge_ray.jobs.progress.ConsoleView``), on log lines
as Ray delivers them: ANSI colours, ``(Actor pid=N)`` prefixes, tqdm bars, Ray's logger lines.
A real SFT job's log is checked the same way in test_runs.py."""
from __future__ import annotations

from bridge_ray.jobs.progress import ConsoleView

C = "\x1b[36m"
R = "\x1b[0m"
PPO_LOG = f"""2026-12-05 06:09:53,415\tINFO job_manager.py:581 -- Runtime env is setting up.
Running entrypoint for job ppo-1: python -m bridge_ray.jobs.launch recipes/ppo_gsm8k.py preset=ppo_tiny_cpu
[bridge-ray] starting at step 1 (no checkpoint under /runs/ppo/checkpoints)
{C}(TaskRunnerV1 pid=6879){R} /site/verl/workers/engine/__init__.py:32: UserWarning: torchtitan engine is not available
{C}(TaskRunnerV1 pid=6879){R}   warnings.warn(f"torchtitan engine is not available: {{e!r}}", stacklevel=1)
{C}(TaskRunnerV1 pid=6879){R} Training Progress:   0%|          | 0/3 [00:00<?, ?it/s]
Loading weights: 100%|██████████| 20/20 [00:00<00:00, 21564.54it/s]
{C}(RayTrainWorker pid=70){R} step:1 - train/loss:6.3 - train/lr(1e-3):0.001
{C}(TaskRunnerV1 pid=6879){R} step:1 - actor/pg_loss:0.0117 - critic/vf_loss:0.52 - critic/score/mean:1.0006 - perf/throughput:62.4 - timing_s/step:20.0
{C}(TaskRunnerV1 pid=6879){R} step:2 - actor/pg_loss:-0.002 - critic/vf_loss:0.31 - critic/score/mean:1.01 - perf/throughput:70.0 - timing_s/step:10.0
{C}(SimpleStorageUnit pid=7012){R} WARNING - target_num_threads 8 should not exceed 2 [repeated 56x across cluster] (Ray deduplicates logs by default.)
{C}(TaskRunnerV1 pid=6879){R} step:3 - actor/pg_loss:0.001 - critic/vf_loss:0.2 - critic/score/mean:1.02 - perf/throughput:71.0 - timing_s/step:12.0
{C}(WorkerDict pid=7200){R} error: something an actor says is wrong
[bridge-ray] merged /runs/ppo/checkpoints/global_step_3/actor -> /runs/ppo/hf; sample generation: 'x'
"""


def view(log: str) -> tuple[list[str], ConsoleView]:
    shown: list[str] = []
    console = ConsoleView(shown.append)
    console.feed(log)
    return shown, console


def test_a_ppo_log_is_its_own_lines_and_one_line_per_step():
    shown, console = view(PPO_LOG)
    assert shown == [
        "[bridge-ray] starting at step 1 (no checkpoint under /runs/ppo/checkpoints)",
        "[bridge-ray] step 1/3 reward 1.0006 critic_loss 0.5200 pg_loss 0.0117 tokens/s 62 20.00s | elapsed 0m20s eta 0m40s",
        "[bridge-ray] step 2/3 reward 1.0100 critic_loss 0.3100 pg_loss -0.0020 tokens/s 70 10.00s | elapsed 0m30s eta 0m15s",
        "[bridge-ray] step 3/3 reward 1.0200 critic_loss 0.2000 pg_loss 0.0010 tokens/s 71 12.00s | elapsed 0m42s",
        "error: something an actor says is wrong",
        "[bridge-ray] merged /runs/ppo/checkpoints/global_step_3/actor -> /runs/ppo/hf; sample generation: 'x'",
    ]
    assert console.showed_output and console.hidden == 8  # the actor's error line is the job's own


def test_the_recipes_own_output_and_its_traceback_show_and_a_line_shows_once():
    log = ("hello from the recipe\n"
           "[bridge-ray] step 1/2 loss 6.3594 lr 1.00e-03 tokens/s 425 (213/worker) 3.12s\n"
           f"{C}(RayTrainWorker pid=9){R} [bridge-ray] step 1/2 loss 6.3594 lr 1.00e-03 tokens/s 425 (213/worker) 3.12s\n"
           "Traceback (most recent call last):\n"
           '  File "recipe.py", line 3, in <module>\n'
           "ValueError: failing on purpose\n")
    shown, console = view(log)
    assert shown == ["hello from the recipe",
                     "[bridge-ray] step 1/2 loss 6.3594 lr 1.00e-03 tokens/s 425 (213/worker) 3.12s | elapsed 0m03s eta 0m03s",
                     "Traceback (most recent call last):", '  File "recipe.py", line 3, in <module>',
                     "ValueError: failing on purpose"]
    assert console.showed_output


def test_a_new_stage_starts_its_own_clock():
    log = ("[bridge-ray] step 1/2 loss 6.0 5.00s\n[bridge-ray] step 2/2 loss 5.0 5.00s\n"
           f"{C}(TaskRunnerV1 pid=1){R} Training Progress:   0%|          | 0/3 [00:00<?, ?it/s]\n"
           f"{C}(TaskRunnerV1 pid=1){R} step:1 - actor/pg_loss:0.1 - critic/score/mean:0.5 - timing_s/step:2.0\n")
    shown, _ = view(log)
    assert [line.split(" | ")[1] for line in shown] == ["elapsed 0m05s eta 0m05s", "elapsed 0m10s",
                                                        "elapsed 0m02s eta 0m04s"]


def test_nothing_of_the_jobs_own_shown_leaves_the_tail_to_the_caller():
    shown, console = view(f"{C}(TaskRunnerV1 pid=1){R} Traceback (most recent call last):\n"
                          f"{C}(TaskRunnerV1 pid=1){R} RuntimeError: inside an actor\n")
    assert shown == [] and not console.showed_output  # the CLI then prints the tail
    shown, console = view("[bridge-ray] starting at step 1\n[bridge-ray] step 1/2 loss 6.0 5.00s\n"
                          f"{C}(TaskRunnerV1 pid=1){R} RuntimeError: inside an actor\n")
    assert len(shown) == 2 and not console.showed_output  # bridge-ray's progress alone does not say why


def test_long_local_phases_are_a_line_as_each_starts_and_one_as_it_ends_with_its_time(capsys):
    """Not a terminal (CI, a pipe): ``Phases`` prints plain lines on stderr; a failing phase says so."""
    import re

    import pytest

    from bridge_ray.cli.phases import Phases

    with Phases() as say:
        say("merging a")
        say("checking b")
    with pytest.raises(RuntimeError), Phases() as say:
        say("uploading c")
        raise RuntimeError("refused")
    with pytest.raises(KeyboardInterrupt), Phases() as say:
        say("merging d")
        raise KeyboardInterrupt
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "[bridge-ray] merging a ..." and re.fullmatch(r"\[bridge-ray\] merging a: done in \d+\.\d s", lines[1])
    assert lines[2] == "[bridge-ray] checking b ..." and re.fullmatch(r"\[bridge-ray\] checking b: done in [\d.]+ s", lines[3])
    assert lines[4] == "[bridge-ray] uploading c ..."
    assert re.fullmatch(r"\[bridge-ray\] uploading c: failed after [\d.]+ s", lines[5])
    assert lines[6] == "[bridge-ray] merging d ..."
    assert re.fullmatch(r"\[bridge-ray\] merging d: interrupted after [\d.]+ s", lines[7]) and len(lines) == 8
