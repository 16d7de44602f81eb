"""Shared fixtures. Tests come in tiers, selected by marker:

    make test                                   # everything CI runs (starts SLURM first, as root)
    .venv/bin/pytest -m "not integration and not slurm"   # unit tier, seconds, no cluster
    .venv/bin/pytest -m integration             # real `ray start --head`, real verl (and vLLM CPU) on CPU
    .venv/bin/pytest -m slurm                   # real SLURM: bash tests/slurm/slurm-ci.sh up local 2
    .venv/bin/pytest -m gpu                     # GPU host only (see benchmarks/README.md); never in CI

Every test runs with its own BRIDGE_RAY_HOME so ~/.bridge-ray is never touched, and
with RAY_AUTH_MODE set explicitly (a stray ~/.ray/auth_token must not decide for us).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge_ray.cluster.processes import worker_niceness

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 600  # never a measurement: tests wait on events, and this only ends a hang


def wait_for(predicate, what: str, timeout_s: float = HANG_GUARD_S, poll_s: float = 0.2, job=None):
    """Poll ``predicate`` until it returns something truthy (the event) and return that; fail, naming the
    event, past ``timeout_s``, or as soon as ``job`` (a ``bridge_ray`` Job) ends without it."""
    deadline = time.monotonic() + timeout_s
    while not (found := predicate()):
        if job is not None and job.status() not in ("PENDING", "RUNNING"):
            pytest.fail(f"job {job.submission_id} ended ({job.status()}) before {what}:\n{job.logs()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)
    return found

# Ray instances the tests start themselves (in-process ``ray.init``, the ``ray start`` of a registered
# cluster) run their workers at nice 0, as bridge-ray's own clusters do (``processes.worker_niceness``):
# at Ray's default 15 a worker gets ~3 % of a core beside any busy process, and those tests ran
# 9-16x slower than idle on a loaded machine.
os.environ.update(worker_niceness())  # a value already set is kept


@pytest.fixture(scope="session", autouse=True)
def bridge_home(tmp_path_factory) -> Path:
    """A session-wide BRIDGE_RAY_HOME in a temp dir."""
    home = tmp_path_factory.mktemp("bridge-home")
    old = os.environ.get("BRIDGE_RAY_HOME")
    os.environ["BRIDGE_RAY_HOME"] = str(home)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield home
    if old is None:
        os.environ.pop("BRIDGE_RAY_HOME", None)
    else:
        os.environ["BRIDGE_RAY_HOME"] = old


class Silent(subprocess.TimeoutExpired):
    """``run_watched``'s command printed nothing for ``quiet`` seconds (or outlived its ``limit``)."""

    def __init__(self, cmd, elapsed: float, output: str, stderr: str, reason: str):
        super().__init__(cmd, elapsed, output=output, stderr=stderr)
        self.reason = reason


def run_cli_watched(*args: str, quiet: float, limit: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """``run_cli`` for long jobs on a possibly loaded machine (``run_watched``)."""
    return run_watched([sys.executable, "-m", "bridge_ray", *args], quiet=quiet, limit=limit, env=env)


def run_watched(cmd: list[str], quiet: float, limit: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in the repo, stopped when it prints nothing for ``quiet`` seconds, or when it runs past
    ``limit`` (the last resort); a slow command that keeps printing goes on.

    Raises:
        Silent: with everything the command printed and why it was stopped.
    """
    import threading
    import time

    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    last = [time.monotonic()]
    printed = threading.Event()

    def pump(stream, name):
        for line in stream:
            out[name].append(line)
            last[0] = time.monotonic()
            printed.set()

    pumps = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
    for thread in pumps:
        thread.start()
    start = time.monotonic()
    reason = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - start > limit:
            reason = f"ran past {limit:.0f} s"
        elif now - last[0] > quiet:
            reason = f"printed nothing for {quiet:.0f} s"
        if reason:
            os.killpg(proc.pid, 9)  # its own session: the command and anything it started
            proc.wait()
            break
        printed.clear()
        printed.wait(min(quiet - (now - last[0]), limit - (now - start), 5.0) + 0.1)  # wakes on output, or at a deadline
    for thread in pumps:
        thread.join(timeout=10)
    stdout, stderr = "".join(out["stdout"]), "".join(out["stderr"])
    if reason:
        raise Silent(cmd, time.monotonic() - start, stdout, stderr, reason)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m bridge_ray ARGS`` as a user would; returns the completed process."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "bridge_ray", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def local_cluster(bridge_home):
    """A real local Ray head started by ``bridge_ray.up`` (``ray start --head`` in a subprocess)."""
    import bridge_ray

    record = bridge_ray.up("ci", num_cpus=2)
    yield record
    bridge_ray.down("ci")


@pytest.fixture(scope="session")
def plain_ray_head(tmp_path_factory):
    """A plain ``ray start --head`` (no bridge-ray), auth off explicitly, loopback dashboard.

    Yields (dashboard_url, temp_dir); stopped by its own temp dir, never by ``ray stop``.
    """
    from bridge_ray.cluster import local, processes

    temp_dir = Path("/tmp") / f"bridge-ray-{os.getuid()}" / f"plain-{os.getpid()}"
    ports = local.choose_ports({})
    cmd = [local.ray_executable(), "start", "--head", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
           "--num-cpus=1", "--disable-usage-stats"] + [f"--{k}={v}" for k, v in ports.items()]
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    yield url, temp_dir
    processes.terminate(processes.find_pids(str(temp_dir), by_open_files=True))
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def two_node_cluster():
    """A 2-node ``ray.cluster_utils.Cluster`` (auth off explicitly), with its Jobs API on loopback.

    Yields the dashboard URL. Nodes carry custom resources ``node_a`` / ``node_b``.
    """
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster
    from bridge_ray.cluster import health, local
    from bridge_ray.cluster.records import ClusterRecord

    port = local.choose_ports({})["dashboard-port"]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    url = f"http://127.0.0.1:{port}"
    health.wait_ready(ClusterRecord(name="two", backend="address", gcs_address="", dashboard_url=url))
    yield url
    cluster.shutdown()
    os.environ.pop("RAY_AUTH_MODE", None)


# The slowest files first (measured with --durations on the 2-core CI machine, slowest first), so
# that with two xdist workers (`--dist loadfile --no-loadscope-reorder`, tests/run.sh) the long PPO
# file does not start last and leave one worker idle at the end. Files not named keep their order
# after these. Only the order changes; every test still runs.
SLOWEST_FIRST = ("test_ppo_cpu.py", "test_sft_train.py", "test_hardening.py", "test_slurm.py", "test_chain.py",
                 "test_network_doctor.py", "test_pretrain_train.py", "test_runs.py", "test_cluster.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept
