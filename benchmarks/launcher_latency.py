"""Launcher latency: bridge-ray vs plain Ray CLI, the same steps in one run.

Steps, each timed from the moment the command starts:
  up      bridge-ray up            vs  ray start --head (+ poll until the Jobs API answers)
  running bridge-ray submit        vs  ray job submit --no-wait, until the job is RUNNING
  done    the same submit          until SUCCEEDED (a trivial job)
  down    bridge-ray down          vs  `ray stop` (with --ray-stop; else the head's processes by temp dir)

Plain Ray's own teardown, `ray stop`, kills every Ray of the user on the machine: pass
--ray-stop only on a machine running nothing else.

Both sides run with token auth on and the dashboard on 127.0.0.1. Reps alternate
bridge-ray / plain so machine noise hits both. Prints JSON (medians, ratios).

    .venv/bin/python benchmarks/launcher_latency.py --reps 5 > /tmp/latency.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray.job_submission import JobSubmissionClient

from bridge_ray.cluster import records
from bridge_ray.cluster import local, processes

BIN = Path(sys.executable).parent
TRIVIAL = "print('trivial job done')\n"


def _run(cmd: list[str], env: dict) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_status(client: JobSubmissionClient, job_id: str, wanted: tuple[str, ...], t0: float) -> float:
    while True:
        state = client.get_job_status(job_id).value
        if state in wanted or state in ("FAILED", "STOPPED", "SUCCEEDED"):
            return time.perf_counter() - t0
        time.sleep(0.02)


def bridge_cycle(project: Path, env: dict) -> dict:
    br = str(BIN / "bridge-ray")
    t = time.perf_counter()
    _run([br, "up", "--name", "bench", "--num-cpus", "2"], env)
    up = time.perf_counter() - t
    record = records.load("bench")
    client = JobSubmissionClient(record.dashboard_url,
                                 headers={"Authorization": "Bearer " + Path(record.token_path).read_text().strip()})
    t = time.perf_counter()
    out = subprocess.run([br, "submit", str(project / "trivial.py"), "--name", "bench"], env=env,
                         check=True, capture_output=True, text=True)
    job_id = out.stdout.split()[1]
    running = _wait_status(client, job_id, ("RUNNING",), t)
    done = _wait_status(client, job_id, ("SUCCEEDED",), t)
    t = time.perf_counter()
    _run([br, "down", "--name", "bench", "--force"], env)
    return {"up": up, "running": running, "done": done, "down": time.perf_counter() - t}


def plain_cycle(project: Path, env: dict, token_path: Path, ray_stop: bool) -> dict:
    ports = local.choose_ports({})
    temp_dir = Path(tempfile.mkdtemp(prefix="plain-", dir=f"/tmp/bridge-ray-{os.getuid()}"))
    env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    t = time.perf_counter()
    _run([str(BIN / "ray"), "start", "--head", "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
          "--disable-usage-stats"] + [f"--{k}={v}" for k, v in ports.items()], env)
    headers = {"Authorization": "Bearer " + token_path.read_text().strip()}
    while True:  # plain `ray start` returns before the Jobs API is up: poll, as a user's script must
        try:
            client = JobSubmissionClient(url, headers=headers)
            client.list_jobs()
            break
        except Exception:
            time.sleep(0.05)
    up = time.perf_counter() - t
    t = time.perf_counter()
    out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", url, "--no-wait", "--working-dir",
                          str(project), "--", "python", "trivial.py"], env=env, check=True, capture_output=True,
                         text=True)
    job_id = next(line.split("'")[1] for line in out.stdout.splitlines() if "submitted successfully" in line)
    running = _wait_status(client, job_id, ("RUNNING",), t)
    done = _wait_status(client, job_id, ("SUCCEEDED",), t)
    t = time.perf_counter()
    if ray_stop:
        _run([str(BIN / "ray"), "stop"], env)
    else:
        processes.terminate(processes.find_pids(str(temp_dir), by_open_files=True))
    return {"up": up, "running": running, "done": done, "down": time.perf_counter() - t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--ray-stop", action="store_true", help="baseline teardown with `ray stop` (kills every Ray here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        project = tmp / "proj"
        project.mkdir()
        (project / "pyproject.toml").write_text("")
        (project / "trivial.py").write_text(TRIVIAL)
        token = tmp / "plain_token"
        token.write_text(os.urandom(32).hex())
        env = dict(os.environ, BRIDGE_RAY_HOME=str(tmp / "home"), RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        os.environ["BRIDGE_RAY_HOME"] = env["BRIDGE_RAY_HOME"]
        runs = {"bridge_ray": [], "plain_ray": []}
        for _ in range(args.reps):
            runs["bridge_ray"].append(bridge_cycle(project, env))
            runs["plain_ray"].append(plain_cycle(project, env, token, args.ray_stop))
    med = {side: {k: statistics.median(r[k] for r in reps) for k in reps[0]} for side, reps in runs.items()}
    ratio = {k: med["bridge_ray"][k] / med["plain_ray"][k] for k in med["bridge_ray"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores, no GPU", "date": time.strftime("%Y-%m-%d"),
                      "commit": commit, "reps": args.reps, "baseline_down": "ray stop" if args.ray_stop else "terminate by temp dir", "median_s": med, "ratio_bridge_over_plain": ratio,
                      "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
