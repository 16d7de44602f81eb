"""Integration tier: a real local Ray head (``ray start --head``) driven through the CLI."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bridge_ray
from bridge_ray.cluster import records
from bridge_ray.cluster import local, processes
from conftest import REPO, run_cli, wait_for

pytestmark = pytest.mark.integration


def _job_ids(cluster: str) -> list[str]:
    return [j.submission_id for j in bridge_ray.list_jobs(cluster)]


def test_up_status_list_down_via_cli():
    out = run_cli("up", "--name", "life", "--num-cpus", "1")
    assert out.returncode == 0, out.stderr
    assert "cluster 'life' is up (local): Jobs API http://127.0.0.1:" in out.stdout
    record = records.load("life")
    assert record.token_path and os.stat(record.token_path).st_mode & 0o777 == 0o600
    # Private at every level right after `up`: the per-user root, Ray's temp dir, its folders and logs.
    from test_hardening import loose_modes

    root = Path(record.temp_dir).parent
    assert (root.stat().st_mode & 0o777, root.stat().st_uid) == (0o700, os.getuid())
    assert loose_modes(Path(record.temp_dir), folders=True) == []
    token = open(record.token_path).read().strip()
    st = run_cli("status", "--name", "life")
    assert st.returncode == 0 and "nodes: 1 alive" in st.stdout and "CPU: 0/1 used" in st.stdout
    listed = run_cli("list", "--name", "life")
    assert (listed.returncode, listed.stdout) == (0, "")
    assert listed.stderr == ("no jobs on cluster 'life' yet: submit one with "
                             "`bridge-ray submit recipes/hello_cluster.py --name life --follow`\n")
    again = run_cli("up", "--name", "life")
    assert again.returncode == 2
    assert again.stderr.strip().startswith("error: cluster 'life' is already up at http://127.0.0.1:")
    down = run_cli("down", "--name", "life")
    assert down.returncode == 0 and "cluster 'life' is down" in down.stdout
    assert processes.find_pids(record.temp_dir, by_open_files=True) == []
    assert not records.record_path("life").exists()
    assert not os.path.exists(record.token_path)  # a stale token is a secret left behind
    assert run_cli("down", "--name", "life").stdout.strip() == "cluster 'life' is not recorded; nothing to do"
    for path in REPO.rglob("*"):  # the token never lands in the project
        if path.is_file() and ".venv" not in path.parts and ".git" not in path.parts and path.stat().st_size < 1e6:
            assert token not in path.read_text(errors="ignore")


def test_submit_follow_succeeds_with_env(local_cluster):
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--env", "NCCL_DEBUG=INFO",
                  "--follow", "--", "--show", "NCCL_DEBUG", "--show", "TMPDIR")
    assert out.returncode == 0, out.stderr
    assert "task on" in out.stdout and "NCCL_DEBUG=INFO" in out.stdout
    # A job's temporary files (verl's checkpoint locks, vLLM's sockets, multiprocessing's folders) go under
    # the cluster's temp dir, which `down` removes: in /tmp they stayed, dozens a run (processes.temp_env).
    tmp = Path(records.load("ci").temp_dir) / "tmp"
    assert f"TMPDIR={tmp}" in out.stdout and tmp.stat().st_mode & 0o777 == 0o700
    # A job's tasks run at the niceness of the cluster's daemons (0), not Ray's default 15: beside any
    # ordinary process a nice-15 worker gets ~3 % of a core (processes.worker_niceness).
    assert ", nice 0)" in out.stdout
    assert out.stdout.strip().splitlines()[-1].endswith(" SUCCEEDED")


def test_follow_shows_every_line_once_in_order_when_the_job_ends(local_cluster, tmp_path):
    """Ray closes a job's log stream ~5 s after the job ends, and the last lines arrive in ~1 s batches:
    the follower stops when the job ends and takes the lines the stream had not delivered from the
    whole log. A job that prints fast up to its last instant loses no line and shows none twice."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "burst.py").write_text("for i in range(3000):\n    print(f'line {i:04d}')\n")
    out = run_cli("submit", str(tmp_path / "burst.py"), "--name", "ci", "--follow", "--verbose")
    assert out.returncode == 0, out.stderr
    shown = [line for line in out.stdout.splitlines() if line.startswith("line ")]
    assert shown == [f"line {i:04d}" for i in range(3000)]
    assert out.stdout.rstrip().endswith(" SUCCEEDED")


STATE_API_IN_A_TASK = """
import ray

@ray.remote(num_cpus=0)
def nodes_seen():
    from ray.util.state import list_nodes  # no address: found from RAY_ADDRESS, else by looking for a GCS here
    return len(list_nodes())

ray.init()
print("a task saw nodes:", ray.get(nodes_seen.remote()))
"""


def test_a_jobs_tasks_find_their_own_cluster_beside_another_one(local_cluster, plain_ray_head, tmp_path):
    """Ray Train's PlacementGroupCleaner actor asks the state API with no address; with two clusters on one host it
    died with "Found multiple active Ray instances". A job's tasks and actors get their cluster's address."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "state.py").write_text(STATE_API_IN_A_TASK)
    out = run_cli("submit", str(tmp_path / "state.py"), "--name", "ci", "--follow")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "a task saw nodes: 1" in out.stdout


def test_submit_prints_next_steps_and_logs(local_cluster):
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[1]
    assert f"bridge-ray logs {job_id} --name ci --follow" in out.stdout
    assert f"bridge-ray stop {job_id} --name ci" in out.stdout
    assert bridge_ray.Job(job_id, "ci").wait(timeout_s=120) == "SUCCEEDED"
    assert "cluster: 1 node(s)" in run_cli("logs", job_id, "--name", "ci").stdout
    assert run_cli("status", job_id, "--name", "ci").stdout.strip() == "SUCCEEDED"


def test_status_of_an_ended_job_records_its_end_and_removes_its_secrets_file(local_cluster):
    """Submitted without --follow, a job's end was recorded (and its secrets file removed) only by `runs` or the
    next submit; `status ID`, `logs ID` and `list` showed it ended and left the HF_TOKEN file behind."""
    from bridge_ray.jobs import credentials

    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", env={"HF_TOKEN": "hf_seen_ending"})
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[1]
    secrets = credentials.env_file("ci", job_id)
    assert secrets.is_file()
    wait_for(lambda: run_cli("status", job_id, "--name", "ci").stdout.strip() == "SUCCEEDED", f"{job_id} to end")
    assert not secrets.exists()
    assert bridge_ray.load_run(job_id).status == "SUCCEEDED"


def test_failing_recipe_exits_1_with_last_log_lines(local_cluster):
    job = bridge_ray.submit("recipes/hello_cluster.py", ["--fail"], cluster="ci")
    with pytest.raises(bridge_ray.JobFailed) as err:  # not followed: the error carries the log's last lines
        job.wait(timeout_s=600)
    assert err.value.status == "FAILED" and "failing on purpose (--fail)" in err.value.log_tail
    out = run_cli("status", job.submission_id, "--name", "ci")
    assert out.stdout.strip() == "FAILED"


def test_stop_a_running_job(local_cluster, tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "sleepy.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n")
    job = bridge_ray.submit(tmp_path / "sleepy.py", cluster="ci")
    deadline = time.time() + 60
    while job.status() != "RUNNING" and time.time() < deadline:
        time.sleep(0.2)
    out = run_cli("stop", job.submission_id, "--name", "ci")  # returns once the job has ended
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{job.submission_id}: stop requested", f"{job.submission_id}: STOPPED"]
    assert job.status() == "STOPPED" and bridge_ray.load_run(job.submission_id).status == "STOPPED"
    again = run_cli("stop", job.submission_id, "--name", "ci")
    assert (again.returncode, again.stdout) == (0, f"{job.submission_id}: already finished\n")


def test_standard_ray_job_cli_sees_our_jobs(local_cluster):
    job = bridge_ray.submit("recipes/hello_cluster.py", cluster="ci")
    job.wait(timeout_s=120)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=local_cluster.token_path)
    ray_cli = local.ray_executable()
    out = subprocess.run([ray_cli, "job", "list", "--address", local_cluster.dashboard_url],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert job.submission_id in out.stdout
    logs = subprocess.run([ray_cli, "job", "logs", job.submission_id, "--address", local_cluster.dashboard_url],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "cluster: 1 node(s)" in logs.stdout


def test_client_without_token_is_refused(local_cluster):
    from ray.job_submission import JobSubmissionClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    code = f"from ray.job_submission import JobSubmissionClient as C; C({local_cluster.dashboard_url!r}).list_jobs()"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, RAY_AUTH_MODE="disabled"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "401" in out.stderr or "Unauthorized" in out.stderr or "authentication" in out.stderr.lower()
    assert JobSubmissionClient  # the authenticated path is exercised by every other test


def test_wrong_or_missing_token_is_a_one_line_error(local_cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    rec = records.ClusterRecord(name="wrongtok", backend="address", gcs_address="",
                                dashboard_url=local_cluster.dashboard_url, token_path=str(wrong))
    records.save(rec)
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "wrongtok")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: cluster 'wrongtok' refused the auth token in {wrong} (HTTP 403): the file does not match the "
        "head's token; restore it, or recreate the cluster with `bridge-ray down --name wrongtok && "
        "bridge-ray up --name wrongtok`")
    wrong.unlink()
    out = run_cli("list", "--name", "wrongtok")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: the auth token of cluster 'wrongtok' is missing ({wrong}): restore the file, or re-register "
        "with `bridge-ray up --name wrongtok --address ... --token-file FILE`")
    records.delete("wrongtok")


def test_errors_are_one_line_exit_2_and_submit_nothing(local_cluster, tmp_path):
    before = _job_ids("ci")
    cases = {
        ("submit", "recipes/missing.py", "--name", "ci"):
            "error: recipe recipes/missing.py does not exist: pass the path of a .py file, e.g. recipes/hello_cluster.py",
        ("submit", "README.md", "--name", "ci"):
            "error: recipe README.md is not a Python file: pass a .py file, e.g. recipes/hello_cluster.py",
        ("submit", "recipes/hello_cluster.py", "--name", "ci", "--env", "BROKEN"):
            "error: --env 'BROKEN' is not KEY=VALUE: write e.g. --env NCCL_DEBUG=INFO",
        ("logs", "no-such-job", "--name", "ci"):
            "error: no job 'no-such-job' on cluster 'ci': list the jobs with `bridge-ray list --name ci`",
        ("submit", "recipes/hello_cluster.py", "--name", "nocluster"):
            f"error: no cluster named 'nocluster' is recorded in {os.environ['BRIDGE_RAY_HOME']} (known: ci; "
            "pick one with --name): start one with `bridge-ray up --name nocluster`",
    }
    for args, message in cases.items():
        out = run_cli(*args)
        assert (out.returncode, out.stderr.strip()) == (2, message), args
    big = tmp_path / "bigproj"
    (big / "data").mkdir(parents=True)
    (big / "pyproject.toml").write_text("")
    (big / "r.py").write_text("print(1)\n")
    with open(big / "data" / "blob.parquet", "wb") as f:
        f.truncate(101 * 2**20)  # sparse: 101 MiB apparent size, no disk used
    out = run_cli("submit", str(big / "r.py"), "--name", "ci")
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: working_dir {big} would upload 101 MiB, over Ray's 100 MiB limit; "
                                  "biggest: data (101 MiB), r.py (0 MiB), pyproject.toml (0 MiB): move data and checkpoints out of the "
                                  "project or add --exclude PATTERN")
    assert _job_ids("ci") == before


def test_stale_record_is_reported_with_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    records.save(records.ClusterRecord(name="stale", backend="local", gcs_address="",
                                       dashboard_url=f"http://127.0.0.1:{dead_port}"))
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "stale")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: cluster 'stale' is recorded but its head at http://127.0.0.1:{dead_port} does not answer "
        "(stale record): run `bridge-ray down --name stale` to clear it, then `bridge-ray up --name stale`")
    st = run_cli("status", "--name", "stale")
    assert "STALE: the head does not answer; fix: `bridge-ray down --name stale` then `bridge-ray up --name stale`" in st.stdout
    assert run_cli("down", "--name", "stale").returncode == 0


def test_port_in_use_fails_before_starting_anything():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_cli("up", "--name", "busy", "--dashboard-port", str(port))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: port {port} (--dashboard-port) is already in use on this machine: choose another with "
        "--dashboard-port PORT, or leave it out and bridge-ray picks a free one")
    assert not records.record_path("busy").exists()


def test_two_clusters_side_by_side(local_cluster):
    second = bridge_ray.up("second", num_cpus=1)
    try:
        assert set(second.ports.values()).isdisjoint(local_cluster.ports.values())
        for name in ("ci", "second"):
            assert bridge_ray.submit("recipes/hello_cluster.py", cluster=name).wait(timeout_s=120) == "SUCCEEDED"
    finally:
        bridge_ray.down("second")
    assert processes.find_pids(second.temp_dir, by_open_files=True) == []
    assert bridge_ray.status("ci").alive


def test_env_reaches_tasks_on_both_nodes(two_node_cluster):
    bridge_ray.up("two", address=two_node_cluster, python=sys.executable)
    try:
        job = bridge_ray.submit("recipes/hello_cluster.py", ["--show", "GLOO_SOCKET_IFNAME"], cluster="two",
                                env={"GLOO_SOCKET_IFNAME": "lo", "NCCL_DEBUG": "WARN"})
        job.wait(timeout_s=180)
        lines = [l for l in job.logs().splitlines() if l.startswith("task on")]
        assert len(lines) == 2
        assert len({l.split("(")[1].split(",")[0] for l in lines}) == 2  # two distinct node ids
        assert all("GLOO_SOCKET_IFNAME=lo" in l and "NCCL_DEBUG=WARN" in l for l in lines)
    finally:
        bridge_ray.down("two")


def test_dry_run_redacts_secrets_and_submits_nothing(local_cluster):
    before = _job_ids("ci")
    out = run_cli("submit", "recipes/hello_cluster.py", "--name", "ci", "--dry-run",
                  env={"HF_TOKEN": "hf_supersecret", "WANDB_API_KEY": "wandbsecret", "NCCL_DEBUG": "INFO"})
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert "HF_TOKEN" not in plan["runtime_env"]["env_vars"]  # it travels in a 0600 file, shown by name only
    assert plan["secrets (sent in a 0600 file)"] == {"HF_TOKEN": "***", "WANDB_API_KEY": "***"}
    assert plan["runtime_env"]["env_vars"]["NCCL_DEBUG"] == "INFO"
    assert "hf_supersecret" not in out.stdout + out.stderr and "wandbsecret" not in out.stdout + out.stderr
    assert plan["entrypoint"].endswith("-m bridge_ray.jobs.launch recipes/hello_cluster.py")
    assert _job_ids("ci") == before


def test_up_check_runs_doctor_and_the_next_submit_uses_its_profile():
    out = run_cli("up", "--name", "checked", "--num-cpus", "1", "--check")
    try:
        assert out.returncode == 0, out.stderr
        assert "all-reduce (gloo)" in out.stdout and "PASS" in out.stdout
        iface = next(line.split("=", 1)[1] for line in out.stdout.splitlines()
                     if line.strip().startswith("GLOO_SOCKET_IFNAME="))
        plan = json.loads(run_cli("submit", "recipes/hello_cluster.py", "--name", "checked", "--dry-run").stdout)
        assert plan["runtime_env"]["env_vars"]["GLOO_SOCKET_IFNAME"] == iface
    finally:
        run_cli("down", "--name", "checked")
