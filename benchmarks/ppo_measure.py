"""How ``ppo_throughput.py`` measures a side: its output stamped on arrival, verl's step lines parsed into
steady-state numbers, GPU memory, where the start-up time goes, and what differs between the sides'
processes (threads, CPU affinity, env, CPU use over the steady state)."""
from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: where a side's commands run unless told otherwise
STEP_RE = re.compile(r"step:(\d+) - (.*)")
KV_RE = re.compile(r"([\w/@()\-]+):([-+\d.e]+|nan|inf)(?= - |$)")
LOG_CAP_BYTES = 12 * 2**20  # past this a log keeps only step and error lines (the GPU host returns files <= 16 MiB)
KEEP_RE = re.compile(r"step:\d+ - |Error|error|Traceback|bridge-ray|benchmark:")


# ---- running and parsing ------------------------------------------------------------------------


def stamped_run(cmd: list[str], log: Path, env: dict, timeout_s: float, cwd: Path = REPO,
                on_line=None) -> tuple[int, list[tuple[float, str]]]:
    """Run ``cmd`` in its own process group, writing ``[t=...] line`` to ``log`` as lines arrive.

    ``on_line(t, line)`` sees every line as it arrives (snapshots, stopping a job mid-run).
    Past ``timeout_s`` the whole group is killed (SIGTERM, then SIGKILL), even when it prints nothing.
    """
    t0, lines, q = time.time(), [], queue.Queue()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout] + [q.put(None)], daemon=True).start()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        while True:
            left = timeout_s - (time.time() - t0)
            try:
                line = q.get(timeout=max(0.1, left)) if left > 0 else None
            except queue.Empty:
                line = None
            if line is None:  # output closed (the process is ending) or time is up
                if left > 0:
                    try:
                        proc.wait(timeout=max(0.1, timeout_s - (time.time() - t0)))
                    except subprocess.TimeoutExpired:
                        pass
                break
            now = time.time() - t0
            lines.append((now, line.rstrip("\n")))
            if on_line is not None:
                on_line(now, line)
            if f.tell() < LOG_CAP_BYTES or KEEP_RE.search(line):
                f.write(f"[t={now:8.2f}] {line}")
                f.flush()
        if proc.poll() is None:
            f.write(f"[t={time.time() - t0:8.2f}] benchmark: timeout {timeout_s:.0f}s, killing the process group\n")
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return proc.wait(), lines


def parse_steps(lines: list[tuple[float, str]]) -> list[dict]:
    """verl's per-step console metrics, first occurrence of each step (Ray may echo a line twice)."""
    steps = {}
    for t, line in lines:
        m = STEP_RE.search(line)
        if not m or "timing_s/step" not in line or int(m.group(1)) in steps:
            continue
        metrics = {k: float(v) for k, v in KV_RE.findall(m.group(2))}
        steps[int(m.group(1))] = {"step": int(m.group(1)), "t": t, **metrics}
    return [steps[k] for k in sorted(steps)]


def summarize(steps: list[dict], cfg) -> dict:
    """Steady-state numbers from the parsed steps (``cfg``: the run's ``PPOConfig``): step 2 on, without
    the steps that saved a checkpoint (verl's ``timing_s/save_checkpoint``; the final step always saves),
    unless nothing else is left."""
    if not steps:
        return {"num_steps": 0}
    steady = [s for s in steps[1:] if "timing_s/save_checkpoint" not in s] or steps[1:] or steps
    med = lambda key: statistics.median(s[key] for s in steady) if all(key in s for s in steady) else None
    gen_ms = med("timing_per_token_ms/gen")
    actor_ms = med("timing_per_token_ms/update_actor")
    return {
        "num_steps": len(steps), "steady_steps": [s["step"] for s in steady],
        "first_step_at_s": round(steps[0]["t"], 1),
        "step_time_s": med("timing_s/step"), "gen_time_s": med("timing_s/gen"),
        "update_actor_s": med("timing_s/update_actor"), "update_critic_s": med("timing_s/update_critic"),
        "train_throughput_tok_s_gpu": med("perf/throughput"),
        "rollout_throughput_tok_s": 1000 / gen_ms if gen_ms else None,
        "actor_update_tok_s": 1000 / actor_ms if actor_ms else None,
        "response_length_mean": med("response_length/mean"),
        "score_mean": med("critic/score/mean"),
        "critic_vf_loss": [s.get("critic/vf_loss") for s in steps] if "critic/vf_loss" in steps[-1] else None,
        "critic_vpred_mean": [s.get("critic/vpred_mean") for s in steps] if "critic/vpred_mean" in steps[-1] else None,
        "gen_timing_s": med("timing_s/gen"), "old_log_prob_s": med("timing_s/old_log_prob"),
        "ref_s": med("timing_s/ref"), "values_s": med("timing_s/values"), "adv_s": med("timing_s/adv"),
        "update_weights_s": med("timing_s/update_weights"),
        "gpus": cfg.trainer.nnodes * cfg.trainer.gpus_per_node,
    }


class GpuMonitor:
    """``nvidia-smi`` polled every 0.5 s in the background: peak memory and mean utilisation."""

    def __init__(self, path: Path):
        self.path, self.proc = path, None
        if shutil.which("nvidia-smi"):
            with open(path, "w") as sink:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu",
                                              "--format=csv,noheader,nounits", "-lms", "500"],
                                             stdout=sink, stderr=subprocess.DEVNULL)

    def stop(self) -> dict:
        if self.proc is None:
            return {}
        self.proc.terminate()
        self.proc.wait()
        rows = [r.split(",") for r in self.path.read_text().splitlines() if r.count(",") == 1]
        mem = [float(m) for m, _ in rows]
        busy = [float(u) for _, u in rows if float(u) > 0]
        return {"peak_gpu_mem_mib": max(mem, default=None), "mean_gpu_util_busy_pct": statistics.mean(busy) if busy else None}


# ---- what differs between the sides: processes, threads, env; where the start-up time goes --------

SNAPSHOT_ENV_RE = re.compile(r"^(OMP_|MKL_|OPENBLAS_|CUDA_|NCCL_|VLLM_|TOKENIZERS_|PYTORCH_|TORCH|VERL_|HF_|"
                             r"TRANSFORMERS_|PYTHON|LD_PRELOAD|MALLOC|GLOO_|RAY_)")
PHASES = {  # first line matching each marker, in either side's log
    "driver_or_ray_init": r"ray init kwargs|\[bridge-ray\] starting at step|\[bridge-ray\] resumed",
    "driver_ready": r"\[bridge-ray\] driver ready",  # bridge-ray's driver, its own clock by phase in the line
    "task_runner": r"TaskRunner",
    "vllm_init": r"(?i)initializing a v1 llm engine|init engine|vllm.*version",
    "vllm_weights_loaded": r"(?i)loading weights took|model loading took",
    "vllm_kv_cache": r"(?i)kv cache",
    "first_step": r"step:1 - ",
}


def snapshot_processes(path: Path) -> None:
    """Every Ray/Python process's title, thread count, CPU affinity and run-relevant env (secrets masked)."""
    from bridge_ray.jobs.runtime_env import is_secret

    rows = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            title = b" ".join(argv).decode(errors="replace").strip()[:160]
            if not re.search(r"ray::|python|raylet|gcs_server|vllm", title):
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
            rows.append({"pid": int(pid), "title": title,
                         "threads": int(re.search(r"Threads:\s+(\d+)", status).group(1)),
                         "cpus": len(os.sched_getaffinity(int(pid))),
                         "env": {k: ("***" if is_secret(k) else v) for k, v in sorted(environ.items())
                                 if SNAPSHOT_ENV_RE.match(k)}})
        except (OSError, AttributeError):
            continue
    path.write_text(json.dumps(rows, indent=1))


def _role(title: str) -> str:
    """A process's role across runs: its title without pids, addresses, paths and numbers."""
    head = title.split(" --", 1)[0]
    return re.sub(r"\d+", "N", head.split("/")[-1])[:70]


def procs_diff(plain: list[dict], bridge: list[dict]) -> list[str]:
    """Roles whose env (the snapshot's keys) or thread counts differ between the two sides."""
    by_role = lambda rows: {_role(r["title"]): r for r in rows}  # noqa: E731
    a, b = by_role(plain), by_role(bridge)
    out = [f"only plain: {sorted(set(a) - set(b))}", f"only bridge-ray: {sorted(set(b) - set(a))}"]
    for role in sorted(set(a) & set(b)):
        ea, eb = a[role]["env"], b[role]["env"]
        diff = {k: (ea.get(k), eb.get(k)) for k in sorted(set(ea) | set(eb)) if ea.get(k) != eb.get(k)
                and not k.startswith(("RAY_JOB", "RAY_RAYLET", "RAY_NODE", "PYTHONPATH"))}
        out.append(f"{role}: threads {a[role]['threads']} vs {b[role]['threads']}, cpus {a[role]['cpus']} vs "
                   f"{b[role]['cpus']}; env differs: {diff}")
    return out


DRIVER_LAP = re.compile(r"([a-z][a-z +]*?) ([\d.]+) s")


def phases(lines: list[tuple[float, str]]) -> dict:
    """Seconds from the side's start to the first line of each start-up phase (``PHASES``); on the bridge-ray
    side also ``driver_s``, the driver's own seconds by phase (``[bridge-ray] driver ready ... (connect 0.3 s, ...)``)."""
    found = {}
    for name, pattern in PHASES.items():
        regex = re.compile(pattern)
        found[name] = next((round(t, 1) for t, line in lines if regex.search(line)), None)
    ready = next((line for _, line in lines if "[bridge-ray] driver ready" in line), None)
    if ready and "(" in ready:
        found["driver_s"] = {name.strip(): float(s) for name, s in DRIVER_LAP.findall(ready.rsplit("(", 1)[1])}
    return found


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (title, user+system CPU seconds so far) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            found[int(pid)] = (title.strip(), (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, ValueError, IndexError):
            continue
    return found


def cpu_between(before: dict, after: dict, seconds: float) -> list[dict]:
    """Processes by CPU use between two ``cpu_seconds()`` samples (cores busy on average), busiest first."""
    rows = [{"pid": pid, "title": title, "cores": round((used - before[pid][1]) / seconds, 3)}
            for pid, (title, used) in after.items() if pid in before]
    return sorted((r for r in rows if r["cores"] > 0.005), key=lambda r: -r["cores"])


class StepWatch:
    """``on_line`` hook: a process snapshot at the first step, each process's CPU use from step 2 to
    step ``cpu_until`` (the steady state), and optionally ``bridge-ray stop`` after step K."""

    def __init__(self, snapshot: Path | None, stop_after: int | None = None, stop_cmd: list[str] | None = None,
                 env: dict | None = None, cpu_until: int | None = None):
        self.snapshot, self.stop_after, self.stop_cmd, self.env = snapshot, stop_after, stop_cmd, env
        self.cpu_until, self.cpu_start, self.stopped_at = cpu_until, None, None

    def _cpu(self, step: int, t: float) -> None:
        if step == 2 and self.cpu_start is None:
            self.cpu_start = (t, cpu_seconds())
        elif self.cpu_start is not None and self.cpu_until and step >= self.cpu_until and self.snapshot_cpu:
            t0, before = self.cpu_start
            path = self.snapshot_cpu
            path.write_text(json.dumps(cpu_between(before, cpu_seconds(), t - t0), indent=1))
            self.snapshot_cpu = None

    def __call__(self, t: float, line: str) -> None:
        m = STEP_RE.search(line)
        if not m or "timing_s/step" not in line:
            return
        if self.snapshot is not None:
            self.snapshot_cpu = self.snapshot.with_name(self.snapshot.name.replace("_procs", "_cpu"))
            snapshot_processes(self.snapshot)
            self.snapshot = None
        self._cpu(int(m.group(1)), t)
        if self.stop_after and self.stopped_at is None and int(m.group(1)) >= self.stop_after:
            self.stopped_at = int(m.group(1))
            subprocess.run(self.stop_cmd, env=self.env, cwd=REPO, timeout=240, check=False)  # waits for the end


def gpu_processes_gone(limit_s: float) -> float | None:
    """Seconds until no process holds a GPU (nvidia-smi's compute apps), or None past ``limit_s``:
    what a resubmission after ``bridge-ray stop`` would otherwise find still holding the card."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False) if shutil.which("nvidia-smi") else None
        if out is None or (out.returncode == 0 and not out.stdout.strip()):
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    return None
