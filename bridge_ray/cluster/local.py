"""The local backend: a Ray head on this machine, token auth on, loopback only.

What listens: every port Ray opens binds 127.0.0.1 (see ``ray_env``); token auth guards all
of them but Ray's two Prometheus endpoints (dashboard and autoscaler metrics), which serve
read-only process metrics on loopback. Nothing listens on another address.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from bridge_ray.cluster import health, processes
from bridge_ray.cluster import records
from bridge_ray.cluster.auth import new_token_file
from bridge_ray.cluster.records import ClusterRecord, cluster_dir
from bridge_ray.errors import BridgeRayError, ConfigError, PortInUse

LOOPBACK = "127.0.0.1"
# Ray's flags for every port a head opens; each gets a free port unless the user chose one.
PORT_FLAGS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)
RAY_START_TIMEOUT = "timed out during startup"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps 127.0.0.1 as the node address
START_ATTEMPTS = 3
# Ports Ray takes from the environment only (fixed defaults 44227/44217 would collide between clusters).
METRICS_PORT_ENV = {"dashboard-metrics-port": "DASHBOARD_METRIC_PORT", "autoscaler-metrics-port": "AUTOSCALER_METRIC_PORT"}


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def choose_ports(requested: dict[str, int | None], flags: tuple[str, ...] = PORT_FLAGS) -> dict[str, int]:
    """Free ports for every flag in ``flags``; requested ones are checked, not replaced.

    Raises:
        PortInUse: a requested port is taken.
    """
    ports: dict[str, int] = {}
    held = []
    asked = [(flag, requested[flag]) for flag in flags if requested.get(flag)]
    for i, (flag, wanted) in enumerate(asked):
        twice = [other for other, port in asked[:i] if port == wanted]
        if twice:
            raise ConfigError(f"--{twice[0]} and --{flag} are both {wanted}: each needs a port of its own; leave one "
                              "out and bridge-ray picks a free one")
    for flag in flags:
        wanted = requested.get(flag)
        if wanted:
            if _port_taken(wanted):
                raise PortInUse(
                    f"port {wanted} (--{flag}) is already in use on this machine: "
                    f"choose another with --{flag} PORT, or leave it out and bridge-ray picks a free one"
                )
            ports[flag] = wanted
            continue
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        held.append(s)
        ports[flag] = s.getsockname()[1]
    for s in held:
        s.close()
    return ports


def ray_executable() -> str:
    """The ``ray`` CLI next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


OWNER_FILE = ".bridge-ray-cluster"  # in each temp dir `up` makes: the cluster folder it was made for


def ray_env(tag: str, temp_dir: str, token_path: Path, ports: dict[str, int]) -> dict[str, str]:
    """The environment of the head's processes (and so of every job they start).

    - Ray replaces a loopback ``--node-ip-address`` with the machine's address, and then binds
      its gRPC servers (GCS, raylet, object manager, agents, client server) to every interface,
      unless it runs as a single-machine cluster: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps
      127.0.0.1 as the node's address (``ray/_private/services.py: get_node_ip_address``), and
      with it every listener on loopback. It also refuses other nodes joining: a local cluster
      is one machine.
    - ``RAY_enable_metrics_collection=0``: no per-node Prometheus exporter (it serves without auth).
    - Dashboard and autoscaler metrics get free ports, not Ray's fixed ones.
    - Token auth from the cluster's token file; no 30 s drain on SIGTERM (``down`` stops it all).
    - Temporary files (verl's, vLLM's, multiprocessing's) under the temp dir, which ``down`` removes
      (``processes.temp_env``).
    """
    metrics = {env: str(ports[name]) for name, env in METRICS_PORT_ENV.items()}
    return processes.child_env(
        tag, **{processes.TEMP_DIR_ENV: temp_dir}, **metrics, **processes.temp_env(temp_dir), RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        **{SINGLE_MACHINE_ENV: "0"}, RAY_enable_metrics_collection="0")


def attach_here() -> None:
    """Let this process's Ray driver reach a local head, which listens on 127.0.0.1 only.

    Ray replaces a loopback address with the machine's when it connects (``resolve_ip_for_localhost``)
    unless it runs as a one-machine cluster, as the head's processes do (``ray_env``).
    """
    import ray._private.ray_constants as ray_constants

    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; this process may have imported Ray already


@contextlib.contextmanager
def handling_signals(handler, *signums: int) -> Iterator[None]:
    """Handle ``signums`` with ``handler`` (a function, or ``signal.SIG_IGN``) inside the block, then restore
    the handlers; a no-op outside the main thread, where Python cannot set them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, previous in old.items():
            if previous is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signum, previous)


def visible_gpus(root: str | Path = "/", environ: dict[str, str] | None = None) -> int | None:
    """NVIDIA GPUs a head started here could use: those the driver lists (``/proc/driver/nvidia/gpus``, else
    ``nvidia-smi -L``), no more than ``CUDA_VISIBLE_DEVICES`` names when it is set; None when ``nvidia-smi``
    is there but does not answer (a broken driver: unknown, not none)."""
    environ = os.environ if environ is None else environ
    listed = Path(root, "proc/driver/nvidia/gpus")
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if listed.is_dir():
        count = sum(1 for _ in listed.iterdir())
    elif smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        count = sum(line.startswith("GPU ") for line in out.splitlines())
    else:
        count = 0
    names = environ.get("CUDA_VISIBLE_DEVICES")
    if names is not None:
        count = min(count, len([n for n in names.split(",") if n.strip()]))
    return count


def missing_gpus_warning(asked: int) -> str | None:
    """Ray offers the GPUs ``--num-gpus`` names whether or not they exist: what to tell the user before the
    head starts when this machine shows fewer than ``asked`` (None: enough, or the count is unknown)."""
    found = visible_gpus()
    if found is None or asked <= found:
        return None
    return (f"--num-gpus {asked}, but this machine shows {found} NVIDIA GPU(s) (its driver's list, within "
            "CUDA_VISIBLE_DEVICES): Ray will offer GPUs that are not there and GPU jobs will fail when they start; "
            "leave --num-gpus out to offer what the machine has")


def start(name: str, num_cpus: int | None = None, num_gpus: int | None = None,
          ports: dict[str, int | None] | None = None, timeout_s: float = 300.0) -> ClusterRecord:
    """Start a Ray head on this machine and return its record (not yet saved).

    Every port binds 127.0.0.1, auth is on, and the head uses its own private temp dir and free
    ports, so several clusters can live side by side. Whatever ends it early (an error, Ctrl-C)
    first stops every process it started and removes their temp dirs.

    Raises:
        PortInUse: a requested port is taken.
        BridgeRayError: ``ray start`` failed or the head did not become healthy in time.
    """
    folder = records.writable_dir(cluster_dir(name))
    folder.chmod(0o700)  # its token, and the jobs' secrets files
    token_path = new_token_file(folder / "auth_token")
    chosen = choose_ports(ports or {})
    metrics = choose_ports({}, tuple(METRICS_PORT_ENV))
    temp_dirs: list[Path] = []
    try:
        return _start_head(name, folder, token_path, chosen, metrics, num_cpus, num_gpus, timeout_s, temp_dirs)
    except BaseException:
        with handling_signals(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut it short
            _stop_started(name, temp_dirs)
        raise


def _stop_started(name: str, temp_dirs: list[Path]) -> None:
    """Stop every process a ``start`` of cluster ``name`` began (found by its tag and its temp dirs, as
    ``stop`` finds them) and remove those temp dirs: a start that did not finish leaves nothing running."""
    tag = str(cluster_dir(name))

    def find() -> list[int]:
        found = set(processes.find_pids(None, tag=tag))
        for temp_dir in temp_dirs:
            found.update(processes.find_pids(str(temp_dir), by_open_files=True))
        return sorted(found)

    processes.stop_all(find, grace_s=3.0)
    for temp_dir in temp_dirs:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_head(name: str, folder: Path, token_path: Path, chosen: dict[str, int], metrics: dict[str, int],
                num_cpus: int | None, num_gpus: int | None, timeout_s: float, temp_dirs: list[Path]) -> ClusterRecord:
    """``start``'s attempts; each temp dir it makes is added to ``temp_dirs`` before Ray uses it."""
    for attempt in range(1, START_ATTEMPTS + 1):
        # Unix socket paths must stay under ~107 bytes, so the temp dir is short and unique.
        temp_dir = processes.private_root() / f"{name[:20]}-{secrets.token_hex(3)}"
        temp_dirs.append(temp_dir)
        temp_dir.mkdir(mode=0o700)
        (temp_dir / OWNER_FILE).write_text(str(folder))
        record, result, log_path = _ray_start(name, folder, token_path, temp_dir, chosen, metrics, num_cpus, num_gpus)
        tail = (log_path.read_text().strip().splitlines() or ["(no output)"])[-1]
        # `ray start` gives the raylet a fixed 30 s to register and then gives up, leaving every process
        # running: on a busy machine, wait for the registration itself instead of failing.
        if result.returncode != 0 and RAY_START_TIMEOUT not in tail:
            stop(record)
            raise BridgeRayError(f"`ray start` failed (exit {result.returncode}): {tail} — full log: {log_path}")
        try:
            health.wait_ready(record, timeout_s=timeout_s)
            if _registered(record, timeout_s):
                break
        except BridgeRayError:
            pass
        # The raylet died: it gives the dashboard agent a fixed few seconds to report its ports,
        # which a busy machine can miss. Its logs are kept; the next attempt starts afresh.
        logs = _keep_logs(record, folder)
        stop(record)
        if attempt == START_ATTEMPTS:
            raise BridgeRayError(f"the Ray head of cluster {name!r} did not start ({START_ATTEMPTS} attempts; the "
                                 f"machine may be overloaded): Ray's logs are kept in {logs}")
    processes.make_private(Path(record.temp_dir), depth=4, files=True)
    record.pids = pids(record)
    return record


def _registered(record: ClusterRecord, timeout_s: float) -> bool:
    """Wait until the head's node is ALIVE (True), or its raylet has died (False).

    Raises:
        BridgeRayError: neither happened within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not health.nodes_alive(record):
        if not any(b"/raylet/raylet" in processes.cmdline(p) for p in pids(record)):
            return False
        if time.monotonic() > deadline:
            raise BridgeRayError(f"the Ray node of cluster {record.name!r} did not register within {timeout_s:.0f} s")
        time.sleep(0.2)
    return True


def _keep_logs(record: ClusterRecord, folder: Path) -> Path:
    """Copy the head's Ray logs out of its temp dir (which ``stop`` removes) into the cluster's folder."""
    source = Path(record.temp_dir) / "session_latest" / "logs"
    kept = folder / "failed-start-logs"
    shutil.rmtree(kept, ignore_errors=True)
    if source.is_dir():
        shutil.copytree(source, kept, ignore_dangling_symlinks=True)
    return kept


def _ray_start(name: str, folder: Path, token_path: Path, temp_dir: Path, chosen: dict[str, int],
               metrics: dict[str, int], num_cpus: int | None,
               num_gpus: int | None) -> tuple[ClusterRecord, subprocess.CompletedProcess, Path]:
    cmd = [ray_executable(), "start", "--head", f"--node-ip-address={LOOPBACK}",
           f"--dashboard-host={LOOPBACK}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    cmd += [f"--{flag}={port}" for flag, port in chosen.items()]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    log_path = folder / "ray-start.log"
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, env=ray_env(str(folder), str(temp_dir), token_path, metrics), stdout=log,
                                stderr=subprocess.STDOUT, umask=processes.UMASK)
    record = ClusterRecord(
        name=name, backend="local", gcs_address=f"{LOOPBACK}:{chosen['port']}",
        dashboard_url=f"http://{LOOPBACK}:{chosen['dashboard-port']}", token_path=str(token_path),
        ports={**chosen, **metrics}, temp_dir=str(temp_dir), python=sys.executable,
    )
    return record, result, log_path


def pids(record: ClusterRecord, by_open_files: bool = False) -> list[int]:
    """Every live process of this local cluster (daemons, agents, job drivers and workers);
    ``by_open_files`` also finds the renamed ones its raylet left behind (``processes.find_pids``)."""
    return processes.find_pids(record.temp_dir, tag=str(cluster_dir(record.name)), by_open_files=by_open_files)


def stop(record: ClusterRecord) -> list[int]:
    """Stop every process of this cluster (and only this one); remove its temp dir, if it is one."""
    stopped = processes.stop_all(lambda: pids(record, by_open_files=True), grace_s=3.0)
    if record.temp_dir and _is_its_temp_dir(Path(record.temp_dir), record.name):
        shutil.rmtree(record.temp_dir, ignore_errors=True)
    return stopped


def _is_its_temp_dir(path: Path, name: str) -> bool:
    """Whether ``path`` is a temp dir ``up`` made for cluster ``name`` (its owner file names the cluster's folder),
    or Ray's (a ``session_latest`` link, from before owner files): a record edited to name another folder of the
    same pattern must not get that folder deleted."""
    try:
        return Path((path / OWNER_FILE).read_text()).resolve() == cluster_dir(name).resolve()
    except OSError:
        return (path / "session_latest").is_symlink()
