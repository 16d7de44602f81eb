"""The node side of the SLURM bootstrap: ``python -m bridge_ray.cluster.slurm_node head|worker|barrier``.

``slurm_bootstrap/bridge_ray.sbatch`` runs ``head`` on the first node and ``worker`` on
the others (each under ``srun``, each running ``ray start --block`` so SLURM owns every
Ray process), and ``barrier`` in the batch script: it waits until every node has joined
with its GPUs, then writes the cluster record. Progress goes to an events file the
login node follows (``bridge-ray up --slurm``); the shared bridge-ray home carries it.

Ports: each job owns a block of ``BLOCK`` ports derived from its job id, in 20000-32759
(above Ray's default worker ports, below the kernel's ephemeral range), so two clusters
on a shared node never collide. Nodes of one job that share an address (emulated nodes
on one host) take distinct slots of the block and distinct temp dirs. A derived port
that is taken anyway is replaced by a free one; the record holds what was used.

What listens (Ray 2.60): the Jobs API/dashboard, the dashboard agent's HTTP port, the runtime-env
agent and the client server bind the node's SLURM address (the last two also 127.0.0.1); Ray
binds its gRPC servers (GCS, raylet, object manager, dashboard agent) to every interface on any
node whose address is not loopback, with no flag to change it. Every one of them requires the
cluster's token. The per-node metrics exporter is off (``RAY_enable_metrics_collection=0``); the
head's two Prometheus endpoints (dashboard and autoscaler metrics, read-only process metrics, no
auth) listen on every interface on ports from the job's block: Ray has no flag for their address.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bridge_ray.cluster import records, walltime
from bridge_ray.cluster import health, local, processes
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import BridgeRayError
from bridge_ray.jobs.runtime_env import is_secret

PORT_FLOOR, BLOCK, NUM_BLOCKS = 20000, 40, 319
CLUSTER_PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-metrics-port", "autoscaler-metrics-port")
NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
MAX_SLOTS = (BLOCK - len(CLUSTER_PORTS)) // len(NODE_PORTS)
NODE_LABEL = "bridge-ray/slurm-node"
HEAD_TIMEOUT_S = 120.0
JOINED_TIMEOUT_S = 30.0  # one request for the list of joined nodes
TIMEOUT_HINT = " (a busy node may need longer: `bridge-ray up --slurm --join-timeout SECONDS`)"
STOP_GRACE_S = 5.0
START_ATTEMPTS = 3
RAY_BLOCKING = "will now block forever"  # what `ray start --block` prints once the node is up


def job_dir(name: str, job_id: str | int) -> Path:
    """Per-allocation folder on the shared home: ``head.json`` and ``events.jsonl``."""
    return records.cluster_dir(name) / f"slurm-{job_id}"


def emit(folder: Path, phase: str, detail: str, t: float | None = None) -> None:
    """Append one progress event (``head up``, ``joined``, ``ready``, ``failed``)."""
    folder.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"t": t or time.time(), "phase": phase, "detail": detail})
    with open(folder / "events.jsonl", "a") as f:
        f.write(line + "\n")


def read_events(folder: Path) -> list[dict]:
    """Events written so far (a half-written last line is left for the next read)."""
    path = folder / "events.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def derived_ports(job_id: int, slot: int, head: bool) -> dict[str, int]:
    """The ports a node of job ``job_id`` uses, by Ray flag; ``slot`` separates nodes sharing an address."""
    base = PORT_FLOOR + (job_id % NUM_BLOCKS) * BLOCK
    ports = {flag: base + i for i, flag in enumerate(CLUSTER_PORTS)} if head else {}
    first = base + len(CLUSTER_PORTS) + slot * len(NODE_PORTS)
    ports.update({flag: first + i for i, flag in enumerate(NODE_PORTS)})
    return ports


def _usable(port: int) -> int:
    """``port`` if nothing listens on it here, else a free port the kernel picks."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
            return port
        except OSError:
            s.bind(("", 0))
            return s.getsockname()[1]


def _slurm_out(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


class Node:
    """This node's place in the allocation, read from SLURM's environment."""

    def __init__(self):
        self.cluster = os.environ["BRIDGE_RAY_CLUSTER"]
        self.job_id = int(os.environ["SLURM_JOB_ID"])
        self.name = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        self.nodes = _slurm_out("scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]).split()
        self.folder = job_dir(self.cluster, self.job_id)
        self.join_timeout_s = float(os.environ.get("BRIDGE_RAY_JOIN_TIMEOUT", "300"))
        # The head alone gets at least HEAD_TIMEOUT_S: a cold node may import a big venv slowly.
        self.head_timeout_s = max(self.join_timeout_s, HEAD_TIMEOUT_S)
        self.gpus = int(os.environ.get("BRIDGE_RAY_GPUS_PER_NODE", "0"))

    def addresses(self) -> dict[str, str]:
        """Each job node's IP, from SLURM's NodeAddr (the address SLURM itself reaches it on)."""
        out = _slurm_out("scontrol", "show", "node", "-o", ",".join(self.nodes))
        fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]
        return {f["NodeName"]: socket.gethostbyname(f.get("NodeAddr") or f["NodeName"]) for f in fields}

    def place(self) -> tuple[str, int]:
        """(this node's IP, its slot among the job's nodes on that IP)."""
        addresses = self.addresses()
        ip = addresses[self.name]
        slot = [n for n in self.nodes if addresses[n] == ip].index(self.name)
        if slot >= MAX_SLOTS:
            raise BridgeRayError(f"more than {MAX_SLOTS} nodes of job {self.job_id} share address {ip}")
        return ip, slot

    def temp_dir(self, slot: int) -> Path:
        # Short: Ray's unix socket paths must stay under ~107 bytes.
        suffix = f".{slot}" if slot else ""
        return processes.private_root() / f"slurm-{self.job_id}{suffix}"

    def ray_env(self, temp_dir: Path, ports: dict[str, int]) -> dict[str, str]:
        """Env for ``ray start``: the network profile sourced on this node, the deadline, the cluster's tag;
        makes ``temp_dir`` (0700) once the profile has been sourced."""
        env = dict(os.environ)
        profile = records.cluster_dir(self.cluster) / "profile.env"
        if profile.is_file():
            dump = subprocess.run(["bash", "-c", '. "$0" >&2 && env -0', str(profile)], check=True,
                                  stdout=subprocess.PIPE).stdout.decode()
            env = _without_profile_secrets(dict(item.split("=", 1) for item in dump.split("\0") if "=" in item),
                                           profile)
        env = {k: v for k, v in env.items() if k not in processes.FOREIGN_RAY_ENV}
        env.update(processes.worker_niceness(env))
        env.update(walltime.slurm_env(self.job_id))
        # Made only now: sourcing the profile can fail, or hang until SLURM kills this node, before Ray starts.
        temp_dir.mkdir(mode=0o700, exist_ok=True)
        env.update({env_name: str(ports[name]) for name, env_name in local.METRICS_PORT_ENV.items() if name in ports})
        env.update({
            # Per node, not per cluster: emulated nodes of one job share a host, and each cleans up its own.
            processes.TAG_ENV: str(temp_dir), processes.TEMP_DIR_ENV: str(temp_dir), **processes.temp_env(temp_dir),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"],
            "RAY_enable_metrics_collection": "0",
            # Ray drains for 30 s on SIGTERM, longer than SLURM waits before SIGKILL: stop at once instead.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        })
        return env

    def ray_command(self, ip: str, slot: int, ports: dict[str, int]) -> list[str]:
        cpus = os.environ.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count())
        cmd = [local.ray_executable(), "start", "--block", f"--node-ip-address={ip}",
               f"--temp-dir={self.temp_dir(slot)}", f"--num-cpus={cpus}", f"--num-gpus={self.gpus}",
               f"--labels={NODE_LABEL}={self.name}", "--min-worker-port=0", "--max-worker-port=0",
               "--disable-usage-stats"]
        return cmd + [f"--{flag}={port}" for flag, port in ports.items() if flag not in local.METRICS_PORT_ENV]


def _without_profile_secrets(env: dict[str, str], profile: Path) -> dict[str, str]:
    """``env`` less the secrets a network profile set (an older bridge-ray wrote them there): the user's own stay.

    Ray's processes would carry them into every job; ``bridge-ray doctor`` rewrites the file without them.
    """
    kept = {}
    for key, value in env.items():
        if is_secret(key) and os.environ.get(key) != value:
            print(f"[bridge-ray] {profile} sets {key}, a secret: left out of Ray's environment; "
                  "run `bridge-ray doctor` to rewrite the profile", file=sys.stderr)
            continue
        kept[key] = value
    return kept


def run_ray(node: Node, cmd: list[str], temp_dir: Path, ports: dict[str, int]) -> int:
    """Run ``ray start --block`` until SLURM ends it; report a crash; remove the temp dir.

    Ray's files stay private: its processes run with umask 077 in a temp dir under the user's
    0700 folder. Ray gives its raylet and agents fixed few-second windows to start, which a busy
    node can miss: a start that fails before Ray says it is up is tried again (START_ATTEMPTS);
    a Ray that dies after that ends the allocation. On SIGTERM (scancel, time limit) Ray gets
    STOP_GRACE_S to stop, then whatever is left of it is killed, so the temp dir is gone before
    SLURM's own SIGKILL (KillWait) comes.
    """
    stopping: list[float] = []
    running: list[subprocess.Popen] = []

    def forward(signum, _frame):
        stopping.append(time.monotonic())
        for proc in running:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for attempt in range(1, START_ATTEMPTS + 1):
        rc, started = _run_once(node, cmd, temp_dir, ports, stopping, running)
        if started or rc == 0 or stopping or attempt == START_ATTEMPTS:
            break
        print(f"bridge-ray: Ray on node {node.name} failed while starting (exit {rc}); starting it again",
              file=sys.stderr, flush=True)
    if rc and not stopping:
        emit(node.folder, "failed", f"Ray on node {node.name} exited with code {rc}")
    return rc


def _run_once(node: Node, cmd: list[str], temp_dir: Path, ports: dict[str, int], stopping: list[float],
              running: list[subprocess.Popen]) -> tuple[int, bool]:
    """One ``ray start --block``, its output relayed to the allocation's log; (exit code, whether Ray got up)."""
    proc = subprocess.Popen(cmd, env=node.ray_env(temp_dir, ports), umask=processes.UMASK, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    running[:] = [proc]
    started = threading.Event()

    def relay():
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if RAY_BLOCKING in line:
                started.set()

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    while (rc := _wait(proc, 0.5)) is None:
        if stopping and time.monotonic() - stopping[0] > STOP_GRACE_S:
            processes.terminate([proc.pid, *_node_pids(temp_dir)], grace_s=0)
    relaying.join(timeout=5)
    processes.terminate(_node_pids(temp_dir), grace_s=1)
    shutil.rmtree(temp_dir, ignore_errors=True)
    return rc, started.is_set()


def _node_pids(temp_dir: Path) -> list[int]:
    """This node's Ray processes, the renamed ones its raylet left behind included (a stop must not miss them)."""
    return processes.find_pids(f"{temp_dir}/", tag=str(temp_dir), by_open_files=True)


def _wait(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def head() -> int:
    """Start the Ray head on this node (dashboard bound to this node's SLURM address only)."""
    node = Node()
    ip, slot = node.place()
    ports = {flag: _usable(port) for flag, port in derived_ports(node.job_id, slot, head=True).items()}
    temp_dir = node.temp_dir(slot)
    node.folder.mkdir(parents=True, exist_ok=True)
    info = {"node": node.name, "ip": ip, "ports": ports, "temp_dir": str(temp_dir)}
    (node.folder / "head.json.tmp").write_text(json.dumps(info))
    os.replace(node.folder / "head.json.tmp", node.folder / "head.json")
    cmd = node.ray_command(ip, slot, ports) + ["--head", f"--dashboard-host={ip}", "--include-dashboard=true"]
    return run_ray(node, cmd, temp_dir, ports)


def _wait_head(node: Node) -> dict:
    deadline = time.monotonic() + node.head_timeout_s
    path = node.folder / "head.json"
    while not path.exists():
        if time.monotonic() > deadline:
            raise BridgeRayError(f"the head of job {node.job_id} wrote no {path} within {node.head_timeout_s:.0f} s")
        time.sleep(0.1)
    return json.loads(path.read_text())


def worker() -> int:
    """Join this node to the head once its GCS accepts connections."""
    node = Node()
    info = _wait_head(node)
    gcs = (info["ip"], info["ports"]["port"])
    deadline = time.monotonic() + node.head_timeout_s
    while True:
        try:
            socket.create_connection(gcs, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    ip, slot = node.place()
    ports = {flag: _usable(port) for flag, port in derived_ports(node.job_id, slot, head=False).items()}
    cmd = node.ray_command(ip, slot, ports) + [f"--address={gcs[0]}:{gcs[1]}"]
    return run_ray(node, cmd, node.temp_dir(slot), ports)


def _joined(record: ClusterRecord, timeout_s: float) -> tuple[set[str], float]:
    nodes = health.get_json(record, "/api/v0/nodes?detail=1&limit=10000", timeout_s=timeout_s)["data"]["result"]["result"]
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    names = {(n.get("labels") or {}).get(NODE_LABEL) for n in alive} - {None}
    return names, sum(n["resources_total"].get("GPU", 0.0) for n in alive)


def _joined_or_none(record: ClusterRecord, deadline: float) -> tuple[set[str], float]:
    """``_joined``, or nobody yet when a busy head drops the request (the caller's deadline decides).

    A loaded head's dashboard may take many seconds to answer; a request given up after a few
    seconds and sent again would never see an answer, so each may wait until the deadline."""
    try:
        return _joined(record, timeout_s=min(JOINED_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
    except (OSError, ValueError, KeyError):
        return set(), 0.0


def bootstrap_limit_s(join_timeout_s: float) -> float:
    """How long after the allocation the login node waits for ``ready``: the barrier's own deadlines, and slack."""
    return max(join_timeout_s, HEAD_TIMEOUT_S) + join_timeout_s + 120


def _fail(node: Node, detail: str) -> int:
    emit(node.folder, "failed", detail)
    print(f"bridge-ray: {detail}", file=sys.stderr)
    return 1


def barrier() -> int:
    """Wait for the head, then for every node and GPU; write the cluster record. No fixed sleeps."""
    node = Node()
    allocated_at = float(os.environ.get("BRIDGE_RAY_ALLOCATED_AT") or time.time())
    deadline = time.monotonic() + node.head_timeout_s
    info = _wait_head(node)
    record = ClusterRecord(
        name=node.cluster, backend="slurm", gcs_address=f"{info['ip']}:{info['ports']['port']}",
        dashboard_url=f"http://{info['ip']}:{info['ports']['dashboard-port']}",
        token_path=os.environ["RAY_AUTH_TOKEN_PATH"], ports=info["ports"], temp_dir=info["temp_dir"],
        python=sys.executable,
    )
    try:
        health.wait_ready(record, timeout_s=max(1.0, deadline - time.monotonic()))
    except BridgeRayError:
        return _fail(node, f"the Ray head on node {info['node']} did not come up within {node.head_timeout_s:.0f} s"
                           f"{TIMEOUT_HINT}")
    while info["node"] not in _joined_or_none(record, deadline)[0]:  # the head's own raylet registers after its Jobs API
        if any(e["phase"] == "failed" for e in read_events(node.folder)):
            return 1
        if time.monotonic() > deadline:
            return _fail(node, f"the Ray head on node {info['node']} did not register within {node.head_timeout_s:.0f} s"
                               f"{TIMEOUT_HINT}")
        time.sleep(0.2)
    emit(node.folder, "head up", f"{record.gcs_address} on {info['node']}")
    deadline = time.monotonic() + node.join_timeout_s  # the other nodes' turn starts now
    want_gpus, reported = node.gpus * len(node.nodes), 0
    while True:
        if any(e["phase"] == "failed" for e in read_events(node.folder)):
            return 1
        names, gpus = _joined_or_none(record, deadline)
        if len(names) != reported:
            reported = len(names)
            emit(node.folder, "joined", f"{reported}/{len(node.nodes)} nodes")
        if reported == len(node.nodes) and gpus >= want_gpus:
            break
        if time.monotonic() > deadline:
            missing = [n for n in node.nodes if n not in names]
            what = f"node(s) {', '.join(missing)}" if missing else f"GPUs ({gpus:g} of {want_gpus})"
            return _fail(node, f"{what} did not join the Ray cluster within {node.join_timeout_s:.0f} s "
                               f"of the head ({reported}/{len(node.nodes)} nodes joined){TIMEOUT_HINT}")
        time.sleep(0.2)
    end_time = walltime.slurm_end_time(node.job_id)
    record.slurm = {"job_id": str(node.job_id), "nodes": node.nodes, "head_node": info["node"],
                    "gpus_per_node": node.gpus, "allocated_at": allocated_at, "ready_at": time.time(),
                    "end_time": end_time,
                    "log": str(records.cluster_dir(node.cluster) / f"slurm-{node.job_id}.out")}
    records.save(record)
    emit(node.folder, "ready", f"{len(node.nodes)} node(s), {gpus:g} GPU(s): Jobs API {record.dashboard_url}")
    return 0


def main(role: str) -> int:
    """Run ``head``, ``worker`` or ``barrier``; a failure becomes a ``failed`` event the login node shows."""
    try:
        return {"head": head, "worker": worker, "barrier": barrier}[role]()
    except (BridgeRayError, OSError, subprocess.CalledProcessError) as err:
        cluster, job_id = os.environ.get("BRIDGE_RAY_CLUSTER"), os.environ.get("SLURM_JOB_ID")
        detail = f"{role} on node {os.environ.get('SLURMD_NODENAME', '?')} failed: {err}"
        if cluster and job_id:
            emit(job_dir(cluster, job_id), "failed", detail)
        print(f"bridge-ray: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
