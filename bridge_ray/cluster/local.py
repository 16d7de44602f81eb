"""The local backend: a Ray head on this machine, token auth on, loopback only."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from bridge_ray.cluster import health, processes
from bridge_ray.cluster.auth import new_token_file
from bridge_ray.errors import BridgeRayError, PortInUse
from bridge_ray.records import ClusterRecord, cluster_dir

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


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def choose_ports(requested: dict[str, int | None]) -> dict[str, int]:
    """Free ports for every flag in PORT_FLAGS; requested ones are checked, not replaced.

    Raises:
        PortInUse: a requested port is taken.
    """
    ports: dict[str, int] = {}
    held = []
    for flag in PORT_FLAGS:
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


def start(name: str, num_cpus: int | None = None, num_gpus: int | None = None,
          ports: dict[str, int | None] | None = None, timeout_s: float = 60.0) -> ClusterRecord:
    """Start a Ray head on this machine and return its record (not yet saved).

    The head binds the dashboard/Jobs API to 127.0.0.1, runs with token auth, and uses
    its own temp dir and free ports, so several clusters can live side by side.

    Raises:
        PortInUse: a requested port is taken.
        BridgeRayError: ``ray start`` failed or the head did not become healthy in time.
    """
    folder = cluster_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    token_path = new_token_file(folder / "auth_token")
    chosen = choose_ports(ports or {})
    # Unix socket paths must stay under ~107 bytes, so the temp dir is short and unique.
    # Private (0700): Ray's logs under it can hold the job's runtime_env, secrets included.
    temp_root = Path("/tmp") / f"bridge-ray-{os.getuid()}"
    temp_root.mkdir(mode=0o700, exist_ok=True)
    temp_root.chmod(0o700)
    temp_dir = temp_root / f"{name[:20]}-{secrets.token_hex(3)}"
    temp_dir.mkdir(mode=0o700)
    cmd = [ray_executable(), "start", "--head", f"--node-ip-address={LOOPBACK}",
           f"--dashboard-host={LOOPBACK}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    cmd += [f"--{flag}={port}" for flag, port in chosen.items()]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    # No 30 s drain on SIGTERM: `down` tears the whole cluster down, jobs included.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path),
               RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    log_path = folder / "ray-start.log"
    with open(log_path, "w") as log:
        result = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    record = ClusterRecord(
        name=name, backend="local", gcs_address=f"{LOOPBACK}:{chosen['port']}",
        dashboard_url=f"http://{LOOPBACK}:{chosen['dashboard-port']}", token_path=str(token_path),
        ports=chosen, temp_dir=str(temp_dir), python=sys.executable,
    )
    if result.returncode != 0:
        stop(record)
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise BridgeRayError(f"`ray start` failed (exit {result.returncode}): {tail[0]} — full log: {log_path}")
    try:
        health.wait_ready(record, timeout_s=timeout_s)
    except BridgeRayError:
        stop(record)
        raise
    record.pids = processes.find_pids(str(temp_dir))
    return record


def stop(record: ClusterRecord) -> list[int]:
    """Stop every process of this cluster (and only this one); remove its temp dir."""
    if not record.temp_dir:
        return []
    pids = processes.terminate(processes.find_pids(record.temp_dir), grace_s=3.0)
    shutil.rmtree(record.temp_dir, ignore_errors=True)
    return pids
