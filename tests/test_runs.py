"""Run records, W&B tracking and export.

    .venv/bin/python -m pytest tests/test_runs.py -q -m "not integration"   # unit, seconds
    .venv/bin/python -m pytest tests/test_runs.py -q -m integration         # real Ray head (+ verl SFT on CPU)

Unit tests use their own BRIDGE_RAY_HOME; integration tests use the session ``local_cluster``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_cli

from bridge_ray import jobs, runs
from bridge_ray.cli import cli
from bridge_ray.cluster import records
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.jobs import tracking
from bridge_ray.errors import RunNotFound
from bridge_ray.models.checkpoints import CheckpointError
from bridge_ray.models.export import export

FAKE_HF = "hf_FAKEtokenForRunRecordTests0001"
FAKE_WANDB = "wandbFAKEkey0123456789abcdef0123456789ab"
RECORD_FIELDS = ("submission_id", "cluster", "recipe", "entrypoint", "runtime_env", "project_dir", "git",
                 "cluster_record", "start_time", "status", "run_dir")


def _git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """A BRIDGE_RAY_HOME of this test's own, with a recorded (not running) cluster ``unit``."""
    monkeypatch.setenv("BRIDGE_RAY_HOME", str(tmp_path / "home"))
    for name in (runs.RUN_DIR_ENV, "WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    records.save(ClusterRecord(name="unit", backend="local", gcs_address="127.0.0.1:1",
                               dashboard_url="http://127.0.0.1:1"))
    return tmp_path / "home"


@pytest.fixture
def project(tmp_path) -> Path:
    """A git project with one commit and an uncommitted change to its recipe."""
    root = tmp_path / "project"
    (root / "recipes").mkdir(parents=True)
    (root / "setup.cfg").write_text("[metadata]\nname = p\n")
    recipe = root / "recipes" / "train.py"
    recipe.write_text("print('v1')\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "v1")
    recipe.write_text("print('v2')\n")
    return root


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_plan_gives_the_job_its_run_dir_and_wandb_env(home, project):
    recipe = project / "recipes" / "train.py"
    env = jobs.plan(recipe, cluster="unit", submission_id="r-1").runtime_env["env_vars"]
    folder = str(home / "runs" / "r-1")
    assert (env[runs.RUN_DIR_ENV], env["WANDB_DIR"], env["WANDB_MODE"]) == (folder, folder, "offline")
    env = jobs.plan(recipe, cluster="unit", submission_id="r-2",
                    env={"WANDB_API_KEY": FAKE_WANDB}).runtime_env["env_vars"]
    assert "WANDB_MODE" not in env
    env = jobs.plan(recipe, cluster="unit", submission_id="r-3", env={"WANDB_MODE": "disabled"}).runtime_env["env_vars"]
    assert env["WANDB_MODE"] == "disabled"


def test_start_run_records_the_submission_and_no_secret(home, project, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HF)
    plan = jobs.plan(project / "recipes" / "train.py", ["sft.optim.lr=1e-4"], cluster="unit", submission_id="r-1",
                     env={"WANDB_API_KEY": FAKE_WANDB})
    folder = runs.start_run(plan, records.load("unit"))

    data = json.loads((folder / "run.json").read_text())
    assert all(data.get(name) not in (None, "", {}) for name in RECORD_FIELDS), data
    run = runs.load_run("r-1")
    assert run.recipe == "recipes/train.py" and run.entrypoint.endswith("recipes/train.py sft.optim.lr=1e-4")
    # Secrets never enter the runtime_env (Ray puts it on worker command lines): only their file's path does.
    assert sorted(plan.secrets) == ["HF_TOKEN", "WANDB_API_KEY"]
    assert "HF_TOKEN" not in run.runtime_env["env_vars"] and "WANDB_API_KEY" not in run.runtime_env["env_vars"]
    assert run.runtime_env["env_vars"]["BRIDGE_RAY_ENV_FILE"] == str(home / "clusters" / "unit" / "secrets" / "r-1.env")
    assert run.git["commit"] == _git(project, "rev-parse", "HEAD") and run.git["dirty"] is True
    assert "+print('v2')" in (folder / "git.diff").read_text()
    assert run.cluster_record["name"] == "unit" and run.status == "PENDING"
    assert abs(run.start_time - time.time()) < 60
    text = _files_text(folder)
    assert FAKE_HF not in text and FAKE_WANDB not in text


def test_run_records_are_this_users_only_in_a_new_home_and_an_old_one(home, project):
    """run.json (0644, in 0755 folders) holds the log tail and the runtime_env's values: a fresh home is made 0700,
    and the home's runs/ and clusters/ are made 0700 whatever made them before."""
    assert home.stat().st_mode & 0o777 == 0o700  # the fixture's records.save made it
    (home / "runs").mkdir(mode=0o755)
    os.chmod(home / "runs", 0o755)
    os.chmod(home, 0o755)  # a home that is not bridge-ray's to tighten is left as it is
    folder = runs.start_run(jobs.plan(project / "recipes" / "train.py", cluster="unit", submission_id="r-1"),
                            records.load("unit"))
    assert folder.parent == home / "runs"
    assert [(path.stat().st_mode & 0o777) for path in (home, home / "runs", home / "clusters")] == [0o755, 0o700, 0o700]


def test_start_run_outside_git_and_before_the_first_commit(home, tmp_path):
    (tmp_path / "plain").mkdir()
    plan = jobs.SubmitPlan("unit", "r-plain", "python r.py", {"working_dir": str(tmp_path / "plain")}, {})
    assert runs.load_run(runs.start_run(plan, records.load("unit")).name).git == {"repo": False}
    _git(tmp_path / "plain", "init", "-q")
    plan = jobs.SubmitPlan("unit", "r-fresh", "python r.py", {"working_dir": str(tmp_path / "plain")}, {})
    runs.start_run(plan, records.load("unit"))
    assert runs.load_run("r-fresh").git["commit"] is None


def _started(home: Path, submission_id: str = "r-1") -> Path:
    plan = jobs.SubmitPlan("unit", submission_id, "python r.py", {"working_dir": str(home)}, {"recipe": "r.py"})
    return runs.start_run(plan, records.load("unit"))


@pytest.mark.parametrize("line, expected", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
    ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for "
     "600000 milliseconds before timing out.", "NCCL timeout"),
    ("bridge_ray.errors.PreflightError: /data/train.parquet is not readable on node n2", "preflight"),
    ("ray.exceptions.ActorDiedError: The actor died because its node has died. Node Id: ab12", "node lost"),
    ("slurmstepd: error: *** JOB 12 ON n1 CANCELLED AT 2026-11-25T10:00:00 DUE TO TIME LIMIT ***", "time limit"),
    ("ValueError: something else went wrong", None),
])
def test_failure_is_classified_when_the_log_is_clear(line, expected):
    assert runs.classify_failure(f"step 1\nTraceback (most recent call last):\n{line}\n") == expected


def test_finish_run_keeps_the_last_lines_scrubbed_and_is_idempotent(home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_HF)
    _started(home)
    logs = "\n".join(f"line {i}" for i in range(100)) + f"\nprinting HF_TOKEN={FAKE_HF}\nCUDA out of memory\n"
    message = "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n" + logs
    run = runs.finish_run("r-1", "FAILED", message, logs, end_time=123.0)
    assert (run.status, run.failure, run.end_time) == ("FAILED", "out of memory", 123.0)
    assert run.message == "Job entrypoint command failed with exit code 1"
    assert run.log_tail.splitlines() == [f"line {i}" for i in range(82, 100)] + ["printing HF_TOKEN=***",
                                                                                  "CUDA out of memory"]
    again = runs.finish_run("r-1", "SUCCEEDED", "", "", end_time=999.0)
    assert (again.status, again.end_time) == ("FAILED", 123.0)
    assert FAKE_HF not in _files_text(home / "runs" / "r-1")
    assert runs.finish_run("never-submitted", "FAILED") is None


def test_job_side_records_packages_outputs_and_wandb(home, monkeypatch, capsys, tmp_path):
    folder = _started(home)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    assert runs.record_job(output_dir) is None  # outside a job: nothing to do
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))

    runs.record_job(output_dir, loggers=("console", "wandb"))
    (output_dir / "config.json").write_text(json.dumps({"sft": {"model": {"path": "/m"}}}))
    (output_dir / "steps.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n')
    run = runs.load_run("r-1")
    assert (run.status, run.last_step, run.metrics["loss"]) == ("RUNNING", 2, 2.5)
    (output_dir / "metrics.json").write_text(json.dumps({"final": {"step": 3, "loss": 2.0}, "history": []}))
    runs.update_run(hf_model=str(output_dir / "hf"))
    with pytest.raises(TypeError, match="hf_modle"):
        runs.update_run(hf_modle="typo")

    run = runs.finish_run("r-1", "SUCCEEDED")
    assert json.loads((folder / "packages.json").read_text())["ray"] == run.packages["ray"] == "2.60.0"
    assert run.packages["python"] == sys.version.split()[0] and "vllm" in run.packages
    assert (run.output_dir, run.hf_model) == (str(output_dir), str(output_dir / "hf"))
    assert (run.last_step, run.metrics, run.config) == (3, {"step": 3, "loss": 2.0}, {"sft": {"model": {"path": "/m"}}})
    assert (folder / "config.json").is_file() and (folder / "metrics.json").is_file()  # snapshots
    assert "W&B is offline" in capsys.readouterr().out


def test_a_stopped_ppo_run_shows_the_last_step_verl_logged(home, monkeypatch, tmp_path):
    """A PPO job stopped mid-run never reaches the end that writes its last step into the record:
    the record shows the last row of verl's metrics.jsonl (a half-written last line is left out)."""
    folder = _started(home)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(folder))
    runs.record_job(output_dir)
    (output_dir / "metrics.jsonl").write_text('{"step": 1, "data": {"critic/score/mean": 0.1}}\n'
                                              '{"step": 2, "data": {"critic/score/mean": 0.3}}\n{"step": 3, "da')
    run = runs.finish_run("r-1", "STOPPED")
    assert (run.status, run.last_step, run.metrics) == ("STOPPED", 2, {"step": 2, "critic/score/mean": 0.3})
    runs.update_run(last_step=5, metrics={"step": 5})  # what a run that ends by itself records wins
    assert runs.load_run("r-1").last_step == 5


def test_load_and_list_runs(home):
    _started(home, "sft-a-1")
    _started(home, "sft-b-1")
    assert [r.submission_id for r in runs.list_runs()] == ["sft-a-1", "sft-b-1"]
    assert runs.load_run("sft-b").submission_id == "sft-b-1"
    assert runs.load_run().submission_id == "sft-b-1"
    with pytest.raises(RunNotFound) as err:
        runs.load_run("sft")
    assert str(err.value) == f"several runs start with 'sft' in {home / 'runs'} (sft-a-1, sft-b-1): give more of the id"
    with pytest.raises(RunNotFound, match="no run 'x' in"):
        runs.load_run("x")


def test_down_force_says_who_stopped_a_run_also_after_a_follower_recorded_its_end(home):
    """A follower (``logs --follow``) may see the job STOPPED and record Ray's words before ``down --force``
    gets to it (CI once saw this on a loaded machine): the record still says who stopped it."""
    _started(home)
    runs.finish_run("r-1", "STOPPED", "Job was intentionally stopped.")
    runs.record_stopped("r-1", "stopped by `bridge-ray down --force`")
    assert (runs.load_run("r-1").status, runs.load_run("r-1").message) == ("STOPPED", "stopped by `bridge-ray down --force`")
    # A run that had ended otherwise before the stop keeps how it ended.
    _started(home, "r-2")
    runs.finish_run("r-2", "SUCCEEDED")
    runs.record_stopped("r-2", "stopped by `bridge-ray down --force`")
    assert (runs.load_run("r-2").status, runs.load_run("r-2").message) == ("SUCCEEDED", "")


def test_a_follower_that_read_the_record_before_down_force_wrote_it_does_not_overwrite_it(home, monkeypatch):
    """Two processes ending one run at once: a follower reads the record (unfinished), ``down --force`` records
    the stop, then the follower writes. CI saw the follower's "Job was intentionally stopped." win; the first
    end recorded must stay. The follower is paused between its read and its write (a thread here; the lock is
    a file lock, which also holds between the CLI's processes)."""
    _started(home)
    read, release = threading.Event(), threading.Event()
    copy_outputs = runs._copy_outputs

    def paused(folder, output_dir):
        if threading.current_thread().name == "follower":
            read.set()
            assert release.wait(60)
        copy_outputs(folder, output_dir)

    monkeypatch.setattr(runs, "_copy_outputs", paused)
    follower = threading.Thread(name="follower", target=runs.finish_run,
                                args=("r-1", "STOPPED", "Job was intentionally stopped.", "the follower's log\n"))
    follower.start()
    assert read.wait(60)
    runs.record_stopped("r-1", "stopped by `bridge-ray down --force`")
    release.set()
    follower.join(60)
    run = runs.load_run("r-1")
    assert (run.status, run.message) == ("STOPPED", "stopped by `bridge-ray down --force`")
    assert (home / "runs" / "r-1" / runs.JOB_LOG).read_text() == "the follower's log\n"  # its log is still kept


def test_marking_a_run_lost_never_overwrites_an_end_recorded_meanwhile(home, monkeypatch):
    """``mark_lost`` reads the records, then marks the unfinished ones; an end recorded in between stays."""
    _started(home)
    read_record, ended = runs.read_record, []

    def then_the_job_ends(folder):
        record = read_record(folder)
        if not ended:  # once: finish_run reads the record too
            ended.append(folder)
            runs.finish_run("r-1", "SUCCEEDED")
        return record

    monkeypatch.setattr(runs, "read_record", then_the_job_ends)
    assert runs.mark_lost("unit", "the head stopped answering") == []
    assert (runs.load_run("r-1").status, runs.load_run("r-1").failure) == ("SUCCEEDED", None)


def test_refresh_records_the_runs_of_a_dead_head_as_lost(home):
    _started(home)
    run = jobs.load_run("r-1", refresh=True)
    assert (run.status, run.failure) == ("FAILED", "cluster lost")
    assert run.message == "the head of cluster 'unit' at http://127.0.0.1:1 stopped answering"
    # A head that comes back and reports the real end still wins over the mark.
    runs.finish_run("r-1", "SUCCEEDED")
    assert (runs.load_run("r-1").status, runs.load_run("r-1").failure) == ("SUCCEEDED", None)


def test_refresh_leaves_a_run_of_an_unrecorded_cluster_as_recorded(home):
    _started(home)
    records.delete("unit")
    run = jobs.load_run("r-1", refresh=True)
    assert run.status == "PENDING" and run.message.startswith("status not refreshed: no cluster named 'unit'")


def test_an_unreadable_run_record_is_one_line_and_hides_no_other_run(home):
    _started(home, "good-1")
    broken = home / "runs" / "bad-1"
    broken.mkdir(parents=True)
    (broken / "run.json").write_text('{"submission_id": "bad-')
    runner = CliRunner()
    listed = runner.invoke(cli, ["runs"])
    assert listed.exit_code == 0 and listed.stdout.startswith("good-1") and "bad-1" not in listed.stdout
    assert listed.stderr.startswith(f"warning: the run record {broken / 'run.json'} is unreadable (")
    shown = runner.invoke(cli, ["runs", "show", "bad-1"])
    assert shown.exit_code == 2
    assert shown.output.strip().startswith(f"error: the run record {broken / 'run.json'} is unreadable (")
    assert shown.output.strip().endswith(f"): fix or delete {broken}")


def test_runs_cli_lists_and_shows(home, monkeypatch):
    folder = _started(home)
    runs.finish_run("r-1", "FAILED", "exit 1", "boom\nCUDA out of memory", end_time=time.time())
    runner = CliRunner()
    listed = runner.invoke(cli, ["runs"])
    assert listed.exit_code == 0 and listed.output.startswith("r-1  FAILED") and "(out of memory)" in listed.output
    shown = runner.invoke(cli, ["runs", "show", "r-1"])
    assert shown.exit_code == 0
    assert "status      FAILED (out of memory): exit 1" in shown.output and "--- last log lines ---" in shown.output
    as_json = json.loads(runner.invoke(cli, ["runs", "show", "r-1", "--json"]).output)
    assert as_json["run_dir"] == str(folder)
    missing = runner.invoke(cli, ["runs", "show", "nope"])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output
    runs.update_fields(folder, {"metrics": {"loss": 0.5, "val_loss": None}})  # a run with no validation
    assert "metrics     loss=0.5\n" in runner.invoke(cli, ["runs", "show", "r-1"]).output


def test_logs_of_a_job_whose_cluster_is_gone_show_the_log_its_run_saved(home):
    """After ``down`` the reviewer got "start one with `bridge-ray up`", which cannot bring a log back;
    the run folder keeps the whole log of every job seen ending."""
    _started(home)
    runs.finish_run("r-1", "SUCCEEDED", "", "[bridge-ray] starting\nverl chatter\n[bridge-ray] done\n")
    records.record_path("unit").unlink()
    result = subprocess.run([sys.executable, "-m", "bridge_ray", "logs", "r-1", "--name", "unit", "--all"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert (result.returncode, result.stdout) == (0, "[bridge-ray] starting\nverl chatter\n[bridge-ray] done\n")
    assert result.stderr == (f"note: cluster 'unit' is not there to ask: this is the log saved when job r-1 ended "
                             f"({home / 'runs' / 'r-1' / 'job.log'})\n")
    unseen = subprocess.run([sys.executable, "-m", "bridge_ray", "logs", "r-2", "--name", "unit"],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert unseen.returncode == 2 and unseen.stderr.startswith("error: no cluster named 'unit' is recorded")


def test_wandb_names_come_from_env_over_config():
    assert tracking.resolve_names("cfg-p", "cfg-e", {}) == ("cfg-p", "cfg-e")
    assert tracking.resolve_names("cfg-p", "cfg-e", {"WANDB_PROJECT": "p", "WANDB_NAME": "n"}) == ("p", "n")


def test_wandb_offline_writes_its_files_and_the_record_finds_them(home, tmp_path):
    folder = _started(home)
    script = ("import wandb\nrun = wandb.init(project='gsm8k', name='tiny')\nrun.log({'loss': 1.0})\nrun.finish()\n")
    env = {**os.environ, **tracking.job_env(folder, {}), "WANDB_ENTITY": "me", "WANDB_SILENT": "true"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, cwd=tmp_path, timeout=120)

    wandb = runs.load_run("r-1").wandb
    assert wandb["mode"] == "offline" and Path(wandb["dir"]).parent == folder / "wandb"
    assert any(Path(wandb["dir"]).glob("run-*.wandb"))
    assert wandb["sync_command"] == f"wandb sync {wandb['dir']}"
    assert wandb["url"] == f"https://wandb.ai/me/gsm8k/runs/{wandb['run_id']}"  # valid once synced
    assert "offline: upload with `wandb sync" in CliRunner().invoke(cli, ["runs", "show", "r-1"]).output


def test_export_names_the_steps_there_are(home, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    (root / "global_step_3").mkdir(parents=True)
    (root / "global_step_6").mkdir()
    with pytest.raises(CheckpointError) as err:
        export(tmp_path / "out", step=4)
    assert str(err.value) == (f"no checkpoint for step 4 under {root} (steps there: 3, 6, none complete): training "
                              "saves one every `save_freq` steps and at its end: train or resume the run until it "
                              "saves one, or pass the output dir of a run that did")
    (root / "global_step_6" / "model_world_size_1_rank_0.pt").write_bytes(b"")  # a complete save
    with pytest.raises(CheckpointError) as err:
        export(tmp_path / "out", step=4)
    assert str(err.value) == f"no checkpoint for step 4 under {root} (steps there: 6): pass --step with one of them"


# Integration: a real Ray head (the session ``local_cluster``, name "ci") -------------------------

REPO = Path(__file__).resolve().parents[1]
LOCAL_ONLY = (".gpu", ".gl")  # other engineers' ignored GPU staging folders in this tree (hundreds of MiB)


@pytest.mark.integration
def test_job_wait_records_how_a_job_ended(local_cluster):
    job = jobs.submit(REPO / "recipes" / "hello_cluster.py", ["--fail"], cluster="ci", excludes=LOCAL_ONLY)
    with pytest.raises(Exception, match="FAILED"):
        job.wait(timeout_s=300)
    run = runs.load_run(job.submission_id)
    assert run.status == "FAILED" and run.end_time >= run.start_time
    assert "failing on purpose" in run.log_tail and run.failure is None
    assert run.cluster_record["dashboard_url"] == local_cluster.dashboard_url
    ok = jobs.submit(REPO / "recipes" / "hello_cluster.py", cluster="ci", excludes=LOCAL_ONLY)
    assert ok.wait(timeout_s=300) == "SUCCEEDED"
    assert runs.load_run(ok.submission_id).status == "SUCCEEDED"


@pytest.fixture(scope="module")
def sft_job(local_cluster):
    """`recipes/sft_gsm8k.py` submitted with fake secrets in the env (and W&B offline: it is unreachable)."""
    from test_hub import FAKE_TOKEN

    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_TOKEN", FAKE_TOKEN)
        env.setenv("WANDB_API_KEY", FAKE_WANDB)
        env.setenv("WANDB_MODE", "offline")
        job = jobs.submit(REPO / "recipes" / "sft_gsm8k.py", ["sft.trainer.loggers=[console,wandb]"], cluster="ci",
                          excludes=LOCAL_ONLY)
        status = job.wait(timeout_s=1200)
    assert status == "SUCCEEDED", job.logs()[-3000:]
    return job


@pytest.mark.integration
def test_sft_run_record_has_the_submission_and_no_secret(sft_job):
    from test_hub import FAKE_TOKEN

    run = runs.load_run(sft_job.submission_id)
    assert run.status == "SUCCEEDED" and run.end_time > run.start_time
    assert run.git["repo"] and run.git["commit"] and "HF_TOKEN" not in run.runtime_env["env_vars"]
    assert run.cluster_record["name"] == "ci"
    assert run.entrypoint.endswith("-m bridge_ray.jobs.launch recipes/sft_gsm8k.py 'sft.trainer.loggers=[console,wandb]'")
    assert run.wandb["mode"] == "offline" and any(Path(run.wandb["dir"]).glob("run-*.wandb"))
    assert "offline: upload with `wandb sync" in CliRunner().invoke(cli, ["runs", "show", sft_job.submission_id]).output
    for text in (sft_job.logs(), _files_text(Path(run.run_dir))):
        assert FAKE_TOKEN not in text and FAKE_WANDB not in text


@pytest.mark.integration
def test_the_console_shows_progress_and_the_whole_log_stays_in_the_run_folder(sft_job):
    """The non-TTY format of a real SFT job: its own lines and one line per step; `--all` and the run
    folder's job.log hold everything verl and Ray printed."""
    import re
    import stat

    from conftest import run_cli

    shown = run_cli("logs", sft_job.submission_id, "--name", "ci")
    everything = run_cli("logs", sft_job.submission_id, "--name", "ci", "--all")
    assert shown.returncode == everything.returncode == 0, shown.stderr + everything.stderr
    lines = shown.stdout.splitlines()
    step = re.compile(r"^\[bridge-ray\] step (\d+)/6 loss \d+\.\d{4}( val_loss \d+\.\d{4})? lr \S+ tokens/s \d+ "
                      r"\(\d+/worker\)( mfu \d\.\d{4})? \d+\.\d\ds \| elapsed \d+m\d\ds( eta \d+m\d\ds)?$")
    assert [int(step.match(line).group(1)) for line in lines if step.match(line)] == [1, 2, 3, 4, 5, 6], lines
    # Nothing of verl's or Ray's: bridge-ray's lines and the recipe's own result (sft.main prints it).
    assert [line.split(":")[0] for line in lines if not line.startswith("[bridge-ray] ")] == [
        "run folder", "merged Hugging Face model"]
    assert len(everything.stdout.splitlines()) > 3 * len(lines)
    kept = runs.run_dir(sft_job.submission_id) / "job.log"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_text().splitlines()[-20:] == everything.stdout.splitlines()[-20:]
    # `runs show` ends with the figures that matter; `runs plot` draws the curves.
    shown = run_cli("runs", "show", sft_job.submission_id).stdout
    assert re.search(r"^loss {9}first \S+ {3}last \S+ {3}best \S+ \(step \d\)$", shown, re.M), shown
    assert re.search(r"^tokens_per_s mean \S+ {3}last \S+$", shown, re.M), shown
    plotted = run_cli("runs", "plot", sft_job.submission_id)
    png = runs.run_dir(sft_job.submission_id) / "metrics.png"
    assert plotted.stdout.strip() == f"wrote {png}" and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_sft_run_record_has_outputs_and_feeds_export_and_upload(sft_job, monkeypatch):
    """What the job records (packages, output dir, steps, merged model), then export and upload from it."""
    from test_hub import FAKE_TOKEN, HubStandIn

    from bridge_ray.models import hub

    run = runs.load_run(sft_job.submission_id)
    assert {"python", "torch", "ray", "verl", "transformers", "vllm"} <= set(run.packages or {})
    assert run.packages["verl"] == "0.9.1" and run.host
    assert run.config["sft"]["trainer"]["loggers"] == ["console", "wandb"]
    assert run.last_step == 6 and run.metrics["loss"] > 0
    assert Path(run.hf_model, "config.json").is_file()
    shown = CliRunner().invoke(cli, ["runs", "show", sft_job.submission_id]).output
    assert f"hf model    {run.hf_model}" in shown and "last step   6" in shown

    exported = export(sft_job.submission_id, step=3)
    assert runs.load_run(sft_job.submission_id).exports == {"3": str(exported)}
    # The same through the CLI, as a user runs it (it once crashed on the package's `export` name).
    out = run_cli("export", sft_job.submission_id, "--step", "6", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    target = Path(run.output_dir) / "hf_step_6"
    assert out.stdout.startswith(f"merged into {target}\nNext: bridge-ray upload {target}")
    shard_dir = Path(run.output_dir) / "checkpoints" / "global_step_6"
    assert out.stderr.startswith(f"[bridge-ray] merging {shard_dir} (")  # the long phases, with their times
    assert f" of shards) into {target}: done in " in out.stderr
    assert f"[bridge-ray] checking that {target} loads in transformers and generates: done in " in out.stderr
    assert (target / "config.json").is_file() and runs.load_run(sft_job.submission_id).exports["6"] == str(target)
    missing = run_cli("export", sft_job.submission_id, "--step", "4")
    assert missing.returncode == 2 and missing.stderr.startswith("error: no checkpoint for step 4 under ")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # the uploader's own login, as the user's shell would have it
    with HubStandIn() as standin:
        url = hub.upload(sft_job.submission_id, "me/sft-gsm8k-tiny", endpoint=standin.url)
        card = standin.repos["me/sft-gsm8k-tiny"]["files"]["README.md"].decode()
    assert runs.load_run(sft_job.submission_id).hub_url == url
    assert "| Steps | 6 |" in card and "sft_gsm8k.py" in card and "wandb sync" in card
    assert FAKE_TOKEN not in _files_text(Path(run.output_dir)) and FAKE_WANDB not in _files_text(Path(run.output_dir))
