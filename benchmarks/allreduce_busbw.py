"""All-reduce bus bandwidth: `bridge-ray doctor`'s measurement beside a plain torch all-reduce (issue 16).

Both sides move the same bytes the same way, so their bus bandwidths should agree: the doctor's ranks
are Ray actors (one per GPU, NCCL) that join a torch.distributed group and time ``ITERS`` all-reduces
of ``--nbytes`` after one warm-up (``bridge_ray.network.collective``); the plain side is this file's
``--worker`` mode under ``torchrun --standalone --nproc_per_node N`` doing exactly that. Bus bandwidth
is nccl-tests' definition for all-reduce: bytes / slowest rank's time per iteration x 2(n-1)/n.

    python benchmarks/allreduce_busbw.py --out O --gpus 8 --pairs 3     # alternating doctor / plain
    python benchmarks/allreduce_busbw.py --out O --cpu --pairs 1        # gloo, 1 rank: the logic only

Every process gets ``NCCL_NVLS_ENABLE=0`` (the GPU hosts lent here need NVLink multicast off); the
doctor side passes it as ``--env``, so the profile it saves says so and later jobs carry it. Results:
``O/results.jsonl`` (one row a side) and ``O/summary.json`` (per-pair ratio doctor / plain).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: bridge_ray from this checkout
from bridge_ray.network.collective import bus_bandwidth_gbps  # noqa: E402  (the doctor's own definition)

from _tools import exe  # noqa: E402

GPU_NBYTES, CPU_NBYTES = 1 << 30, 16 << 20  # the doctor's defaults (bridge_ray.network.doctor)
GPU_ITERS, CPU_ITERS = 20, 5
FIXED_ENV = {"NCCL_NVLS_ENABLE": "0"}


def worker(result_file: str, backend: str, nbytes: int, iters: int) -> None:
    """One torchrun rank: warm-up, ``iters`` timed all-reduces, the slowest rank's time to rank 0's file."""
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cpu"
    if backend == "nccl":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    tensor = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dist.all_reduce(tensor)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor)
    sync()
    seconds = torch.tensor([(time.perf_counter() - start) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if rank == 0:
        Path(result_file).write_text(json.dumps({"seconds": seconds.item(), "world_size": world}))
    dist.destroy_process_group()


def run(cmd: list[str], env: dict, log: Path, timeout_s: float) -> subprocess.CompletedProcess:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    with open(log, "a") as f:
        f.write(done.stdout + done.stderr + f"[rc {done.returncode}]\n")
    return done


def doctor_side(args, env: dict, log: Path) -> dict:
    """``bridge-ray up`` + ``doctor --json --env NCCL_NVLS_ENABLE=0`` + ``down``: the all-reduce row of its report."""
    up = [exe("bridge-ray"), "up", "--name", "busbw"] + (["--num-cpus=2"] if args.cpu else [f"--num-gpus={args.gpus}"])
    if run(up, env, log, 180).returncode:
        return {"error": "bridge-ray up failed (see the log)"}
    try:
        env_flags = [flag for key, value in FIXED_ENV.items() for flag in ("--env", f"{key}={value}")]
        done = run([exe("bridge-ray"), "doctor", "--name", "busbw", "--json", "--timeout", str(args.timeout), *env_flags],
                   env, log, args.timeout + 180)
        report = json.loads(done.stdout[done.stdout.index("{"):]) if "{" in done.stdout else {}
    finally:
        run([exe("bridge-ray"), "down", "--name", "busbw", "--force"], env, log, 120)
    if not report.get("ok"):
        return {"error": f"doctor did not pass (rc {done.returncode}; see the log)"}
    world, nbytes, algbw = report["world_size"], report["nbytes"], report["algbw_gbps"]
    return {"world_size": world, "nbytes": nbytes, "seconds": nbytes / algbw / 1e9, "algbw_gbps": algbw,
            "busbw_gbps": report.get("busbw_gbps"), "transport": report.get("transport"),
            "profile_overrides": report.get("profile", {}).get("overrides")}


def plain_side(args, env: dict, log: Path, run_dir: Path) -> dict:
    """``torchrun --standalone`` of this file's worker: the same tensor, warm-up and iterations."""
    result = run_dir / "plain.json"
    result.unlink(missing_ok=True)
    backend, nbytes, iters = ("gloo", CPU_NBYTES, CPU_ITERS) if args.cpu else ("nccl", GPU_NBYTES, GPU_ITERS)
    ranks = 1 if args.cpu else args.gpus  # the doctor's plan on one node: one gloo rank, or one rank per GPU
    done = run([exe("torchrun"), "--standalone", f"--nproc_per_node={ranks}", __file__, "--worker", str(result),
                backend, str(nbytes), str(iters)], env, log, args.timeout + 120)
    if done.returncode or not result.exists():
        return {"error": f"torchrun failed (rc {done.returncode}; see the log)"}
    measured = json.loads(result.read_text())
    seconds, world = measured["seconds"], measured["world_size"]
    return {"world_size": world, "nbytes": nbytes, "seconds": seconds, "algbw_gbps": nbytes / seconds / 1e9,
            "busbw_gbps": bus_bandwidth_gbps(nbytes, seconds, world)}


def summarize(rows: list[dict]) -> dict:
    """Per pair, doctor / plain by bus bandwidth (algorithm bandwidth for one rank); medians per side."""
    def figure(row: dict) -> float | None:
        return row.get("busbw_gbps") or row.get("algbw_gbps")

    pairs: dict = {}
    for row in rows:
        pairs.setdefault(row["pair"], {})[row["side"]] = row
    ratios = [figure(p["doctor"]) / figure(p["plain"]) for p in pairs.values()
              if figure(p.get("doctor", {})) and figure(p.get("plain", {}))]
    return {"sides": {side: statistics.median(f for r in rows if r["side"] == side and (f := figure(r)))
                      for side in ("doctor", "plain") if any(r["side"] == side and figure(r) for r in rows)},
            "figure": "busbw_gbps" if all(r.get("busbw_gbps") for r in rows) else "algbw_gbps",
            "ratio_doctor_over_plain_per_pair": ratios, "ratio_median": statistics.median(ratios) if ratios else None}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=lambda p: Path(p).absolute())
    parser.add_argument("--gpus", type=int, default=0, help="GPUs on this host (default: nvidia-smi's count)")
    parser.add_argument("--cpu", action="store_true", help="gloo on one CPU rank: checks the script, not a network")
    parser.add_argument("--pairs", type=int, default=3, help="doctor/plain pairs, the first side alternating")
    parser.add_argument("--timeout", type=float, default=120, help="seconds for each side's all-reduce")
    args = parser.parse_args()
    if not args.cpu and not args.gpus:
        args.gpus = len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines())
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **FIXED_ENV, PYTHONUNBUFFERED="1", BRIDGE_RAY_HOME=str(args.out / "home"))
    rows = []
    for pair in range(args.pairs):
        for side in (("doctor", "plain") if pair % 2 == 0 else ("plain", "doctor")):
            run_dir = args.out / f"pair-{pair}-{side}"
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / "run.log"
            measured = doctor_side(args, env, log) if side == "doctor" else plain_side(args, env, log, run_dir)
            rows.append(dict(measured, side=side, pair=pair))
            print(json.dumps(rows[-1]), flush=True)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit,
              "gpus": args.gpus, "env": FIXED_ENV, **summarize(rows), "runs": rows}
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("sides", "figure", "ratio_doctor_over_plain_per_pair", "ratio_median")}))
    sys.exit(0 if all("error" not in r for r in rows) else 1)


if __name__ == "__main__":
    main()
