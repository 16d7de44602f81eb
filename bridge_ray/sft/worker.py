"""What runs in each Ray Train worker: verl's SFTTrainer on the worker's process group.

Ray Train has already created the process group (gloo on CPU, nccl on GPU) and set
RANK/LOCAL_RANK/WORLD_SIZE; verl's TrainingWorker uses it as is. A ``StepHook`` wraps the
trainer's training client to record each step (rank 0: one log line and a ``steps.jsonl`` row)
and reports the final metrics to Ray Train once, at the end.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

KILL_AT_STEP_ENV = "BRIDGE_RAY_TEST_KILL_AT_STEP"
STEPS_FILE = "steps.jsonl"
KILL_MARKER = ".test_kill_done"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def thread_usage() -> tuple[float, int, int]:
    """The calling thread's CPU seconds, voluntary and involuntary context switches (Linux).

    Beside the process's CPU time (all its threads: Ray's, NCCL's, the loader's) these tell a
    step that was slower because the training thread did more work from one that waited for a
    core (involuntary switches: another runnable thread or process took it) or for the GPU."""
    usage = resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))
    return usage.ru_utime + usage.ru_stime, usage.ru_nvcsw, usage.ru_nivcsw


class StepClock:
    """Time between laps by the process's own clocks: wall, process CPU, this thread's CPU and switches.

    ``lap()`` returns the figures of a step row since the last lap (or since construction);
    bridge-ray's step rows and the benchmark's plain-torchrun side both take theirs from here."""

    def __init__(self):
        self.last = self._now()

    @staticmethod
    def _now() -> tuple[float, float, tuple[float, int, int]]:
        return time.perf_counter(), time.process_time(), thread_usage()

    def lap(self) -> dict:
        now = self._now()
        (wall, cpu, thread), (wall0, cpu0, thread0) = now, self.last
        self.last = now
        thread_cpu, voluntary, involuntary = (a - b for a, b in zip(thread, thread0))
        return {"step_time_s": wall - wall0, "cpu_time_s": cpu - cpu0, "thread_cpu_time_s": thread_cpu,
                "thread_switches": {"voluntary": voluntary, "involuntary": involuntary}}


class StepHook:
    """Per-step records, walltime stops and a test-only kill switch, around verl's training client.

    verl's ``SFTTrainer.fit`` calls ``training_client.train_batch`` once per step on every rank,
    then ``infer_batch`` for validation. The hook wraps both on this trainer instance: each
    step's metrics are held until validation is done and written when the next step starts
    (or by ``finish()`` after the last step): rank 0 prints one line and appends a row to
    ``<output_dir>/steps.jsonl``. Nothing per step leaves the process: ``ray.train.report`` is
    a cross-rank barrier through a Ray actor plus a hand-off to Ray Train's controller; per step
    it made steps 10 % slower on the CPU machine and 0.1-0.3 s slower on the GPU host
    (``benchmarks/RESULTS.md``). It runs once, in ``finish()``, with the final row. Fault
    tolerance does not need it: Ray Train restarts the worker group on a failure and verl
    resumes from its own checkpoint.

    ``BRIDGE_RAY_TEST_KILL_AT_STEP=k`` (tests only) makes the highest rank ``os._exit(1)``
    right after step k, once per output_dir (a marker file records it), to exercise
    Ray Train's restart and verl's resume.
    """

    def __init__(self, trainer, rank: int, world_size: int, output_dir: str, kill_at_step: int | None = None,
                 profiler=None):
        self.trainer, self.rank, self.world_size = trainer, rank, world_size
        self.profiler = profiler  # a bridge_ray.sft.profiling.StepProfiler, or None
        self.output_dir = Path(output_dir)
        self.kill_at_step = kill_at_step
        self.step = trainer.resume_global_step
        self.pending: dict | None = None
        self.val_losses: list[float] = []
        self.last_row: dict = {}
        self.clock = StepClock()

    def install(self) -> None:
        """Wrap this trainer's ``train_batch``/``infer_batch`` (instance attributes, verl untouched)."""
        client = self.trainer.training_client
        train_batch, infer_batch = client.train_batch, client.infer_batch

        def recorded_train_batch(data, *args, **kwargs):
            self.flush()
            if self.profiler:
                self.profiler.before(self.step + 1)
            output = train_batch(data, *args, **kwargs)
            self._record(data, output)
            if self.profiler and self.profiler.covers(self.step):
                self.pending["profiled"] = True  # the profiler's overhead is in this step's time
                self.profiler.after(self.step)
                self.clock = StepClock()  # writing the profile is no part of the next step
            self._maybe_exit_for_test()
            self._maybe_stop_for_walltime()
            return output

        def recorded_infer_batch(data, *args, **kwargs):
            output = infer_batch(data, *args, **kwargs)
            self.val_losses.append(float(_metrics(output)["loss"]))
            return output

        client.train_batch, client.infer_batch = recorded_train_batch, recorded_infer_batch

    def _record(self, data, output) -> None:
        from verl.utils import tensordict_utils as tu

        lap = self.clock.lap()
        metrics = _metrics(output)
        lengths = tu.get(data, "global_token_num")
        tokens, seconds = int(sum(lengths)), lap["step_time_s"]
        self.step += 1
        self.pending = {
            "step": self.step, "total_steps": self.trainer.total_training_steps,
            "loss": float(metrics["loss"]), "lr": metrics.get("lr"), "grad_norm": metrics.get("grad_norm"),
            "mfu": metrics.get("mfu"), "tokens": tokens, "samples": len(lengths), **lap,
            "peak_memory_gb": metrics.get("perf/max_memory_allocated_gb"),
            "tokens_per_s": tokens / seconds, "tokens_per_s_per_worker": tokens / seconds / self.world_size,
        }

    def flush(self) -> None:
        """Write the held step (with its validation loss, if any): rank 0's log line and row."""
        if self.pending is None:
            return
        row, self.pending = self.pending, None
        row["val_loss"], self.val_losses = _mean(self.val_losses), []
        self.last_row = row
        if self.rank == 0:
            print(format_step(row), flush=True)
            with open(self.output_dir / STEPS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")

    def finish(self) -> None:
        """After ``fit``: write the last step and report it to Ray Train, once, on every rank."""
        import ray.train

        self.flush()
        if self.profiler:
            self.profiler.after(self.step, last_of_run=True)
        ray.train.report({k: v for k, v in self.last_row.items() if v is not None})

    def _maybe_stop_for_walltime(self) -> None:
        """Near the allocation's end, make this step verl's last: verl then saves and returns.

        verl's SFT trainer has no checkpoint-before-expiry hook (its PPO trainer does). All ranks
        agree through one all-reduce, and only when a deadline (``BRIDGE_RAY_DEADLINE``) is set.
        """
        from bridge_ray.cluster import walltime

        if walltime.deadline() is None:
            return
        import torch
        import torch.distributed as dist

        self.max_step_s = max(getattr(self, "max_step_s", 0.0), self.pending["step_time_s"])
        device = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        flag = torch.tensor([int(walltime.should_checkpoint_now(self.max_step_s))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.step < self.trainer.total_training_steps:
            if self.rank == 0:
                print(f"[bridge-ray] {walltime.seconds_left():.0f} s left in the allocation: saving at step "
                      f"{self.step} and stopping; submit the same run again to resume", flush=True)
            self.trainer.total_training_steps = self.step

    def _maybe_exit_for_test(self) -> None:
        marker = self.output_dir / KILL_MARKER
        if self.kill_at_step != self.step or self.rank != self.world_size - 1 or marker.exists():
            return
        marker.write_text(f"rank {self.rank} exited after step {self.step}\n")
        print(f"[bridge-ray] test: rank {self.rank} exits after step {self.step} ({KILL_AT_STEP_ENV})", flush=True)
        sys.stdout.flush()
        os._exit(1)


def _metrics(output) -> dict:
    from verl.utils import tensordict_utils as tu

    return dict(tu.get(output, "metrics"))


def format_step(row: dict) -> str:
    """One log line per step, e.g. ``[bridge-ray] step 3/6 loss 2.3110 lr 1.00e-03 ...``."""
    parts = [f"[bridge-ray] step {row['step']}/{row['total_steps']}", f"loss {row['loss']:.4f}"]
    if row.get("val_loss") is not None:
        parts.append(f"val_loss {row['val_loss']:.4f}")
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"tokens/s {row['tokens_per_s']:.0f} ({row['tokens_per_s_per_worker']:.0f}/worker)")
    if row.get("mfu") is not None:
        parts.append(f"mfu {row['mfu']:.4f}")
    parts.append(f"{row['step_time_s']:.2f}s")
    return " ".join(parts)


def start_summary(started_at: float | None, entered: float) -> str:
    """Where rank 0's start went, by wall clocks (the driver's and rank 0's: one host's on one node, across
    nodes as close as the nodes' clocks). ``started_at``: when the driver started the TorchTrainer."""
    import psutil

    born, parts = psutil.Process().create_time(), []
    if started_at:
        parts.append(f"in the training function {entered - started_at:.1f} s after the trainer was started")
        if born > started_at:  # else Ray gave the worker a process it had started before
            parts[-1] += f" (its process started at +{born - started_at:.1f} s)"
    parts.append(f"verl's trainer built {time.time() - entered:.1f} s later")
    return "[bridge-ray] rank 0 ready: " + ", ".join(parts)


def compose_verl_config(overrides: list[str]):
    """verl's ``sft_trainer_engine`` Hydra config with ``overrides`` applied (in-process)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="sft_trainer_engine", overrides=overrides)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry: set the env, build verl's config and trainer, fit, report.

    Args:
        loop_config: ``{"env": {...}, "overrides": [...], "output_dir": str}``, and the wall-clock times
            ``started_at`` (the driver started the TorchTrainer) and ``entered_at`` (a wrapping entry began).
    """
    # verl reads VERL_* at import and at its first platform lookup: set them before importing it.
    entered = loop_config.get("entered_at") or time.time()
    os.environ.update(loop_config["env"])
    import ray.train
    from omegaconf import OmegaConf
    from verl.trainer.sft_trainer import SFTTrainer
    from verl.utils.device import auto_set_device

    from bridge_ray.sft.profiling import StepProfiler

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    config = compose_verl_config(loop_config["overrides"])
    auto_set_device(config)
    if rank == 0:
        resolved = OmegaConf.to_container(config, resolve=True)
        Path(loop_config["output_dir"], "verl_config.json").write_text(json.dumps(resolved, indent=2, default=str))
    trainer = SFTTrainer(config)
    if loop_config.get("compile_layers"):
        from bridge_ray.platforms.compiled_layers import compile_decoder_layers

        compiled = compile_decoder_layers(trainer.engine.module)
        if rank == 0:
            print(f"[bridge-ray] torch.compile: {compiled} decoder layers (dynamic shapes; compiled at their first "
                  "step)", flush=True)
    if rank == 0:
        print(start_summary(loop_config.get("started_at"), entered), flush=True)
    kill_at = os.environ.get(KILL_AT_STEP_ENV)
    hook = StepHook(trainer, rank, world_size, loop_config["output_dir"], int(kill_at) if kill_at else None,
                    StepProfiler.from_env(os.environ, loop_config["output_dir"], rank))
    hook.install()
    trainer.fit()
    hook.finish()
