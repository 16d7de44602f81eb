"""What a user on a shared login node must be able to count on, against real local Ray heads.

No secret in any command line, log or world-readable file; no variable of the user's shell
redirecting a command or receiving the token; nothing listening beyond loopback; no job lost
or killed silently; one line and a non-zero exit instead of a traceback. Each test drives the
CLI as a user would (a subprocess) and waits on events (a line, a status), never on sleeps;
the deadlines are hang guards only.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import bridge_ray
from bridge_ray import runs
from bridge_ray.cluster import records
from bridge_ray.cluster import local, processes
from bridge_ray.jobs import credentials
from conftest import HANG_GUARD_S, REPO, run_cli, wait_for

pytestmark = pytest.mark.integration

SLEEPY = "import time\nprint('sleeping', flush=True)\ntime.sleep(900)\n"


def job_ids(cluster: str) -> list[str]:
    return [j.submission_id for j in bridge_ray.list_jobs(cluster)]


def last_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1]


def project(tmp_path: Path, name: str, body: str) -> Path:
    """A tiny project (its own working_dir) holding one recipe."""
    folder = tmp_path / f"proj-{name}"
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text("")
    (folder / f"{name}.py").write_text(body)
    return folder / f"{name}.py"


def running(cluster: str, recipe: Path) -> str:
    """Submit ``recipe`` and return its id once the job is RUNNING."""
    job = bridge_ray.submit(recipe, cluster=cluster)
    wait_for(lambda: job.status() == "RUNNING", f"job {job.submission_id} to run")
    return job.submission_id


def follower(*args: str) -> tuple[subprocess.Popen, list[str]]:
    """``bridge-ray ARGS`` in the background; its stdout lines are collected as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "bridge_ray", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def listening(pids: list[int]) -> list[str]:
    """``ss -ltnp`` lines of the sockets these processes listen on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]


def local_address(line: str) -> str:
    return line.split()[3].rsplit(":", 1)[0]


def listeners_on(ports: dict[str, int]) -> list[str]:
    """``ss -ltnp`` lines of anything listening on one of ``ports`` (with the process, where it is ours)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if int(line.split()[3].rsplit(":", 1)[1]) in set(ports.values())]


@pytest.fixture
def spare(bridge_home):
    """A local cluster of its own, for tests that take it down or kill its head."""
    name = f"spare{secrets.token_hex(2)}"
    record = bridge_ray.up(name, num_cpus=2)
    yield record
    processes.terminate(local.pids(record, by_open_files=True), grace_s=1)
    records.delete(name)


# ---- 1. the shell's RAY_* and proxy variables redirect nothing -------------------------------


class _Trap:
    """A listener that records every connection (and the first bytes of each) made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                self.seen.append(conn.recv(65536))
            except OSError:
                self.seen.append(b"")
            conn.close()


def test_shell_variables_neither_redirect_commands_nor_receive_the_token(local_cluster, plain_ray_head, tmp_path):
    """RAY_ADDRESS names a foreign Ray (auth off, would accept the job), RAY_API_SERVER_ADDRESS and every
    proxy variable a trap: every command still talks to the recorded cluster only."""
    from ray.job_submission import JobSubmissionClient

    foreign_url, _ = plain_ray_head
    trap = _Trap()
    token = Path(local_cluster.token_path).read_text().strip()
    hostile = {"RAY_ADDRESS": foreign_url, "RAY_AUTH_TOKEN": "someone-elses-token", "RAY_AUTH_MODE": "token"}
    trapped = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{trap.port}",
               **{k: f"http://127.0.0.1:{trap.port}" for k in ("http_proxy", "HTTP_PROXY", "https_proxy",
                                                                  "HTTPS_PROXY", "ALL_PROXY", "all_proxy")}}
    sleepy = project(tmp_path, "sleepy", SLEEPY)
    for env in (hostile, trapped):
        out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--follow", env=env)
        assert out.returncode == 0, out.stderr
        job_id = out.stdout.split()[1]
        assert out.stdout.startswith(f"submitted {job_id} to cluster 'ci'") and "SUCCEEDED" in out.stdout
        assert job_id in job_ids("ci")
        for args in (("list",), ("logs", job_id), ("status",), ("status", job_id), ("runs", "show", job_id)):
            shown = run_cli(*args, "--name", "ci", env=env) if args[0] != "runs" else run_cli(*args, env=env)
            assert shown.returncode == 0, (args, shown.stderr)
        assert job_id in run_cli("list", "--name", "ci", env=env).stdout
        live = bridge_ray.submit(sleepy, cluster="ci")
        wait_for(lambda: live.status() == "RUNNING", "the sleepy job to run")
        stop = run_cli("stop", live.submission_id, "--name", "ci", env=env)
        assert stop.returncode == 0 and "stop requested" in stop.stdout
        wait_for(lambda: live.status() == "STOPPED", "the sleepy job to stop")
    assert JobSubmissionClient(foreign_url).list_jobs() == []  # nothing ever landed on the foreign Ray
    assert trap.seen == []  # nothing connected to the trap: no request, no token
    assert all(token.encode() not in data for data in trap.seen)


# ---- 2. no secret in a command line, a log or a file ----------------------------------------

SECRETS_RECIPE = '''
import hashlib, json, os, sys, time
from pathlib import Path

import ray
from bridge_ray.cluster import driver

KEYS = ("HF_TOKEN", "WANDB_API_KEY")


def seen():
    return {k: hashlib.sha256(os.environ.get(k, "").encode()).hexdigest()[:16] for k in KEYS}


@ray.remote(num_cpus=0)
def task():
    return seen()


@ray.remote(num_cpus=0)
class Holder:
    def seen(self):
        return seen()


def train_loop(config):
    Path(config["out"]).write_text(json.dumps(seen()))


if __name__ == "__main__":
    driver.connect()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(sys.argv[1])
    holder = Holder.options(runtime_env={"env_vars": {"EXTRA": "1"}}).remote()
    result = {"driver": seen(), "task": ray.get(task.remote()), "actor": ray.get(holder.seen.remote())}
    TorchTrainer(train_loop, train_loop_config={"out": str(out / "train.json")},
                 scaling_config=ScalingConfig(num_workers=1),
                 run_config=RunConfig(storage_path=str(out / "ray_train"), name="t")).fit()
    result["train worker"] = json.loads((out / "train.json").read_text())
    print("SEEN " + json.dumps(result, sort_keys=True), flush=True)
'''


class _CmdlineSampler:
    """Reads every process's command line in a tight loop (and ``ps -eww`` every half second)."""

    def __init__(self):
        self.lines: set[bytes] = set()
        self.ps_runs = 0
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._proc, daemon=True), threading.Thread(target=self._ps, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _proc(self):
        while not self.done.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        self.lines.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                    except OSError:
                        continue
            time.sleep(0.01)

    def _ps(self):
        while not self.done.wait(0.5):
            out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True).stdout
            self.lines.update(out.splitlines())
            self.ps_runs += 1

    def stop(self) -> bytes:
        self.done.set()
        for thread in self.threads:
            thread.join()
        return b"\n".join(self.lines)


def _tree_bytes(root: Path) -> bytes:
    chunks = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                try:
                    chunks.append(path.read_bytes())
                except OSError:
                    continue
    return b"\n".join(chunks)


def loose_modes(temp_dir: Path, folders: bool) -> list[str]:
    """Log files (and, if ``folders``, folders) of Ray's temp dir that anyone but the owner may read or enter.

    Unpacked working_dir files keep the project's own modes and are left out.
    """
    loose = []
    for folder, dirs, files in os.walk(temp_dir):
        rel = Path(folder).relative_to(temp_dir)
        if "working_dir_files" in rel.parts[:-1]:
            dirs[:] = []
            continue
        paths = ([Path(folder)] if folders else []) + ([Path(folder, f) for f in files] if "logs" in rel.parts else [])
        loose += [f"{p} {oct(p.lstat().st_mode & 0o777)}" for p in paths
                  if not p.is_symlink() and p.exists() and p.lstat().st_mode & 0o077]
    return loose


def test_planted_secrets_are_nowhere_but_in_the_job(local_cluster, tmp_path):
    planted = {"HF_TOKEN": f"hf_planted{secrets.token_hex(8)}", "WANDB_API_KEY": f"wandbplanted{secrets.token_hex(8)}"}
    digest = {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in planted.items()}
    recipe = project(tmp_path, "secrets_probe", SECRETS_RECIPE)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dry = run_cli("submit", str(recipe), "--name", "ci", "--dry-run", "--", str(out_dir), env=planted)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["secrets (sent in a 0600 file)"] == {"HF_TOKEN": "***", "WANDB_API_KEY": "***"}
    assert "HF_TOKEN" not in plan["runtime_env"]["env_vars"]
    sampler = _CmdlineSampler()
    try:
        out = run_cli("submit", str(recipe), "--name", "ci", "--follow", "--", str(out_dir), env=planted, timeout=900)
    finally:
        cmdlines = sampler.stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Every process of the job saw the secrets: the driver, a task, an actor with its own env, a Ray Train worker.
    seen = json.loads(out.stdout.split("SEEN ", 1)[1].splitlines()[0])
    assert seen == {who: digest for who in ("actor", "driver", "task", "train worker")}
    # The sampler was fast enough to see job workers' start-up command lines (where Ray puts the runtime_env).
    job_id = out.stdout.split()[1]
    assert b"--serialized-runtime-env-context" in cmdlines and job_id.encode() in cmdlines and sampler.ps_runs > 2
    run = runs.load_run(job_id)
    places = {
        "the process table": cmdlines,
        "the dry run": (dry.stdout + dry.stderr).encode(),
        "the CLI's output": (out.stdout + out.stderr).encode(),
        f"Ray's temp dir {local_cluster.temp_dir}": _tree_bytes(Path(local_cluster.temp_dir)),
        f"the bridge-ray home {records.home_dir()}": _tree_bytes(records.home_dir()),
        "the job's output dir": _tree_bytes(out_dir),
        "the job's log": bridge_ray.Job(job_id, "ci").logs().encode(),
    }
    for where, data in places.items():
        for key, value in planted.items():
            assert value.encode() not in data, f"{key} found in {where}"
    assert run.status == "SUCCEEDED" and not credentials.env_file("ci", job_id).exists()  # gone with the job
    # Everything of the cluster is private: its per-user root (which keeps everyone else out of all of it)
    # and every log its processes wrote. (Ray marks its own folders 0777 again whenever a worker starts.)
    root = Path(local_cluster.temp_dir).parent
    assert (root.stat().st_mode & 0o777, root.stat().st_uid) == (0o700, os.getuid())
    assert loose_modes(Path(local_cluster.temp_dir), folders=False) == []


def test_a_secret_on_the_command_line_is_refused(local_cluster):
    before = job_ids("ci")
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--env", "HF_TOKEN=hf_x", "--dry-run")
    assert (out.returncode, out.stderr.strip()) == (2, (
        "error: --env HF_TOKEN=...: a secret on the command line is visible to every user of this machine "
        "(`ps`): export HF_TOKEN in your shell instead; bridge-ray sends it to the job in a 0600 file"))
    assert out.stdout == "" and job_ids("ci") == before


# ---- 3. a local cluster listens on loopback only; down leaves nothing ----------------------


def test_local_cluster_listens_on_loopback_only_even_with_a_job_running(local_cluster, tmp_path):
    job_id = running("ci", project(tmp_path, "sleepy", SLEEPY))
    try:
        pids = local.pids(local_cluster)
        lines = listening(pids)
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in lines}
        assert {local_cluster.ports[p] for p in ("port", "dashboard-port", "ray-client-server-port",
                                                 "dashboard-metrics-port", "autoscaler-metrics-port")} <= ports
        assert local_cluster.ports["metrics-export-port"] not in ports  # the per-node exporter is off
        assert len(lines) >= 10 and all(local_address(line) in ("127.0.0.1", "[::ffff:127.0.0.1]") for line in lines), lines
    finally:
        bridge_ray.Job(job_id, "ci").stop()


# ---- 4. down refuses while jobs run; --force stops and records them --------------------------


def test_down_refuses_while_jobs_run_and_force_stops_them_first(spare, tmp_path):
    name, flag = spare.name, f" --name {spare.name}"
    job_id = running(name, project(tmp_path, "sleepy", SLEEPY))
    follow, lines = follower("logs", job_id, "--name", name, "--follow")
    wait_for(lambda: any("sleeping" in line for line in lines), "the follower to print the job's first line")
    refused = run_cli("down", "--name", name)
    assert (refused.returncode, refused.stderr.strip()) == (2, (
        f"error: cluster {name!r} still runs 1 job(s): {job_id} (RUNNING): stop them with `bridge-ray stop ID{flag}`, "
        f"or run `bridge-ray down{flag} --force` to stop them and take the cluster down"))
    assert bridge_ray.status(name).alive and bridge_ray.Job(job_id, name).status() == "RUNNING"
    forced = run_cli("down", "--name", name, "--force")
    assert (forced.returncode, forced.stdout.strip()) == (0, f"cluster {name!r} is down")
    run = runs.load_run(job_id)
    assert (run.status, run.message) == ("STOPPED", f"stopped by `bridge-ray down{flag} --force`")
    follow.wait(timeout=HANG_GUARD_S)
    stderr = follow.stderr.read()
    assert follow.returncode == 1 and "Traceback" not in stderr, stderr
    assert last_line(stderr).startswith(f"error: job {job_id} STOPPED")
    # Nothing of the cluster is left: no process (the Ray client server included), no listener.
    assert local.pids(spare, by_open_files=True) == [] and not Path(spare.temp_dir).exists()
    assert listeners_on(spare.ports) == []
    assert not records.record_path(name).exists()


# ---- 5/11. the home cannot be written: one line, nothing submitted --------------------------


def _read_only_prefix(folder: Path) -> list[str]:
    """argv prefix that runs a command with ``folder`` read-only (a private mount as root, else chmod)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]


def test_a_home_that_cannot_take_the_run_record_stops_the_submission(local_cluster):
    runs_dir = records.home_dir() / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    before = job_ids("ci")
    secrets_before = set((records.cluster_dir("ci") / "secrets").glob("*.env"))
    out = subprocess.run([*_read_only_prefix(runs_dir), sys.executable, "-m", "bridge_ray", "submit",
                          "recipes/hello_cluster.py", "--name", "ci"], cwd=REPO, capture_output=True, text=True,
                         timeout=HANG_GUARD_S)
    runs_dir.chmod(0o755)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert last_line(out.stderr).startswith(f"error: cannot write {runs_dir}/hello-cluster-")
    assert last_line(out.stderr).endswith(
        f"): the bridge-ray home {records.home_dir()} must be a writable folder; fix its permissions, or point "
        "BRIDGE_RAY_HOME at one, e.g. `export BRIDGE_RAY_HOME=$HOME/.bridge-ray`")
    assert job_ids("ci") == before and set((records.cluster_dir("ci") / "secrets").glob("*.env")) == secrets_before


def test_a_home_below_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    home = blocker / "home"
    for args in (("up", "--name", "x"), ("submit", "recipes/hello_cluster.py"), ("status",), ("list",),
                 ("down",), ("runs",)):
        out = run_cli(*args, env={"BRIDGE_RAY_HOME": str(home)})
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert out.returncode in (0, 2), (args, out.returncode, out.stderr)
    up = run_cli("up", "--name", "x", env={"BRIDGE_RAY_HOME": str(home)})
    assert (up.returncode, up.stderr.strip()) == (2, (
        f"error: cannot write {home}/clusters (Not a directory): the bridge-ray home {home} must be a writable "
        "folder; fix its permissions, or point BRIDGE_RAY_HOME at one, e.g. `export BRIDGE_RAY_HOME=$HOME/.bridge-ray`"))


ENV_PROBE = """
import os

import ray

@ray.remote(num_cpus=0)
def seen():
    return os.environ.get("HF_TOKEN")

ray.init()
print("driver HF_TOKEN:", os.environ.get("HF_TOKEN"), "task HF_TOKEN:", ray.get(seen.remote()), flush=True)
"""


def test_a_secret_in_the_shell_that_ran_up_reaches_no_daemon_and_no_job(tmp_path):
    """`HF_TOKEN=... bridge-ray up` put the token into the environment of every daemon, and so of every later
    job, unredacted (also after the user unset or rotated it; on SLURM sbatch kept it on disk)."""
    token = "hf_from_the_up_shell_" + secrets.token_hex(4)
    up = run_cli("up", "--name", "upsecret", "--num-cpus", "1", env={"HF_TOKEN": token, "WANDB_API_KEY": token})
    assert up.returncode == 0, up.stderr
    try:
        record = records.load("upsecret")
        daemons = local.pids(record)
        assert daemons and not [p for p in daemons if token.encode() in processes._read(Path(f"/proc/{p}/environ"))]
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "WANDB_API_KEY")}
        out = subprocess.run([sys.executable, "-m", "bridge_ray", "submit", str(project(tmp_path, "probe", ENV_PROBE)),
                              "--name", "upsecret", "--follow"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD_S)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "driver HF_TOKEN: None task HF_TOKEN: None" in out.stdout
    finally:
        run_cli("down", "--name", "upsecret", "--force")


# ---- 6. the head dies mid-job: one line each, non-zero, runs marked lost ----------------------


def test_a_dead_head_is_one_line_everywhere_and_marks_its_runs(spare, tmp_path):
    name = spare.name
    job_id = running(name, project(tmp_path, "sleepy", SLEEPY))
    follow, lines = follower("logs", job_id, "--name", name, "--follow")
    wait_for(lambda: any("sleeping" in line for line in lines), "the follower to print the job's first line")
    gcs = [p for p in local.pids(spare) if b"gcs_server" in processes._read(Path(f"/proc/{p}/cmdline"))]  # may exit
    os.kill(gcs[0], signal.SIGKILL)
    follow.wait(timeout=HANG_GUARD_S)
    said = follow.stderr.read()
    assert follow.returncode == 1 and "Traceback" not in said, said
    lost = (f"the head of cluster {name!r} at {spare.dashboard_url} stopped answering while following job {job_id}; "
            "its unfinished runs are recorded FAILED (cluster lost)")
    assert last_line(said) == (f"error: {lost}: see `bridge-ray status --name {name}`, then "
                               f"`bridge-ray down --name {name}` and `bridge-ray up --name {name}`")
    run = runs.load_run(job_id)
    assert (run.status, run.failure) == ("FAILED", "cluster lost")
    assert run.message == f"the head of cluster {name!r} at {spare.dashboard_url} stopped answering"
    for args in (("list",), ("logs", job_id), ("stop", job_id), ("status", job_id), ("status",)):
        out = run_cli(*args, "--name", name)
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr)
        shown = out.stdout if args == ("status",) else out.stderr
        assert "does not answer" in shown or "stopped answering" in shown, (args, shown)
    down = run_cli("down", "--name", name)
    assert (down.returncode, down.stdout.strip()) == (0, f"cluster {name!r} is down")
    assert local.pids(spare, by_open_files=True) == [] and listeners_on(spare.ports) == []  # the runtime-env agent too


def test_jobs_that_ended_unseen_keep_their_end_and_log_when_the_head_dies(tmp_path):
    """Submit, walk away, the head dies (a killed head, an ended allocation) before any command looked: every such
    run was recorded FAILED (cluster lost) with no log, a job that had succeeded too. The driver now writes its
    own end and a copy of its log into the run folder."""
    assert run_cli("up", "--name", "unseen", "--num-cpus", "1").returncode == 0
    try:
        record = records.load("unseen")
        ok = bridge_ray.submit(project(tmp_path, "quick", "print('quick job done', flush=True)\n"), cluster="unseen",
                               env={"HF_TOKEN": "hf_unseen_secret"})
        bad = bridge_ray.submit(project(tmp_path, "bad", "import sys\nprint('about to fail')\nsys.exit(3)\n"),
                                cluster="unseen")
        for job in (ok, bad):
            wait_for(lambda: (runs.run_dir(job.submission_id) / runs.DRIVER_END).is_file(), f"{job} to end")
        gcs = [p for p in local.pids(record) if b"gcs_server" in processes._read(Path(f"/proc/{p}/cmdline"))]
        os.kill(gcs[0], signal.SIGKILL)
        listed = run_cli("runs")
        assert listed.returncode == 0, listed.stderr
        done, failed = runs.load_run(ok.submission_id), runs.load_run(bad.submission_id)
        assert (done.status, done.failure) == ("SUCCEEDED", None)
        log = (runs.run_dir(ok.submission_id) / runs.JOB_LOG).read_text()
        assert "quick job done" in log and "hf_unseen_secret" not in log
        assert failed.status == "FAILED" and failed.failure != runs.CLUSTER_LOST
        assert failed.message.startswith("ended with exit code 3 before its cluster went (")
        assert "about to fail" in (runs.run_dir(bad.submission_id) / runs.JOB_LOG).read_text()
    finally:
        run_cli("down", "--name", "unseen", "--force")


def test_a_paused_head_is_not_a_dead_one_its_runs_and_secrets_stay(spare, tmp_path):
    """A head that misses the 2 s probe (here its dashboard stopped with SIGSTOP; a busy machine does the same)
    had its running jobs recorded FAILED (cluster lost) and their secrets files removed while they ran on.
    Commands now ask again for health.UNRESPONSIVE_S, then say so and change nothing; the job runs on."""
    from bridge_ray.jobs import credentials

    name = spare.name
    job = bridge_ray.submit(project(tmp_path, "sleepy", SLEEPY), cluster=name, env={"HF_TOKEN": "hf_paused"})
    wait_for(lambda: job.status() == "RUNNING", f"job {job.submission_id} to run")
    dashboard = [p for p in local.pids(spare) if b"dashboard/dashboard.py" in processes._read(Path(f"/proc/{p}/cmdline"))]
    assert len(dashboard) == 1
    os.kill(dashboard[0], signal.SIGSTOP)
    try:
        for args in (("list",), ("status",)):
            out = run_cli(*args, "--name", name)
            assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
            assert last_line(out.stderr).startswith(
                f"error: the head of cluster {name!r} at {spare.dashboard_url} did not answer for 10 s while "), out
            assert last_line(out.stderr).endswith("(busy, paused, or its network is down); nothing was recorded: try "
                                                  f"again, or see `bridge-ray status --name {name}`"), out
        assert "NOT ANSWERING for 10 s, but not gone" in run_cli("status", "--name", name).stdout
        assert runs.load_run(job.submission_id).status in ("PENDING", "RUNNING")
        assert json.loads(credentials.env_file(name, job.submission_id).read_text()) == {"HF_TOKEN": "hf_paused"}
    finally:
        os.kill(dashboard[0], signal.SIGCONT)
    assert job.status() == "RUNNING"
    assert bridge_ray.load_run(job.submission_id, refresh=True).status == "RUNNING"
    job.stop()
    assert job.stopped(HANG_GUARD_S) == "STOPPED"


def test_down_records_the_end_and_log_of_a_job_nobody_followed(spare, tmp_path):
    """`submit` without --follow, the job ends, then `down`: the run stayed PENDING for good ("status not refreshed:
    no cluster named ..."), with no job.log, since nothing could ask the cluster about it again."""
    name = spare.name
    job = bridge_ray.submit(project(tmp_path, "quick", "print('quick job done', flush=True)\n"), cluster=name)
    from bridge_ray.cluster import health

    # Ray's own list, not `list`/`status ID`: those record the end they see
    wait_for(lambda: [j["status"] for j in health.get_json(spare, "/api/jobs/")] == ["SUCCEEDED"], "the job to end")
    assert runs.load_run(job.submission_id).status in ("PENDING", "RUNNING")  # nobody has looked yet
    out = run_cli("down", "--name", name)
    assert (out.returncode, out.stdout.strip()) == (0, f"cluster {name!r} is down"), out.stderr
    run = bridge_ray.load_run(job.submission_id, refresh=True)
    assert (run.status, run.failure) == ("SUCCEEDED", None)
    assert "quick job done" in (Path(run.run_dir) / runs.JOB_LOG).read_text()
    # The same name started again does not know the job: `logs` shows the saved log (it said "no job ...").
    assert run_cli("up", "--name", name, "--num-cpus", "1").returncode == 0
    try:
        for extra in ((), ("--follow",)):
            out = run_cli("logs", job.submission_id, "--name", name, *extra)
            assert out.returncode == 0 and "quick job done" in out.stdout, (extra, out.stderr)
            assert out.stderr == (f"note: cluster {name!r} does not know job {job.submission_id} (it was started "
                                  f"again since?): this is the log saved when job {job.submission_id} ended "
                                  f"({Path(run.run_dir) / runs.JOB_LOG})\n")
    finally:
        assert run_cli("down", "--name", name, "--force").returncode == 0


# ---- 7. Ctrl-C while following: the job keeps running, exit 130 -----------------------------


def test_ctrl_c_while_following_leaves_the_job_running_and_says_how_to_get_back(local_cluster, tmp_path):
    proc, lines = follower("submit", str(project(tmp_path, "sleepy", SLEEPY)), "--name", "ci", "--follow")
    wait_for(lambda: any("sleeping" in line for line in lines), "the job's first line")
    job_id = lines[0].split()[1]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=HANG_GUARD_S)
    stderr = proc.stderr.read()
    assert proc.returncode == 130 and "Traceback" not in stderr and "Aborted" not in stderr, stderr
    assert last_line(stderr) == (
        f"stopped following; job {job_id} keeps running on cluster 'ci': reattach with "
        f"`bridge-ray logs {job_id} --name ci --follow`, stop it with `bridge-ray stop {job_id} --name ci`")
    job = bridge_ray.Job(job_id, "ci")
    assert job.status() == "RUNNING"
    job.stop()
    assert job.stopped(HANG_GUARD_S) == "STOPPED"  # ended before the module's cluster goes down


# ---- 8/9. bad arguments are refused here, before anything is uploaded -----------------------

BAD_OVERRIDES = {
    ("recipes/sft_gsm8k.py", "sft.optim.lrr=1e-4"):
        "unknown key 'sft.optim.lrr': did you mean 'sft.optim.lr'? (OptimConfig has clip_grad, fused, lr, "
        "warmup_ratio, weight_decay)",
    ("recipes/sft_gsm8k.py", "sft.optim.lr=fast"): "sft.optim.lr='fast' is not a number",
    ("recipes/sft_gsm8k.py", "sft.data.global_batch_size=0"):
        "data.global_batch_size=0 must be >= 1",
    ("recipes/sft_gsm8k.py", "sft.optim.lr"): "override 'sft.optim.lr' has no '=': write it as sft.optim.lr=VALUE",
    ("recipes/grpo_gsm8k.py", "ppo.rollout.nn=8"): "unknown key 'ppo.rollout.nn': did you mean 'ppo.rollout.n'?",
    ("recipes/sft_then_ppo.py", "ppo.trainer.total_epochs=0"): "trainer.total_epochs=0 must be >= 1",
    ("recipes/sft_gsm8k.py", "sft.trainer.total_steps=-3"):
        "trainer.total_steps=-3: give a step count >= 1, or null to train for trainer.total_epochs",
    ("recipes/sft_gsm8k.py", "--verbose"):
        "'--verbose' is not an override: recipe arguments are sft.GROUP.KEY=VALUE overrides and preset=NAME",
}


def test_bad_overrides_are_one_line_here_with_dry_run_and_without(local_cluster, tmp_path):
    before = job_ids("ci")
    for (recipe, override), message in BAD_OVERRIDES.items():
        for extra in (("--dry-run",), ()):
            out = run_cli("submit", recipe, "--name", "ci", *extra, "--", override)
            assert out.returncode == 2 and "Traceback" not in out.stderr, (recipe, override, out.stderr)
            assert last_line(out.stderr).startswith(f"error: {message}"), (recipe, override, out.stderr)
            assert out.stdout == ""
    assert job_ids("ci") == before
    assert not list((records.home_dir() / "runs").glob("sft-gsm8k-*"))  # no record of a job never sent


LOCAL_ONLY = {  # flags after `--` that would submit a job doing nothing but print
    ("recipes/sft_gsm8k.py", "--help"):
        "--help after `--` goes to the recipe, which would run on the cluster only to print its help: read it here "
        "with `python recipes/sft_gsm8k.py --help`; `bridge-ray submit --help` lists submit's own options; nothing "
        "was submitted",
    ("recipes/hello_cluster.py", "-h"):
        "-h after `--` goes to the recipe, which would run on the cluster only to print its help: read it here with "
        "`python recipes/hello_cluster.py --help`; `bridge-ray submit --help` lists submit's own options; nothing was "
        "submitted",
    ("recipes/ppo_gsm8k.py", "--dry-run"):
        "--dry-run after `--` goes to the recipe, which would run on the cluster only to print its config: print it "
        "here with `python recipes/ppo_gsm8k.py --dry-run ARGS`, or put --dry-run before `--` to see what submit "
        "would send; nothing was submitted",
}


def test_help_or_dry_run_after_the_separator_is_refused_here(local_cluster):
    """`submit recipes/sft_gsm8k.py -- --dry-run` sent a job that only printed its config, and `-- --help` one that
    failed on "override '--help' has no '='"."""
    before = job_ids("ci")
    for (recipe, flag), message in LOCAL_ONLY.items():
        for extra in (("--dry-run",), ()):
            out = run_cli("submit", recipe, "--name", "ci", *extra, "--", "preset=x" if flag == "-h" else "a=1", flag)
            assert (out.returncode, out.stdout, out.stderr) == (2, "", f"error: {message}\n"), (recipe, out.stderr)
    assert job_ids("ci") == before


def test_a_recipe_run_with_help_prints_its_docstring_and_builds_nothing(tmp_path):
    env = {**os.environ, "BRIDGE_RAY_HOME": str(tmp_path / "home")}
    for recipe, first in (("recipes/sft_gsm8k.py", "Supervised fine-tuning on GSM8K"),
                          ("recipes/grpo_gsm8k.py", "GRPO on GSM8K")):
        out = subprocess.run([sys.executable, recipe, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD_S)
        assert (out.returncode, out.stderr) == (0, "") and out.stdout.startswith(first), out
    for recipe in ("recipes/train_tokenizer.py", "recipes/pretrain.py", "recipes/text_to_chat.py",
                   "recipes/instruct_tune.py"):  # a command's continuation lines stay lines, not runs of spaces
        out = subprocess.run([sys.executable, recipe, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD_S)
        assert out.returncode == 0 and " \\\n        " in out.stdout, out
    assert not (tmp_path / "home").exists()


CLUSTER_TOO_SMALL = {  # the `ci` cluster: 1 node, 2 CPUs, no GPU
    ("recipes/sft_gsm8k.py", "sft.workers.num_workers=4", "sft.data.global_batch_size=8"):
        "4 workers x (1 CPU, 0 GPU) do not fit: the cluster has 2 CPU and 0 GPU on 1 node(s), room for 2 worker(s); "
        "lower sft.workers.num_workers / cpus_per_worker / gpus_per_worker or add nodes",
    ("recipes/sft_gsm8k.py", "preset=sft_gsm8k_llama1b"):
        "sft.workers.num_workers=auto found no GPU on the cluster (1 node(s)): start it on GPU nodes, or run on CPU "
        "workers with sft.workers.gpus_per_worker=0 sft.workers.num_workers=N",
    ("recipes/sft_then_ppo.py", "--tiny", "sft.workers.cpus_per_worker=2"):
        "2 workers x (2 CPU, 0 GPU) do not fit: the cluster has 2 CPU and 0 GPU on 1 node(s), room for 1 worker(s); "
        "lower sft.workers.num_workers / cpus_per_worker / gpus_per_worker or add nodes; PPO on CPU needs 4 logical "
        "CPUs in Ray (1 training rank + 3 for TransferQueue and placing verl's actors), the cluster has 0 GPUs (1 node, "
        "2 CPUs): start it with `bridge-ray up --num-cpus 4` (logical CPUs may exceed the cores)",  # every stage
}


def test_a_run_the_cluster_cannot_hold_is_refused_at_submit(local_cluster):
    """submit asks the head for its alive nodes and checks the recipe's configs against them, as the job would
    first thing on the cluster: one line, exit 2, nothing sent. A dry run asks the cluster nothing."""
    before = job_ids("ci")
    for (recipe, *args), message in CLUSTER_TOO_SMALL.items():
        out = run_cli("submit", recipe, "--name", "ci", "--", *args)
        assert (out.returncode, out.stdout, out.stderr) == (2, "", f"error: {message}\n"), (recipe, out.stderr)
        assert run_cli("submit", recipe, "--name", "ci", "--dry-run", "--", *args).returncode == 0
    assert job_ids("ci") == before
    assert not list((records.home_dir() / "runs").glob("sft-*"))


def test_good_overrides_pass_the_check_without_building_anything(local_cluster, tmp_path):
    home = tmp_path / "home"
    (home / "clusters").mkdir(parents=True)
    (home / "clusters" / "ci.json").write_text(records.record_path("ci").read_text())
    out = run_cli("submit", "recipes/sft_gsm8k.py", "--name", "ci", "--dry-run", "--", "sft.optim.lr=1e-4",
                  env={"BRIDGE_RAY_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["entrypoint"].endswith("-m bridge_ray.jobs.launch recipes/sft_gsm8k.py sft.optim.lr=1e-4")
    assert not (home / "demo").exists()  # the check locates the demo assets; the job builds them


def test_a_recipe_that_does_not_compile_is_refused_before_upload(local_cluster, tmp_path):
    broken = project(tmp_path, "broken", "print('a'\nx = 1\n")
    before = job_ids("ci")
    out = run_cli("submit", str(broken), "--name", "ci")
    assert (out.returncode, out.stderr.strip()) == (2, (
        f"error: recipe {broken} does not compile at line 1: '(' was never closed: fix it; nothing was submitted"))
    assert job_ids("ci") == before


def test_only_a_recipe_that_declares_its_config_is_checked_and_a_failure_names_its_line(local_cluster, tmp_path):
    needs_cluster = project(tmp_path, "cluster_only", "import os\n\n\ndef config(argv):\n"
                                                      "    return os.environ['ONLY_ON_THE_CLUSTER']\n")
    out = run_cli("submit", str(needs_cluster), "--name", "ci", "--dry-run")
    assert (out.returncode, out.stderr.strip()) == (2, (
        "error: cluster_only.py failed when checked here: KeyError: 'ONLY_ON_THE_CLUSTER' (cluster_only.py:5): "
        "fix it, or submit with --no-check if it only runs on the cluster"))
    assert run_cli("submit", str(needs_cluster), "--name", "ci", "--dry-run", "--no-check").returncode == 0
    # A recipe without config(argv) is not run here at all (this one would hang for 15 minutes).
    assert run_cli("submit", str(project(tmp_path, "sleepy", SLEEPY)), "--name", "ci", "--dry-run").returncode == 0


# ---- 10. an unreadable record: one line naming it; down --force cleans up ---------------------


@pytest.mark.parametrize("content,why", [('{"name": "bro', "Unterminated string"), ("{}", "it lacks name"),
                                         ("[]", "it holds a JSON list, not an object")])
def test_an_unreadable_record_is_one_line_and_breaks_no_other_name(local_cluster, content, why):
    path = records.record_path("bro")
    path.write_text(content)
    try:
        for args in (("status",), ("list",), ("submit", "recipes/hello_cluster.py"), ("logs", "x"), ("down",),
                     ("up",)):
            out = run_cli(*args, "--name", "bro")
            assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
            assert out.stderr.startswith(f"error: the record of cluster 'bro' ({path}) is unreadable (") and why in out.stderr
            assert out.stderr.rstrip().endswith("run `bridge-ray down --name bro --force` to stop whatever was "
                                                "started for it and remove the record"), out.stderr
        assert run_cli("list", "--name", "ci").returncode == 0 and run_cli("status", "--name", "ci").returncode == 0
        down = run_cli("down", "--name", "bro", "--force")
        assert (down.returncode, down.stdout.strip()) == (0, "cluster 'bro' is down: its unreadable record is removed "
                                                             "and what was started for it stopped")
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_down_force_stops_a_cluster_whose_record_was_corrupted(spare):
    records.record_path(spare.name).write_text('{"name": "' + spare.name)
    assert local.pids(spare)
    out = run_cli("down", "--name", spare.name, "--force")
    assert out.returncode == 0, out.stderr
    assert local.pids(spare, by_open_files=True) == [] and listeners_on(spare.ports) == []


# ---- 12. the upload check follows links, as Ray's packaging does -----------------------------


def test_linked_files_and_folders_count_toward_the_upload(local_cluster, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    with open(outside / "blob.bin2", "wb") as f:
        f.truncate(101 * 2**20)  # sparse: no disk used
    proj = project(tmp_path, "linked", "print(1)\n").parent
    (proj / "data").symlink_to(outside)
    out = run_cli("submit", str(proj / "linked.py"), "--name", "ci", "--dry-run", "--no-check")
    assert (out.returncode, out.stderr.strip()) == (2, (
        f"error: working_dir {proj} would upload 101 MiB, over Ray's 100 MiB limit; biggest: data (101 MiB), "
        "linked.py (0 MiB), pyproject.toml (0 MiB): move data and checkpoints out of the project or add "
        "--exclude PATTERN"))
    (proj / "data").unlink()
    (proj / "weights.bin2").symlink_to(outside / "blob.bin2")
    out = run_cli("submit", str(proj / "linked.py"), "--name", "ci", "--dry-run", "--no-check")
    assert out.returncode == 2 and "biggest: weights.bin2 (101 MiB)" in out.stderr
    (proj / "weights.bin2").unlink()
    (proj / "gone.txt").symlink_to(outside / "nothing-here")
    out = run_cli("submit", str(proj / "linked.py"), "--name", "ci", "--dry-run", "--no-check")
    assert (out.returncode, out.stderr.strip()) == (2, (
        f"error: working_dir {proj} holds links whose target is missing: gone.txt: remove them or leave them out "
        "with --exclude PATTERN"))


# ---- 14. a failed job's error is printed once ------------------------------------------------


def test_a_failed_job_prints_its_error_once(local_cluster):
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--follow", "--", "--fail")
    assert out.returncode == 1
    shown = out.stdout + out.stderr
    assert shown.count("failing on purpose (--fail)") == 1, shown
    job_id = out.stdout.split()[1]
    assert last_line(out.stderr) == f"error: job {job_id} FAILED: Job entrypoint command failed with exit code 1"
    assert "--- last log lines" not in shown  # the log was just streamed
    assert "packaging.py" not in out.stderr and "dashboard_sdk.py" not in out.stderr  # Ray's upload log is quiet


def test_input_a_job_rejects_on_the_cluster_exits_2_with_its_cause_in_the_record(local_cluster, tmp_path):
    """Data lives on the cluster, so a recipe checks its files there: its one line is the cause, shown once;
    the command exits 2 as for input refused at submit, and the run record keeps the cause, not Ray's
    "exit code 2"; a job waited on without following raises the same."""
    data = tmp_path / "posts.jsonl"
    data.write_text('{"id": 1, "body": "no text field here"}\n')
    cause = f"{data}: line 1 has no text field 'text' (it has: body, id); set tokenizer.text_key=body"
    out = run_cli("submit", "recipes/train_tokenizer.py", "--name", "ci", "--follow", "--", f"tokenizer.files=[{data}]",
                  f"tokenizer.output_dir={tmp_path / 'tok'}")
    assert out.returncode == 2, out.stdout + out.stderr
    shown = out.stdout + out.stderr
    assert shown.count(cause) == 1 and f"error: {cause}" in shown, shown
    job_id = out.stdout.split()[1]
    assert last_line(out.stderr) == f"error: job {job_id} FAILED: Job entrypoint command failed with exit code 2"
    assert runs.load_run(job_id).message == cause
    assert run_cli("runs", "show", job_id).stdout.splitlines()[1] == f"status      FAILED: {cause}"
    again = run_cli("submit", "recipes/train_tokenizer.py", "--name", "ci", "--", f"tokenizer.files=[{data}]",
                    f"tokenizer.output_dir={tmp_path / 'tok'}")
    with pytest.raises(bridge_ray.JobFailed) as failed:
        bridge_ray.Job(again.stdout.split()[1], "ci").wait(timeout_s=HANG_GUARD_S)
    assert (failed.value.exit_code, str(failed.value)) == (2, f"job {again.stdout.split()[1]} FAILED: {cause}")
    assert not (tmp_path / "tok").exists()


HOLDING = """
import sys, time
from pathlib import Path
from bridge_ray.runs import lifecycle
lifecycle.start(sys.argv[1])
print("holding", flush=True)
while not Path(sys.argv[2]).exists():
    time.sleep(0.1)
"""


def test_a_second_run_on_an_output_dir_in_use_stops_at_once_naming_the_first(local_cluster, tmp_path):
    """A run resubmitted while the first still runs (its --follow interrupted, say) would write the same
    checkpoints: the second job stops at its start with one line naming the first, exit 2; the first
    runs on untouched and, once it has ended, the folder takes a new run."""
    out, release = tmp_path / "out", tmp_path / "release"
    recipe = project(tmp_path, "holding", HOLDING)
    first = bridge_ray.submit(recipe, [str(out), str(release)], cluster="ci")
    wait_for(lambda: "holding" in first.logs(), f"job {first.submission_id} to hold {out}")
    second = run_cli("submit", str(recipe), "--name", "ci", "--follow", "--", str(out), str(release))
    assert second.returncode == 2, second.stdout + second.stderr
    assert (f"error: output dir {out} is in use by job {first.submission_id} (host {socket.gethostname()}, pid "
            in second.stdout + second.stderr)
    assert first.status() == "RUNNING"
    release.touch()
    assert first.wait(timeout_s=HANG_GUARD_S) == "SUCCEEDED"
    third = run_cli("submit", str(recipe), "--name", "ci", "--follow", "--", str(out), str(release))
    assert third.returncode == 0, third.stdout + third.stderr


def test_a_submission_id_that_is_taken_or_a_path_is_refused_and_loses_nothing(local_cluster):
    first = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--submission-id", "mine-1", "--follow")
    assert first.returncode == 0, first.stderr
    recorded = (records.home_dir() / "runs" / "mine-1" / "run.json").read_text()
    again = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--submission-id", "mine-1")
    assert (again.returncode, again.stderr.strip()) == (2, (
        f"error: --submission-id mine-1: a run with that id is already recorded ({records.home_dir() / 'runs' / 'mine-1'}): "
        "choose another id, or leave it out"))
    assert (records.home_dir() / "runs" / "mine-1" / "run.json").read_text() == recorded
    sneaky = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--submission-id", "../../escape")
    assert (sneaky.returncode, sneaky.stderr.strip()) == (2, (
        "error: --submission-id '../../escape' is not valid: use letters, digits, '.', '_' or '-' "
        "(at most 128, starting with a letter or digit)"))
