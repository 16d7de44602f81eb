"""What a person following a job sees: the job's own lines and one line per training step.

A job's log holds everything: the recipe's prints and bridge-ray's lines (the job's driver),
and whatever verl, vLLM, transformers and Ray print in the actors they start (each line
prefixed by Ray with ``(ActorName pid=N)``), progress bars, Ray's own logger lines, verl's
config dump. ``ConsoleView`` keeps, per line of that log:

- every ``[bridge-ray] ...`` line, wherever it comes from, once (Ray and tqdm can carry one twice);
  a training step's line (``[bridge-ray] step N/T ... 1.23s``) gets the training time so far
  (its steps' own times, summed) and an ETA at that pace;
- verl's PPO/GRPO step line (``step:N - k:v - ...``) as one such step line: reward, critic
  loss, policy loss, tokens/s, step time;
- the driver's own output (the recipe's prints, its ``error:`` line and traceback), less
  progress bars and Ray's and Python's logger lines;
- the actors' ``error:`` / ``warning:`` lines (their tracebacks reach the driver's error, or stay
  in the full log).

Everything else stays in the full log: ``bridge-ray logs ID --all`` and ``<run folder>/job.log``.
The lines are plain text (the same on a terminal and in CI); ``format_step`` pins their format.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Callable

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\((?P<who>[^()]*?pid=\d+[^()]*)\)\s?")
RAY_REPEATED = re.compile(r"\s*\[repeated \d+x across cluster\].*$")
VERL_STEP = re.compile(r"^step:(\d+) - (.*)$")
TQDM_TOTAL = re.compile(r"^Training Progress:.*\|\s*\d+/(\d+) \[")
BRIDGE_STEP = re.compile(r"^\[bridge-ray\] step (\d+)/(\d+) ")
PPO_KEYS = frozenset({"critic/score/mean", "actor/pg_loss"})  # what tells verl's PPO step line from its SFT one
STEP_TIME = re.compile(r" (\d+(?:\.\d+)?)s$")  # a step line ends with the step's own time
# Driver lines that are noise to a person: progress bars, Ray's and Python's logger lines.
DRIVER_NOISE = (
    re.compile(r"\d+%\|.*\|"),  # tqdm bars
    re.compile(r"\[\d\d:\d\d(<|, )"),  # tqdm without a percentage ("0 examples [00:00, ? examples/s]")
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING)\s"),
    re.compile(r"^(DEBUG|INFO|WARNING):\d{4}-\d\d-\d\d "),
    re.compile(r"^Running entrypoint for job "),
    re.compile(r"^\[validate_config\] "),
)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def ppo_step_line(step: int, total: int | None, metrics: dict[str, str]) -> str:
    """verl's PPO/GRPO console metrics of one step as one bridge-ray line (no timing suffix)."""

    def num(key: str, fmt: str) -> str | None:
        try:
            return format(float(metrics[key]), fmt)
        except (KeyError, ValueError):
            return None

    parts = [f"[bridge-ray] step {step}/{total if total else '?'}"]
    for label, key, fmt in (("reward", "critic/score/mean", ".4f"), ("critic_loss", "critic/vf_loss", ".4f"),
                            ("pg_loss", "actor/pg_loss", ".4f"), ("tokens/s", "perf/throughput", ".0f")):
        shown = num(key, fmt)
        if shown is not None:
            parts.append(f"{label} {shown}")
    step_s = num("timing_s/step", ".2f")
    if step_s is not None:
        parts.append(f"{step_s}s")
    return " ".join(parts)


class ConsoleView:
    """Turns a job's log, chunk by chunk, into the lines a person reads (see the module docstring).

    Args:
        write: called with each line to show.
    """

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.total: int | None = None
        self.elapsed = 0.0
        self.timed_steps = 0
        self.last_step, self.last_total = 0, None
        self.recent: deque[str] = deque(maxlen=8)
        self.hidden = 0
        self.showed_output = False  # any line of the job's own besides bridge-ray's progress

    def feed(self, chunk: str) -> None:
        for line in chunk.splitlines():
            self.line(line)

    def line(self, raw: str) -> None:
        text = RAY_REPEATED.sub("", ANSI.sub("", raw).rstrip("\r\n")).rstrip()
        prefix = RAY_PREFIX.match(text)
        body = text[prefix.end():] if prefix else text
        found = TQDM_TOTAL.match(body.strip().split("\r")[-1].strip())
        if found:
            self.total = int(found.group(1))
        key = body.strip()
        ours = key.startswith("[bridge-ray]") or bool(VERL_STEP.match(key))
        if ours and key in self.recent:  # Ray and tqdm can carry a progress line twice
            return
        shown = self._shown(body, from_actor=prefix is not None)
        if shown is None:
            self.hidden += 1
            return
        if ours:
            self.recent.append(key)
        self.showed_output = self.showed_output or not shown.startswith("[bridge-ray]")
        self.write(shown)

    def _shown(self, body: str, from_actor: bool) -> str | None:
        stripped = body.strip()
        if not stripped:
            return None
        if stripped.startswith("[bridge-ray]"):
            step = BRIDGE_STEP.match(stripped + " ")
            return self._timed(stripped, int(step.group(1)), int(step.group(2))) if step else stripped
        verl = VERL_STEP.match(stripped)
        if verl:
            metrics = dict(part.split(":", 1) for part in verl.group(2).split(" - ") if ":" in part)
            if not PPO_KEYS.intersection(metrics):  # verl's SFT trainer: bridge-ray's own step line says it
                return None
            step = int(verl.group(1))
            return self._timed(ppo_step_line(step, self.total, metrics), step, self.total)
        if from_actor:  # verl's, vLLM's and Ray's actors: only their error and warning lines
            return stripped if stripped.startswith(("error:", "warning:")) else None
        if any(pattern.search(stripped) for pattern in DRIVER_NOISE):
            return None
        return body.rstrip()

    def _timed(self, line: str, step: int, total: int | None) -> str:
        """``line`` with the training time so far (the steps' own times, summed) and an ETA at that pace.

        From the steps' own clocks, not this process's: the log arrives in batches, and ``logs``
        reads a finished job's log at once.
        """
        if step <= self.last_step or total != self.last_total:  # a new stage (the chain) or a new attempt
            self.elapsed, self.timed_steps = 0.0, 0
        self.last_step, self.last_total = step, total
        took = STEP_TIME.search(line)
        if took:
            self.elapsed += float(took.group(1))
            self.timed_steps += 1
        shown = f"{line} | elapsed {_duration(self.elapsed)}"
        if total and self.timed_steps and step < total:
            shown += f" eta {_duration(self.elapsed / self.timed_steps * (total - step))}"
        return shown
