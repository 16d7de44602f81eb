"""``bridge-ray up --slurm`` against a real SLURM (several slurmd on 127.0.0.1).

Needs: ``bash tests/slurm/slurm-ci.sh up local 2`` (as root; ``make test`` does it).
Every test ends with nothing allocated and no Ray process of its jobs left.
"""
from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import bridge_ray
from bridge_ray.cluster import records, walltime
from bridge_ray.cluster import processes, slurm
from bridge_ray.errors import SlurmError
from conftest import run_cli

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def real_slurm():
    """Fail (never skip) when SLURM is not up."""
    try:
        idle = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%T"], capture_output=True, text=True,
                              timeout=20).stdout.split().count("idle")
    except (OSError, subprocess.TimeoutExpired):
        idle = -1
    if idle < 2:
        pytest.fail(f"these tests need a real SLURM with 2 idle nodes (found {max(idle, 0)}): "
                    "run `bash tests/slurm/slurm-ci.sh up local 2` (as root) first")


@pytest.fixture(autouse=True)
def nothing_left():
    """After each test: no allocation of bridge-ray's left, even when the test failed half-way."""
    yield
    left = _active_jobs()
    for record in records.list_records():
        if record.backend == "slurm":
            bridge_ray.down(record.name)
    assert left == [] and _active_jobs() == []


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> str:
    """recipes/hello_cluster.py in a folder of its own: a small working_dir to upload."""
    folder = tmp_path_factory.mktemp("hello")
    (folder / "hello_cluster.py").write_text((REPO / "recipes" / "hello_cluster.py").read_text())
    return str(folder / "hello_cluster.py")


def _active_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "PD,CF,R,CG", "-o", "%j"], capture_output=True, text=True).stdout
    return [j for j in out.split() if j.startswith("bridge-ray-")]


def _ray_pids(record: records.ClusterRecord) -> list[int]:
    temp_dir = f"/tmp/bridge-ray-{os.getuid()}/slurm-{record.slurm['job_id']}"
    slots = [temp_dir] + sorted(glob.glob(f"{temp_dir}.*"))  # slot 0, then slots 1+ (slurm-N.1, ...)
    return sorted({pid for folder in slots for pid in processes.find_pids(f"{folder}/", by_open_files=True)})


def _assert_gone(record: records.ClusterRecord) -> None:
    assert slurm.squeue(record.slurm["job_id"])[0] not in slurm.ACTIVE
    assert _ray_pids(record) == []
    assert not records.record_path(record.name).exists()


def _submit(recipe: str, name: str, *args: str) -> str:
    out = run_cli("submit", recipe, "--name", name, "--follow", "--", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_cli_one_node_up_submit_down(hello):
    # A secret in the shell that runs `up`: sbatch handed it to every node's Ray (and slurmctld kept it on disk).
    token = "hf_slurm_up_shell_secret"
    out = run_cli("up", "--slurm", "--name", "one", "--cpus-per-task", "1", "--time", "10", env={"HF_TOKEN": token})
    assert out.returncode == 0, out.stdout + out.stderr
    phases = [line.split()[1] for line in out.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert phases[0] == "submitted" and phases[-1] == "ready"
    assert {"allocated", "head", "joined"} <= set(phases)
    assert "joined     1/1 nodes" in out.stdout
    record = records.load("one")
    assert f"SLURM job {record.slurm['job_id']}: RUNNING" in out.stdout
    assert record.dashboard_url.startswith("http://127.0.0.1:")
    assert 20000 <= record.ports["port"] < 32768
    # What listens: the HTTP servers on the node's address only, no per-node metrics exporter (see slurm_node).
    listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    pids = _ray_pids(record)
    ours = {int(line.split()[3].rsplit(":", 1)[1]): line.split()[3].rsplit(":", 1)[0] for line in listeners
            if any(f"pid={p}," in line for p in pids)}
    for flag in ("dashboard-port", "dashboard-agent-listen-port", "runtime-env-agent-port"):
        assert ours[record.ports[flag]] not in ("0.0.0.0", "*", "[::]"), (flag, ours)
    assert record.ports["metrics-export-port"] not in ours
    assert not [p for p in pids if token.encode() in processes._read(Path(f"/proc/{p}/environ"))]
    seen = _submit(hello, "one", "--show", walltime.DEADLINE_ENV, "--show", walltime.VERL_ENV)
    deadline = int(re.search(rf"{walltime.DEADLINE_ENV}=(\d+)", seen).group(1))
    assert abs(deadline - (record.slurm["allocated_at"] + 600)) < 60  # --time 10 from the allocation's start
    assert f"{walltime.VERL_ENV}={deadline - int(walltime.SAFETY_MARGIN_S)}" in seen
    down = run_cli("down", "--name", "one")
    assert down.stdout.strip() == "cluster 'one' is down"
    _assert_gone(record)


def test_two_nodes_sft_one_cpu_worker_per_node(hello, tmp_path):
    marks = tmp_path / "setup-ran"
    setup = ("export BRIDGE_RAY_SETUP_MARK=$SLURMD_NODENAME", f'echo "$SLURMD_NODENAME" >> {marks}')
    record = bridge_ray.up("two", slurm=dict(nodes=2, cpus_per_task=1, setup=setup))
    assert record.slurm["nodes"] == ["n1", "n2"]
    # The setup lines ran in the batch shell (n1) and before Ray on each node; what they export reaches jobs there.
    assert sorted(marks.read_text().split()) == ["n1", "n1", "n2"]
    seen = _submit(hello, "two", "--show", "BRIDGE_RAY_SETUP_MARK", "--show", "TMPDIR")
    assert sorted(re.findall(r"BRIDGE_RAY_SETUP_MARK=(n\d)", seen)) == ["n1", "n2"], seen
    temp_dir = f"/tmp/bridge-ray-{os.getuid()}/slurm-{record.slurm['job_id']}"  # each node's own (slot 0, 1)
    assert sorted(re.findall(r"TMPDIR=(\S+)", seen)) == [f"{temp_dir}.1/tmp", f"{temp_dir}/tmp"], seen
    assert re.findall(r", nice (\d+)\)", seen) == ["0", "0"], seen  # not Ray's default 15, on both nodes
    st = bridge_ray.status("two")
    alive = [n for n in st.nodes if n["state"] == "ALIVE"]
    assert sorted(n["labels"][slurm.slurm_node.NODE_LABEL] for n in alive) == ["n1", "n2"]
    assert [n["resources_total"]["CPU"] for n in alive] == [1, 1]  # so the 2 SFT workers land one per node
    # Scratch folders some working trees hold (gitignored) would push the upload over Ray's limit.
    out = run_cli("submit", str(REPO / "recipes" / "sft_gsm8k.py"), "--name", "two", "--exclude", ".gpu",
                  "--exclude", ".gl", "--follow", "--", "sft.workers.num_workers=2", "sft.trainer.total_steps=2",
                  timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "step 2/2 loss" in out.stdout and out.stdout.rstrip().endswith("SUCCEEDED")
    # The seed's PPO (a GPU preset), submitted the same way: on CPU-only nodes it fails fast, saying
    # what it needs and how to run on CPU instead.
    ppo = run_cli("submit", str(REPO / "recipes" / "ppo_gsm8k.py"), "--name", "two", "--follow", timeout=300)
    assert ppo.returncode == 2, ppo.stdout[-2000:] + ppo.stderr[-2000:]
    shown = ppo.stdout + ppo.stderr
    assert "PPO on GPUs (ppo.trainer.device=gpu) needs at least 1 GPU" in shown
    assert "the cluster has 0 GPUs (2 nodes" in shown and "run on CPU: ppo.trainer.device=cpu" in shown
    assert run_cli("down", "--name", "two").stdout.strip() == "cluster 'two' is down"
    _assert_gone(record)


def test_two_clusters_side_by_side(hello):
    names = ("side-a", "side-b")
    with ThreadPoolExecutor(2) as pool:  # two allocations brought up at once, on the same node if SLURM likes
        a, b = pool.map(lambda name: bridge_ray.up(name, slurm=dict(cpus_per_task=1)), names)
        assert a.slurm["job_id"] != b.slurm["job_id"]
        assert a.ports["port"] != b.ports["port"] and a.temp_dir != b.temp_dir
        assert all("SUCCEEDED" in out for out in pool.map(lambda name: _submit(hello, name), names))
    bridge_ray.down("side-a")
    _assert_gone(a)
    assert bridge_ray.status("side-b").alive
    bridge_ray.down("side-b")
    _assert_gone(b)


def test_unknown_partition():
    out = run_cli("up", "--slurm", "--name", "nopart", "--partition", "nope")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: SLURM has no partition 'nope' (Batch job submission failed: Invalid "
                                  "partition name specified): pick one of debug, acct (`sinfo -s`)")
    assert _active_jobs() == []


def test_unknown_account_is_cancelled():
    with pytest.raises(SlurmError, match=r"^SLURM will never start job \d+: Job's account not known, so it can't "
                       r"use this partition \(acct allows ci\) \(asked nodes=1, partition=acct, account=nope\): "
                       r"fix the request \(`sinfo -s` lists partitions and limits\); cancelled the job$"):
        bridge_ray.up("noacct", slurm=dict(partition="acct", account="nope"))
    assert _active_jobs() == []


def test_still_pending_after_wait_is_cancelled_or_kept():
    later = ("--begin=now+600",)
    with pytest.raises(SlurmError, match=r"^SLURM job \d+ was still pending after 2 s \(BeginTime\): cancelled it; "
                       r"wait longer with --wait SECONDS, or keep it queued with --keep-pending$"):
        bridge_ray.up("pend", slurm=dict(sbatch_args=later, wait_s=2))
    assert _active_jobs() == []
    assert not records.record_path("pend").exists()
    with pytest.raises(SlurmError, match=r"^SLURM job \d+ is still pending after 2 s \(BeginTime\); kept it: "
                       r"`bridge-ray status --name keep` shows when it is up, `bridge-ray down --name keep` cancels it$"):
        bridge_ray.up("keep", slurm=dict(sbatch_args=later, wait_s=2, keep_pending=True))
    assert _active_jobs() == ["bridge-ray-keep"]
    assert bridge_ray.status("keep").slurm_state.startswith("PENDING (BeginTime)")
    job_id = records.load("keep").slurm["job_id"]
    again = run_cli("up", "--slurm", "--name", "keep", "--wait", "2", "--keep-pending", "--sbatch-arg=--begin=now+600")
    assert (again.returncode, again.stderr) == (2, (  # it cancelled the queued job and queued another
        f"error: cluster 'keep' is already queued as SLURM job {job_id} (PENDING (BeginTime)): see `bridge-ray status "
        "--name keep` for when it starts, or cancel it with `bridge-ray down --name keep` first\n"))
    submitted = run_cli("submit", str(REPO / "recipes" / "hello_cluster.py"), "--name", "keep")
    assert (submitted.returncode, submitted.stderr) == (2, (
        f"error: cluster 'keep' has not started: its SLURM allocation (job {job_id}) is still queued; `bridge-ray "
        "status --name keep` shows when it starts (`bridge-ray down --name keep` cancels it)\n"))
    assert _active_jobs() == ["bridge-ray-keep"] and records.load("keep").slurm["job_id"] == job_id
    bridge_ray.down("keep")
    assert _active_jobs() == []


def test_node_that_never_joins_is_named_and_cancelled():
    folder = records.cluster_dir("hang")
    folder.mkdir(parents=True, exist_ok=True)
    # A node whose setup hangs: the profile is sourced on each node before `ray start`.
    (folder / "profile.env").write_text('if [ "${SLURMD_NODENAME:-}" = n2 ]; then sleep 600; fi\n')
    with pytest.raises(SlurmError, match=r"^node\(s\) n2 did not join the Ray cluster within 15 s of the head "
                       r"\(1/2 nodes joined\) \(a busy node may need longer: `bridge-ray up --slurm --join-timeout SECONDS`\): "
                       r"cancelled SLURM job (\d+); logs kept in .*/slurm-\1\.out$") as err:
        bridge_ray.up("hang", slurm=dict(nodes=2, cpus_per_task=1, join_timeout_s=15))
    job_id = re.search(r"job (\d+);", str(err.value)).group(1)
    assert _active_jobs() == [] and (folder / f"slurm-{job_id}.out").exists()
    assert not records.record_path("hang").exists()
    # Neither node leaves its Ray temp dir: the head removes its own as it stops; n2, killed while still
    # sourcing the profile, had made none (it used to leave an empty one behind).
    _wait_for(lambda: not list(processes.private_root().glob(f"slurm-{job_id}*")), "the nodes' temp dirs to go")


def _wait_for(predicate, what: str, guard_s: float = 600):
    """Wait for an event; the guard only ends a hang (it is no estimate of how long the event takes)."""
    deadline = time.monotonic() + guard_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {guard_s:.0f} s for {what}")
        time.sleep(0.2)


def test_head_dying_later_shows_in_status():
    record = bridge_ray.up("dies", slurm=dict(cpus_per_task=1))
    log = Path(record.slurm["log"])
    _wait_for(lambda: "will now block forever" in log.read_text(), "the head's `ray start` to finish")
    gcs = [p for p in _ray_pids(record) if b"gcs_server" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(gcs[0], signal.SIGKILL)
    _wait_for(lambda: slurm.squeue(record.slurm["job_id"])[0] not in slurm.ACTIVE, "the allocation to end")
    st = bridge_ray.status("dies")
    assert not st.alive
    assert st.slurm_state == (f"FAILED: the allocation has ended, so this record is stale (logs: {log}); "
                              "clear it with `bridge-ray down --name dies`")
    assert "STALE" in run_cli("status", "--name", "dies").stdout
    bridge_ray.down("dies")
    _assert_gone(record)


def test_runs_of_a_cancelled_allocation_say_why_and_one_that_ended_keeps_its_end(tmp_path):
    """Submit without --follow, walk away, the allocation ends (scancel here; its time limit the same): the
    running job is lost, naming the allocation's end, and the job that had ended keeps its end and log."""
    from bridge_ray import runs

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "quick.py").write_text("print('quick job done', flush=True)\n")
    (tmp_path / "sleepy.py").write_text("import time\nprint('sleeping', flush=True)\ntime.sleep(900)\n")
    record = bridge_ray.up("gone", slurm=dict(cpus_per_task=2))
    quick = bridge_ray.submit(tmp_path / "quick.py", cluster="gone")
    _wait_for(lambda: (runs.run_dir(quick.submission_id) / runs.DRIVER_END).is_file(), "the quick job to end")
    sleepy = bridge_ray.submit(tmp_path / "sleepy.py", cluster="gone")
    copy = runs.run_dir(sleepy.submission_id) / runs.DRIVER_LOG  # the driver's own copy of its log
    _wait_for(lambda: copy.is_file() and "sleeping" in copy.read_text(), "the sleepy job to print")
    job_id = record.slurm["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    _wait_for(lambda: slurm.squeue(job_id)[0] not in slurm.ACTIVE, "the allocation to end")
    assert run_cli("runs").returncode == 0
    done, lost = runs.load_run(quick.submission_id), runs.load_run(sleepy.submission_id)
    assert done.status == "SUCCEEDED"
    assert "quick job done" in (runs.run_dir(quick.submission_id) / runs.JOB_LOG).read_text()
    assert (lost.status, lost.failure) == ("FAILED", runs.CLUSTER_LOST)
    assert lost.message.endswith(f"stopped answering (its SLURM allocation {job_id} ended: CANCELLED)"), lost.message
    assert "sleeping" in (runs.run_dir(sleepy.submission_id) / runs.JOB_LOG).read_text()
    bridge_ray.down("gone")
    _assert_gone(record)
