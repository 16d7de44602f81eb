"""``bridge-ray doctor``: report rendering (unit) and two namespaced hosts (integration).

The integration tier builds two "hosts" as root: network namespaces joined by a veth pair on
10.201.0.0/24 (addresses exist only inside these namespaces), each with its own hostname (UTS
namespace) and its own Ray node, token auth on. A second veth pair inside each namespace puts
``brx0`` on a different subnet per host: a wrong interface to force. Everything started is
killed by namespace membership and the namespaces are deleted, even when a test fails.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge_ray.cluster import records
from bridge_ray.cluster import local
from bridge_ray.network import profile_env
from bridge_ray.network.checks import Check
from bridge_ray.network.collective import nccl_transport
from bridge_ray.network.doctor import DoctorReport, render_table, to_json
from bridge_ray.network.profile import ClusterProfile
from conftest import REPO, run_cli

CLUSTER = "nsdoc"
HEAD_IP, WORKER_IP = "10.201.0.1", "10.201.0.2"
HANG_GUARD_S = 600  # never a measurement: the tests wait on events and this only ends a hang


# ---- unit: rendering, NCCL log parsing, CLI errors ------------------------------------------


def _report() -> DoctorReport:
    return DoctorReport(
        checks=[Check("versions", "PASS", "same on all nodes"),
                Check("all-reduce (gloo)", "FAIL", "timed out after 5 s", "drop --env GLOO_SOCKET_IFNAME")],
        probes=[], profile=ClusterProfile(env={"NCCL_SOCKET_IFNAME": "eth0"}, node_env={"n2": {"X": "1"}},
                                          notes=["a note"]),
        backend="gloo", world_size=2, nbytes=1 << 24, profile_path="/h/clusters/c/profile.json")


def test_render_table_shows_fix_under_each_fail_and_the_profile():
    assert render_table(_report()).splitlines() == [
        "CHECK              RESULT  DETAIL",
        "versions           PASS    same on all nodes",
        "all-reduce (gloo)  FAIL    timed out after 5 s",
        "                   fix:    drop --env GLOO_SOCKET_IFNAME",
        "",
        "profile (saved to /h/clusters/c/profile.json):",
        "  NCCL_SOCKET_IFNAME=eth0",
        "  on n2: X=1",
        "  note: a note",
        "",
        "FAIL: fix the rows above and rerun `bridge-ray doctor`",
    ]


def test_to_json_is_parseable_with_ok_flag():
    data = json.loads(to_json(_report()))
    assert data["ok"] is False and data["checks"][1]["fix"] == "drop --env GLOO_SOCKET_IFNAME"
    assert data["profile"]["env"] == {"NCCL_SOCKET_IFNAME": "eth0"}


def test_nccl_transport_from_debug_log():
    log = (
        "gpu1:123:456 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB enp170s0f0np0:10.10.0.11<0>\n"
        "gpu1:123:456 [0] NCCL INFO Using network IB\n"
        "gpu1:123:456 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via P2P/CUMEM/read\n"
        "gpu1:123:456 [0] NCCL INFO Channel 01/0 : 1[1] -> 8[0] [send] via NET/IB/0/GDRDMA\n"
        "gpu1:123:456 [0] NCCL INFO Channel 00/24 : 0 1 2 3\n"
    )
    assert nccl_transport(log) == "network IB; channels NET/IB/0/GDRDMA, P2P/CUMEM/read"
    assert nccl_transport("") == "single rank (no inter-rank transport)"


def test_cli_bad_env_is_a_user_error():
    out = run_cli("doctor", "--env", "NOEQUALS")
    assert out.returncode == 2
    assert "error: --env 'NOEQUALS' is not KEY=VALUE (e.g. --env NCCL_IB_GID_INDEX=3)" in out.stderr


def test_cli_unknown_cluster_is_a_user_error():
    out = run_cli("doctor", "--name", "no-such-cluster")
    assert out.returncode == 2 and "no cluster named 'no-such-cluster'" in out.stderr


# ---- integration: two namespaced hosts -------------------------------------------------------


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def _in_ns(ns: str, *cmd: str, hostname: str | None = None) -> list[str]:
    """argv that runs ``cmd`` in network namespace ``ns`` (nsenter keeps the host's /sys mounted)."""
    inner = ["nsenter", f"--net=/run/netns/{ns}", *cmd]
    if hostname is None:
        return inner
    return ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "_", *inner]


def _make_hosts(ns_a: str, ns_b: str) -> None:
    _sh("ip", "netns", "add", ns_a)
    _sh("ip", "netns", "add", ns_b)
    _sh("ip", "link", "add", "name", "brv0", "netns", ns_a, "type", "veth", "peer", "name", "brv0", "netns", ns_b)
    for ns, shared_ip, other_net in ((ns_a, HEAD_IP, 1), (ns_b, WORKER_IP, 2)):
        _sh("ip", "-n", ns, "addr", "add", f"{shared_ip}/24", "dev", "brv0")
        _sh("ip", "-n", ns, "link", "add", "brx0", "type", "veth", "peer", "name", "brx1")
        _sh("ip", "-n", ns, "addr", "add", f"10.202.{other_net}.1/24", "dev", "brx0")
        for dev in ("lo", "brv0", "brx0", "brx1"):
            _sh("ip", "-n", ns, "link", "set", dev, "up")


def _destroy(namespaces: list[str]) -> None:
    """Kill every process living in our namespaces (Ray daemons, workers), then delete them."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        pids = [int(p) for ns in namespaces if Path(f"/run/netns/{ns}").exists()
                for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _start(cmd: list[str], env: dict) -> None:
    """``ray start``; its fixed 30 s wait for the raylet may run out on a busy machine: _wait_for_nodes decides."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    timed_out = "timed out during startup" in out.stdout + out.stderr
    assert out.returncode == 0 or timed_out, f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"


def _wait_for_nodes(ns: str, env: dict, count: int) -> None:
    """Wait (an event: the nodes are ALIVE; the deadline only guards a hang) until ``count`` nodes joined."""
    script = (
        "import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
        f"end = time.time() + {HANG_GUARD_S}\n"
        "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time() < end: time.sleep(0.5)\n"
        "sys.exit(sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]))\n"
    )
    subprocess.run(_in_ns(ns, sys.executable, "-c", script, f"{HEAD_IP}:6379", str(count)),
                   env=env, check=True, timeout=HANG_GUARD_S + 60, capture_output=True)


@pytest.fixture(scope="module")
def two_hosts(bridge_home, tmp_path_factory):
    """Two namespaced hosts, each a Ray node; yields the env a driver inside host A needs."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nsenter"):
        pytest.fail("needs root, iproute2 and util-linux (CI runs as root; .ci installs iproute2)")
    tag = f"{os.getpid() % 100000}"
    ns_a, ns_b = f"brdoc-a-{tag}", f"brdoc-b-{tag}"
    temp = Path(f"/tmp/brdoc-{tag}")
    token = tmp_path_factory.mktemp("token") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    ray_bin = local.ray_executable()
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        _make_hosts(ns_a, ns_b)
        _start(_in_ns(ns_a, ray_bin, "start", "--head", f"--node-ip-address={HEAD_IP}", "--port=6379",
                      "--include-dashboard=false", f"--temp-dir={temp}/a", *common, hostname="host-a"), env)
        _start(_in_ns(ns_b, ray_bin, "start", f"--address={HEAD_IP}:6379", f"--node-ip-address={WORKER_IP}",
                      f"--temp-dir={temp}/b", *common, hostname="host-b"), env)
        _wait_for_nodes(ns_a, env, 2)
        records.save(records.ClusterRecord(name=CLUSTER, backend="address", gcs_address=f"{HEAD_IP}:6379",
                                           dashboard_url="", token_path=str(token)))
        yield {"ns": ns_a, "env": env}
    finally:
        _destroy([ns_a, ns_b])
        shutil.rmtree(temp, ignore_errors=True)
        records.delete(CLUSTER)


def _doctor_in_host_a(hosts: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_in_ns(hosts["ns"], sys.executable, "-m", "bridge_ray", "doctor", "--name", CLUSTER, *args),
                          env=hosts["env"], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)


@pytest.mark.integration
def test_doctor_picks_veth_subnet_and_gloo_allreduce_passes(two_hosts):
    out = _doctor_in_host_a(two_hosts, "--json", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    rows = {c["name"]: c for c in report["checks"]}
    assert all(c["status"] == "PASS" for c in report["checks"]), rows
    assert rows["nodes"]["detail"] == f"2 alive: host-a {HEAD_IP} (no GPU); host-b {WORKER_IP} (no GPU)"
    assert rows["common subnet"]["detail"] == "10.201.0.0/24 via brv0 on 2 node(s)"
    assert rows[f"shared filesystem {records.home_dir()}"]["status"] == "PASS"
    assert report["backend"] == "gloo" and report["world_size"] == 2 and report["busbw_gbps"] > 0
    assert report["transport"] == "gloo/tcp via brv0"
    assert profile_env(CLUSTER) == {"GLOO_SOCKET_IFNAME": "brv0", "NCCL_SOCKET_IFNAME": "brv0"}
    assert "export NCCL_SOCKET_IFNAME=brv0" in (records.cluster_dir(CLUSTER) / "profile.env").read_text()


@pytest.mark.integration
def test_next_job_on_the_other_host_gets_the_profile(two_hosts):
    if not profile_env(CLUSTER):
        _doctor_in_host_a(two_hosts, "--timeout", "120")
    script = (
        "import json, os, socket, sys, ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "from bridge_ray.network import profile_env\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR', runtime_env={'env_vars': profile_env(sys.argv[2])})\n"
        "node = next(n['NodeID'] for n in ray.nodes() if n['NodeManagerAddress'] == sys.argv[3])\n"
        "probe = ray.remote(lambda: [socket.gethostname(), os.environ.get('GLOO_SOCKET_IFNAME')])\n"
        "print(json.dumps(ray.get(probe.options(scheduling_strategy=On(node, soft=False)).remote())))\n"
    )
    out = subprocess.run(_in_ns(two_hosts["ns"], sys.executable, "-c", script, f"{HEAD_IP}:6379", CLUSTER, WORKER_IP),
                         env=two_hosts["env"], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["host-b", "brv0"]


@pytest.mark.integration
def test_wrong_forced_interface_fails_with_fix_instead_of_hanging(two_hosts):
    # The ranks' own 8 s collective timeout ends it (the subprocess's guard would only catch a hang).
    out = _doctor_in_host_a(two_hosts, "--env", "GLOO_SOCKET_IFNAME=brx0", "--timeout", "8")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    iface = lines.index(next(ln for ln in lines if ln.startswith("interface GLOO_SOCKET_IFNAME")))
    assert "FAIL" in lines[iface] and "brx0 is on 10.202.1.0/24 on host-a, 10.202.2.0/24 on host-b" in lines[iface]
    assert "fix:" in lines[iface + 1] and "--env GLOO_SOCKET_IFNAME=brv0, subnet 10.201.0.0/24" in lines[iface + 1]
    allreduce = lines.index(next(ln for ln in lines if ln.startswith("all-reduce (gloo)")))
    assert "FAIL" in lines[allreduce]
    assert "could not connect with --env GLOO_SOCKET_IFNAME=brx0" in lines[allreduce + 1]
    assert "note: --env not saved: the all-reduce failed with it" in out.stdout
    assert profile_env(CLUSTER)["GLOO_SOCKET_IFNAME"] == "brv0"  # the broken override was not kept


def test_code_shipped_to_nodes_needs_no_bridge_ray(tmp_path):
    """Nodes run probe_node and AllReduceRank by value: a node without bridge_ray still answers."""
    import ray.cloudpickle

    from bridge_ray.network import collective, doctor, probe  # noqa: F401  (doctor registers by value)

    payload = tmp_path / "payload.pkl"
    payload.write_bytes(ray.cloudpickle.dumps((probe.probe_node, collective.AllReduceRank)))
    script = (
        "import pickle, sys\n"
        "probe_node, rank = pickle.load(open(sys.argv[1], 'rb'))\n"
        "assert not any(m.startswith('bridge_ray') for m in sys.modules), 'bridge_ray was imported'\n"
        "print(probe_node(root='/nonexistent', ip_json='[]', hostname='h')['hostname'], rank.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", script, str(payload)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["h", "AllReduceRank"]


@pytest.mark.gpu
def test_doctor_reports_nccl_bus_bandwidth_on_gpus(tmp_path):
    """On the GPU host: one rank per GPU; with 2+ GPUs the bus bandwidth is measured."""
    import torch

    from bridge_ray.cluster import processes

    num_gpus = torch.cuda.device_count()
    if not num_gpus:
        pytest.skip("no GPU here: the gpu tier runs on the GPU host (pytest -m gpu)")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("RAY_ADDRESS", None)
    temp = Path(f"/tmp/brgpu-{os.getpid()}")
    try:
        _start([local.ray_executable(), "start", "--head", "--port=6391",
                "--node-ip-address=127.0.0.1", f"--num-gpus={num_gpus}", "--num-cpus=4",
                "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"], env)
        records.save(records.ClusterRecord(name="gpu", backend="local", gcs_address="127.0.0.1:6391",
                                           dashboard_url="", token_path=str(token)))
        out = run_cli("doctor", "--name", "gpu", "--json", "--timeout", "120", env=env, timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["backend"] == "nccl" and report["world_size"] == num_gpus
        print(report["checks"][-1]["detail"])
        if num_gpus > 1:
            assert report["busbw_gbps"] > 10 and "channels" in report["transport"]
    finally:
        processes.terminate(processes.find_pids(str(temp), by_open_files=True))
        shutil.rmtree(temp, ignore_errors=True)
        records.delete("gpu")
