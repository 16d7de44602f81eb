"""PPO and GRPO taking real steps on CPU: real Ray, real verl ``main_ppo``, real vLLM (its CPU build).

    .venv/bin/python -m pytest tests/test_ppo_cpu.py -q      # ~12 min on an idle 2-core machine

Six jobs, each a real run: PPO with a critic (then its record and ``export``),
``sft_then_ppo.py --tiny`` (SFT -> merge -> GRPO, the GRPO checks read it) and its rerun (stages
skipped), the PPO run resubmitted with more steps through a recipe whose own reward fails after
one step (resume and the recipe's reward, one start-up), and a PPO run stopped mid-run with
``bridge-ray stop``, then submitted again (it resumes from its newest checkpoint).

One local Ray head with 4 logical CPUs (what a CPU run needs: 1 training rank + 3) runs every
job, one after another: a run holds ~6-8 GB of host memory. The tiny model and synthetic data
are built once in the session's BRIDGE_RAY_HOME (the CPU presets' default). Every submission
has a hard time limit: a fault inside vLLM during weight sync hangs verl's driver instead of
failing, so a run that outlives its limit is stopped and the test fails, saying so.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap

import pytest
from conftest import Silent, run_cli, run_cli_watched, wait_for

pytestmark = pytest.mark.integration

CLUSTER = "ppo-cpu"
# An idle 2-core machine runs one of these jobs in ~3 min; on a loaded one start-up alone took 20 min
# (imports of torch/verl/vLLM in ~10 processes), printing all the while. A run is stopped when it prints
# nothing for QUIET_S (the longest silence seen under two busy loops: ~5 min, vLLM's engine start), or
# at the last-resort RUN_TIMEOUT_S.
QUIET_S = float(os.environ.get("BRIDGE_RAY_PPO_CPU_QUIET_S", 900))
RUN_TIMEOUT_S = float(os.environ.get("BRIDGE_RAY_PPO_CPU_TIMEOUT_S", 3600))
STEP_LINE = re.compile(r"step:(\d+) - (.*)")


def submit(recipe: str, *args: str) -> subprocess.CompletedProcess:
    """``bridge-ray submit RECIPE --follow -- ARGS``, stopped (job too) when silent or past the limit."""
    try:
        return run_cli_watched("submit", recipe, "--name", CLUSTER, "--exclude", ".gpu", "--exclude", ".gl",
                               "--follow", "--verbose", "--", *args,  # verl's own step lines are read
                               quiet=QUIET_S, limit=RUN_TIMEOUT_S)
    except Silent as err:
        import bridge_ray

        out = err.output or ""
        found = re.search(r"submitted (\S+)", out)
        job = found.group(1) if found else "?"
        if found:
            bridge_ray.Job(job, CLUSTER).stop()
        pytest.fail(f"{recipe} {' '.join(args)} {err.reason} (a vLLM fault during weight sync hangs verl's "
                    f"driver); stopped job {job}. Last output:\n{out[-3000:]}")


def steps(log: str) -> dict[int, dict[str, str]]:
    """verl PPO's console metrics per step: ``{step: {name: value}}`` (SFT's step lines left out)."""
    rows = {}
    for match in STEP_LINE.finditer(log):
        row = dict(part.split(":", 1) for part in match.group(2).split(" - ") if ":" in part)
        if "critic/score/mean" in row:
            rows[int(match.group(1))] = row
    return rows


def metrics(run_dir) -> dict[int, dict]:
    """verl's file-logger rows (``metrics.jsonl``) per step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row["data"] for row in rows}


def assert_merged_actor_generates(run_dir, step: int) -> None:
    from bridge_ray.models.checkpoints import check_hf_model

    result = json.loads((run_dir / "result.json").read_text())
    assert result["checkpoint"] == str(run_dir / "checkpoints" / f"global_step_{step}")
    assert result["hf_model"] == str(run_dir / "hf")
    assert isinstance(check_hf_model(run_dir / "hf"), str)  # loads with transformers, generates 8 tokens


@pytest.fixture(scope="module")
def cpu_cluster():
    import bridge_ray

    bridge_ray.up(CLUSTER, num_cpus=4)
    yield CLUSTER
    bridge_ray.down(CLUSTER)


@pytest.fixture(scope="module")
def ppo_run(cpu_cluster, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    return run_dir, submit("recipes/ppo_gsm8k.py", "preset=ppo_tiny_cpu", f"ppo.trainer.output_dir={run_dir}")


def test_ppo_recipe_takes_real_steps_with_a_critic_on_cpu(ppo_run):
    run_dir, out = ppo_run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    logged = steps(out.stdout)
    assert sorted(logged) == [1, 2]
    for row in logged.values():
        assert {"critic/score/mean", "critic/rewards/mean", "critic/vf_loss", "critic/values/mean",
                "critic/grad_norm", "actor/pg_loss"} <= set(row)
        assert float(row["critic/grad_norm"]) > 0 and float(row["actor/grad_norm"]) > 0
    assert sorted(metrics(run_dir)) == [1, 2]
    assert_merged_actor_generates(run_dir, 2)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["ppo"]["trainer"]["device"] == "cpu"
    assert config["task_runner_runtime_env"]["env_vars"]["VLLM_TARGET_DEVICE"] == "cpu"
    # The driver's own clock for its start, by phase, in the log and in the run's config (time to first step).
    assert list(config["driver_s"]) == ["python + imports", "connect", "cluster", "verl config", "node probes"]
    assert all(seconds >= 0 for seconds in config["driver_s"].values())
    assert re.search(r"\[bridge-ray\] driver ready [\d.]+ s after its process started \(python \+ imports [\d.]+ s, "
                     r"connect [\d.]+ s, cluster [\d.]+ s, verl config [\d.]+ s, node probes [\d.]+ s\)", out.stdout)
    # The run record, as for SFT: output dir, metrics, merged model; and export merges a step's actor.
    import bridge_ray

    submission = re.search(r"submitted (\S+)", out.stdout).group(1)
    run = bridge_ray.load_run(submission)
    assert (run.output_dir, run.hf_model, run.last_step) == (str(run_dir), str(run_dir / "hf"), 2)
    assert "critic/vf_loss" in run.metrics and "critic/score/mean" in run.metrics
    exported = run_cli("export", submission, "--step", "2", timeout=300)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (run_dir / "hf_step_2" / "config.json").is_file()
    assert bridge_ray.load_run(submission).exports == {"2": str(run_dir / "hf_step_2")}


CHAIN_ARGS = ("--tiny", "sft.trainer.total_steps=2", "sft.trainer.save_freq=2", "sft.trainer.test_freq=-1")


@pytest.fixture(scope="module")
def chain_run(cpu_cluster, tmp_path_factory):
    """recipes/sft_then_ppo.py --tiny: SFT, merge, then GRPO (``grpo_tiny_cpu``) from the merged model."""
    run_dir = tmp_path_factory.mktemp("chain") / "chain"
    return run_dir, submit("recipes/sft_then_ppo.py", "--run-dir", str(run_dir), *CHAIN_ARGS)


def test_grpo_takes_real_steps_on_cpu_from_the_sft_model(chain_run):
    run_dir, out = chain_run
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "[bridge-ray] stage sft: starting" in out.stdout and "[bridge-ray] stage ppo: starting" in out.stdout
    logged = steps(out.stdout)
    assert sorted(logged) == [1, 2]
    for row in logged.values():
        assert "critic/vf_loss" not in row  # GRPO: no critic
        assert float(row["critic/score/max"]) > float(row["critic/score/min"])  # rewards vary: a real gradient
        assert float(row["actor/grad_norm"]) > 0
        # vLLM (CPU) and the FSDP actor compute the same log-probs: weight sync works
        assert float(row["training/rollout_probs_diff_mean"]) < 1e-3
    stages = json.loads((run_dir / "stages.json").read_text())
    assert {name: row["output"] for name, row in stages.items()} == {"sft": str(run_dir / "sft" / "hf"),
                                                                    "ppo": str(run_dir / "ppo" / "hf")}
    ppo_config = json.loads((run_dir / "ppo" / "config.json").read_text())
    assert ppo_config["ppo"]["model"]["path"] == str(run_dir / "sft" / "hf")  # GRPO started from the SFT model
    assert ppo_config["ppo"]["algorithm"]["name"] == "grpo"
    assert_merged_actor_generates(run_dir / "ppo", 2)


def test_a_chain_rerun_skips_finished_stages(chain_run):
    run_dir, first = chain_run
    assert first.returncode == 0
    again = submit("recipes/sft_then_ppo.py", "--run-dir", str(run_dir), *CHAIN_ARGS)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    for name in ("sft", "ppo"):
        assert f"[bridge-ray] stage {name}: finished before ({run_dir / name / 'hf'}); skipping" in again.stdout
    assert "stage sft: starting" not in again.stdout and "stage ppo: starting" not in again.stdout
    assert steps(again.stdout) == {}


REWARD_RECIPE = textwrap.dedent('''
    """PPO on CPU with this recipe's own reward. It scores one step (4 samples), then raises: one run
    shows the reward used and a failing reward failing the job. The calls are counted in a file:
    verl may score a step's samples in more than one process, each with its own module state (a
    per-process counter let a loaded run's step 4 through)."""
    import sys

    from bridge_ray import ppo

    CALLS_FILE = "{calls_file}"


    def reward(data_source, solution_str, ground_truth, extra_info=None):
        with open(CALLS_FILE, "a+") as calls:
            calls.write("x\\n")
            calls.flush()
            calls.seek(0)
            if len(calls.read().split()) > 4:
                raise ValueError("this reward fails on purpose after the first step")
        return 1.0 + 0.1 * sum(c.isdigit() for c in solution_str) / max(1, len(solution_str))


    if __name__ == "__main__":
        ppo.main(ppo.ppo_tiny_cpu(output_dir=sys.argv[1]), sys.argv[2:], reward=reward)
''')
RAISE_LINE = REWARD_RECIPE.splitlines().index(
    '            raise ValueError("this reward fails on purpose after the first step")') + 1


def test_a_finished_run_submitted_again_trains_nothing_and_keeps_its_model(ppo_run):
    """The same run (same output dir, same total_steps) submitted again trained step 3 of 2 (verl counts on from
    the checkpoint before it checks for the end) and merged it over the run's model: now it is refused first."""
    run_dir, first = ppo_run
    assert first.returncode == 0
    model = run_dir / "hf" / "config.json"
    before = model.stat().st_mtime_ns
    out = submit("recipes/ppo_gsm8k.py", "preset=ppo_tiny_cpu", f"ppo.trainer.output_dir={run_dir}")
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-2000:]
    said = out.stdout + out.stderr
    assert (f"error: {run_dir} already holds this run's last checkpoint (step 2 of 2): nothing to train; raise "
            "ppo.trainer.total_steps to train on from it, or give a new output dir to start over") in said
    assert not (run_dir / "checkpoints" / "global_step_3").exists() and model.stat().st_mtime_ns == before
    import bridge_ray

    refused = bridge_ray.load_run(re.search(r"submitted (\S+) to cluster", out.stdout).group(1))
    assert not refused.output_dir and refused.last_step is None  # not the earlier run's metrics as its own


def test_resume_with_more_steps_and_a_failing_recipe_reward(ppo_run, tmp_path):
    """Two checks in one job (one start-up less in CI). The PPO run above is submitted again with 4
    steps and the same output dir, through a recipe with its own reward: it resumes from step 2's
    checkpoint, step 3 is scored by this reward (every score >= 1, which only it gives), and the
    first sample of step 4 raises, so the job fails with the reward's own traceback."""
    run_dir, first = ppo_run
    assert first.returncode == 0
    recipe = tmp_path / "reward_recipe.py"
    recipe.write_text(REWARD_RECIPE.replace("{calls_file}", str(tmp_path / "reward_calls")))
    out = submit(str(recipe), str(run_dir), "ppo.trainer.total_steps=4")
    assert out.returncode == 1, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"[bridge-ray] resumed from step 2 ({run_dir / 'checkpoints' / 'global_step_2'})" in out.stdout
    assert f"Resuming from {run_dir / 'checkpoints' / 'global_step_2'}" in out.stdout
    logged = steps(out.stdout)
    assert sorted(logged) == [3]
    assert float(logged[3]["critic/score/min"]) >= 1.0  # only this recipe's reward scores >= 1
    assert sorted(metrics(run_dir)) == [1, 2, 3]  # the earlier attempt's steps kept, this one's after them
    shown = out.stdout + out.stderr
    assert "error: reward reward_recipe.py:reward raised on sample " in shown
    assert re.search(rf'File "\S+/reward_recipe\.py", line {RAISE_LINE}, in reward', shown)  # the job's copy
    assert "ValueError: this reward fails on purpose after the first step" in shown
    assert "Job entrypoint command failed with exit code 1" in out.stderr


def _run_processes(run_dir) -> list[str]:
    """Processes whose environment names ``run_dir`` (verl's workers, vLLM's engine: the job's
    runtime env points verl's file logger into the run folder), as ``PID NAME``."""
    found = []
    for proc in os.listdir("/proc"):
        try:
            with open(f"/proc/{proc}/environ", "rb") as env, open(f"/proc/{proc}/cmdline", "rb") as cmd:
                if str(run_dir).encode() in env.read():
                    name = cmd.read().split(b"\0")[0].decode(errors="replace")
                    found.append(f"{proc} {name}")
        except OSError:  # gone, or not ours to read
            continue
    return found


def test_stop_mid_run_then_submit_again_resumes_from_the_last_checkpoint(cpu_cluster, tmp_path):
    """``bridge-ray stop`` while PPO trains (a checkpoint every step), then the same run submitted
    again: no process of the stopped run is left (on a GPU, a vLLM engine left behind would keep the
    card's memory from the next run), the run record says STOPPED, and the new submission resumes from
    the newest complete checkpoint with its step numbers carrying on. This run packs its micro batches
    (``ppo.model.use_remove_padding=true``, sdpa's block-diagonal mask) into token-budget micro batches
    (``ppo.actor.max_tokens_per_gpu``: verl's dynamic batches), so verl's packed, dynamic path for the
    actor, reference and critic takes real steps here too; the other CPU runs pad."""
    import bridge_ray

    run_dir = tmp_path / "run"
    args = ("preset=ppo_tiny_cpu", f"ppo.trainer.output_dir={run_dir}", "ppo.trainer.save_freq=1",
            "ppo.model.use_remove_padding=true", "ppo.actor.max_tokens_per_gpu=448")
    submitted = run_cli("submit", "recipes/ppo_gsm8k.py", "--name", CLUSTER, "--exclude", ".gpu", "--exclude", ".gl",
                        "--", *args, "ppo.trainer.total_steps=100", timeout=600)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = bridge_ray.Job(re.search(r"submitted (\S+)", submitted.stdout).group(1), CLUSTER)
    tracker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    saved = lambda: tracker.is_file() and tracker.read_text().strip().isdigit() and int(tracker.read_text()) >= 2
    wait_for(saved, "checkpoint of step 2", RUN_TIMEOUT_S, job=job)
    wait_for(lambda: _run_processes(run_dir), "verl/vLLM process of the run", 60)
    stopped = run_cli("stop", job.submission_id, "--name", CLUSTER, "--wait", "300", timeout=400)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[-1] == f"{job.submission_id}: STOPPED" and job.status() == "STOPPED"
    wait_for(lambda: not _run_processes(run_dir), "end of the stopped run's processes", 120)
    record = bridge_ray.load_run(job.submission_id)  # `stop` wrote the end into the record
    assert record.status == "STOPPED" and record.last_step >= 2

    last = int(tracker.read_text())
    assert last < 100 and (run_dir / "checkpoints" / f"global_step_{last}").is_dir()
    again = submit("recipes/ppo_gsm8k.py", *args, f"ppo.trainer.total_steps={last + 1}")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
    assert f"[bridge-ray] resumed from step {last} ({run_dir / 'checkpoints' / f'global_step_{last}'})" in again.stdout
    assert sorted(steps(again.stdout)) == [last + 1]
    assert max(metrics(run_dir)) == last + 1
    assert_merged_actor_generates(run_dir, last + 1)
