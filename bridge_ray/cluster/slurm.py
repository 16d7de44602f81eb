"""The slurm backend: one bootstrap allocation that starts Ray once.

``start`` renders ``slurm_bootstrap/bridge_ray.sbatch`` (``bridge_ray/cluster/slurm_bootstrap/``), submits it with ``sbatch``
and follows it through its phases (queued → allocated → head up → k/N nodes joined →
ready); the nodes write the cluster record themselves (``slurm_node.barrier``).
From then on every job goes through the Ray Job client like on any other backend.
``stop`` cancels the allocation; ``job_state`` tells whether it still runs.

Reaching the Jobs API: the dashboard binds to the head node's SLURM address (its
``NodeAddr``, the cluster network) only, never to every interface, and Ray's token auth
stays on (the token file is on the shared home, mode 0600). A login node on the cluster
network, the usual case, reaches it as is. From anywhere else, forward the port
(``ssh -L 8265:HEAD:PORT login``) and register it with
``bridge-ray up --name NAME2 --address http://127.0.0.1:8265 --token-file TOKEN``.

Example:
    >>> bridge_ray.up("big", slurm=dict(nodes=2, gpus_per_node=8, partition="gpu", time="04:00:00"))
    >>> bridge_ray.submit("recipes/ppo_gsm8k.py", cluster="big")
    >>> bridge_ray.down("big")
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from bridge_ray.cluster import processes, records
from bridge_ray.cluster import slurm_node
from bridge_ray.cluster.auth import new_token_file
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import ConfigError, Interrupted, SlurmError
from bridge_ray.jobs import runtime_env
from bridge_ray.secret_env import without_secrets

# Shipped inside the package (a wheel has no checkout); ``slurm_bootstrap/`` at the top links to it.
TEMPLATE = Path(__file__).resolve().parent / "slurm_bootstrap" / "bridge_ray.sbatch"
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")
# Pending reasons that waiting never resolves: the request itself is wrong.
HOPELESS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "AccountNotAllowed",
            "InvalidAccount", "InvalidQOS", "QOSNotAllowed", "BadConstraints", "account not known")
Progress = Callable[[str, str, float], None]
SETUP_END = "BRIDGE_RAY_SETUP_END"  # the here-document's end marker in the template


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise SlurmError(f"no SLURM on PATH ({tool} not found): run this on a SLURM login node or add SLURM's "
                         "bin folder to PATH; for a cluster on this machine use `bridge-ray up` without --slurm")
    return path


def _check(nodes: int, gpus_per_node: int, cpus_per_task: int | None, wait_s: float, join_timeout_s: float) -> None:
    problems = [f"{flag} must be {low} or more, got {value}" for flag, value, low in (
        ("--nodes", nodes, 1), ("--gpus-per-node", gpus_per_node, 0), ("--cpus-per-task", 1 if cpus_per_task is None else cpus_per_task, 1),
        ("--wait", wait_s, 0), ("--join-timeout", join_timeout_s, 1)) if value < low]
    if problems:
        raise ConfigError(problems)


# SLURM's --time forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds; or no limit.
_TIME_RE = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|unlimited|infinite)$", re.IGNORECASE)


def _check_words(options: dict[str, str | None], sbatch_args: tuple[str, ...] | list[str]) -> None:
    """Raises ConfigError for an option that would not be one ``#SBATCH`` line's value, or a --time SLURM
    cannot read (sbatch would only refuse it after the script was written, or run what follows a newline)."""
    problems = [f"--{flag} {value!r} must be one word: no spaces or line breaks" for flag, value in options.items()
                if value is not None and (not value.strip() or any(c.isspace() for c in value))]
    problems += [f"--sbatch-arg {arg!r} must be one option on one line, e.g. --sbatch-arg=--exclusive"
                 for arg in sbatch_args if "\n" in arg or "\r" in arg or not arg.startswith("-")]
    time = options.get("time")
    if time is not None and not any(c.isspace() for c in time) and not _TIME_RE.match(time):
        problems.append(f"--time {time!r} is not a SLURM time limit: write minutes, HH:MM:SS or D-HH:MM:SS, "
                        "e.g. --time 04:00:00")
    if problems:
        raise ConfigError(problems)


# sbatch options the script sets itself and reads back (its log, its folder, one task per node, one allocation).
_OWN_SBATCH = {"--job-name": "", "-J": "", "--output": "", "-o": "", "--error": "", "-e": "", "--chdir": "", "-D": "",
               "--ntasks-per-node": "", "--ntasks": "", "-n": "", "--array": "", "-a": "", "--wrap": ""}
# sbatch options `up --slurm` has a flag for: bridge-ray needs their values (how many nodes must join, GPUs for Ray).
_FLAGGED_SBATCH = {"--nodes": "--nodes", "-N": "--nodes", "--partition": "--partition", "-p": "--partition",
                   "--nodelist": "--nodelist", "-w": "--nodelist", "--time": "--time", "-t": "--time",
                   "--account": "--account", "-A": "--account", "--cpus-per-task": "--cpus-per-task",
                   "-c": "--cpus-per-task", "--gpus-per-node": "--gpus-per-node", "--gpus": "--gpus-per-node",
                   "-G": "--gpus-per-node", "--gpus-per-task": "--gpus-per-node"}


def _sbatch_option(arg: str) -> tuple[str, str]:
    """``--nodes=2`` -> (``--nodes``, ``2``); ``-N2`` -> (``-N``, ``2``)."""
    if arg.startswith("--"):
        name, _, value = arg.partition("=")
        return name, value
    return arg[:2], arg[2:].lstrip("=")


def _check_sbatch_args(sbatch_args: tuple[str, ...] | list[str], gpus_per_node: int) -> None:
    """Raises ConfigError for an ``--sbatch-arg`` that the script sets itself, that has a flag of its own, or that
    asks SLURM for GPUs Ray would not be told of (``--gres=gpu:...`` without ``--gpus-per-node``)."""
    problems = []
    for arg in sbatch_args:
        name, value = _sbatch_option(arg)
        if name in _OWN_SBATCH:
            problems.append(f"--sbatch-arg {arg}: the bootstrap script sets {name} itself and relies on it: "
                            "leave it out")
        elif name in _FLAGGED_SBATCH:
            flag = _FLAGGED_SBATCH[name]
            problems.append(f"--sbatch-arg {arg}: give it as `up --slurm {flag} {value or '...'}` instead "
                            "(bridge-ray uses the value, not only SLURM)")
        elif name == "--export" and not value.upper().startswith("ALL"):
            problems.append(f"--sbatch-arg {arg}: each node starts Ray from the environment `up` runs in (PATH, "
                            "the Python it uses); keep it with --export=ALL[,VAR=value], or leave the option out")
        elif name == "--gres" and "gpu" in value and not gpus_per_node:
            problems.append(f"--sbatch-arg {arg} asks SLURM for GPUs, but Ray would be told of none: give "
                            "--gpus-per-node N instead")
    if problems:
        raise ConfigError(problems)


def _check_setup(setup: tuple[str, ...] | list[str]) -> None:
    """Raises ConfigError for a setup line that breaks the script or puts a secret into it."""
    for line in setup:
        if "\n" in line or line.strip() == SETUP_END:
            raise ConfigError(f"setup line {line!r} cannot be used: give one shell line each (repeat --setup), "
                              f"and never {SETUP_END!r}")
        assigned = re.findall(r"(?:^|[\s;])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", line)
        secret = next((key for key in assigned if runtime_env.is_secret(key)), None)
        if secret:
            raise ConfigError(f"setup line sets {secret}, a secret: the batch script is kept by SLURM and in the "
                              f"cluster's folder; export {secret} in your shell before `bridge-ray submit` instead "
                              "(jobs get it in a 0600 file)")


def _setup_block(setup: tuple[str, ...] | list[str]) -> str:
    """The script's lines that write the setup lines to a file every node sources before Ray starts."""
    if not setup:
        return "SETUP=/dev/null  # no setup lines (up --slurm --setup LINE, --setup-file, slurm.setup)"
    fail = ("trap 'rc=$?; echo \"bridge-ray: a setup line failed on $(hostname) (exit $rc): $BASH_COMMAND -- fix it "
            "in --setup, --setup-file or slurm.setup (bridge-ray config)\" >&2' ERR")
    return "\n".join([
        "# Setup lines (--setup, --setup-file, slurm.setup): every node runs them, then starts Ray from that shell.",
        'SETUP="$PWD/node-setup-$SLURM_JOB_ID.sh"', f"cat > \"$SETUP\" <<'{SETUP_END}'", fail, "set -eE", *setup,
        "set +eE", "trap - ERR", SETUP_END, 'set +u; source "$SETUP"; set -u'])


def render(name: str, nodes: int = 1, gpus_per_node: int = 0, cpus_per_task: int | None = None,
           partition: str | None = None, nodelist: str | None = None, time: str | None = None,
           account: str | None = None, sbatch_args: tuple[str, ...] | list[str] = (),
           setup: tuple[str, ...] | list[str] = (), join_timeout_s: float = 300.0) -> str:
    """The bootstrap batch script for cluster ``name`` (what ``up --slurm --dry-run`` prints).

    ``setup``: shell lines every node runs before it starts Ray (``module load ...``,
    ``conda activate ...``), in the shell that then starts it.

    Raises:
        ConfigError: a count is out of range, or a setup line would end the script's here-document.
    """
    records.check_name(name)
    _check(nodes, gpus_per_node, cpus_per_task, 0, join_timeout_s)
    _check_words({"partition": partition, "account": account, "time": time, "nodelist": nodelist}, sbatch_args)
    _check_sbatch_args(sbatch_args, gpus_per_node)
    _check_setup(setup)
    options = [("partition", partition), ("account", account), ("time", time), ("nodelist", nodelist),
               ("cpus-per-task", cpus_per_task), ("gpus-per-node", gpus_per_node or None)]
    lines = [f"#SBATCH --{flag}={value}" for flag, value in options if value is not None]
    lines += [f"#SBATCH {arg}" for arg in sbatch_args]
    folder = records.cluster_dir(name)
    log = folder / "slurm-%j.out"
    values = {
        "job_name": f"bridge-ray-{name}", "log": log,
        "cluster_dir": folder, "nodes": nodes, "sbatch_lines": "".join(line + "\n" for line in lines),
        "home": shlex.quote(str(records.home_dir())), "name": shlex.quote(name),
        "gpus_per_node": gpus_per_node, "join_timeout_s": int(join_timeout_s),
        "token_path": shlex.quote(str(folder / "auth_token")), "python": shlex.quote(sys.executable),
        "setup_block": _setup_block(setup),
    }
    # The extra #SBATCH lines replace their placeholder's whole line, so none leaves a blank line.
    text = TEMPLATE.read_text().replace("{{sbatch_lines}}\n", "{{sbatch_lines}}")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    return text


def _sbatch(script: Path, request: dict) -> str:
    # sbatch hands its environment to every node (and slurmctld keeps a copy on disk): no credentials, no other
    # cluster's RAY_* (jobs get secrets from their own 0600 file)
    out = subprocess.run([_require("sbatch"), "--parsable", str(script)], capture_output=True, text=True,
                         env=without_secrets(processes.clean_env()))
    if out.returncode == 0:
        return out.stdout.strip().split(";")[0]
    said = (out.stderr.strip().splitlines() or ["(no output)"])[-1].replace("sbatch: error: ", "")
    if "account" in said.lower():
        raise SlurmError(f"SLURM rejected account {request.get('account')!r} ({said}): list yours with "
                         "`sacctmgr show assoc user=$USER format=account,partition`")
    if "partition" in said.lower():
        known = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
        raise SlurmError(f"SLURM has no partition {request.get('partition')!r} ({said}): "
                         f"pick one of {', '.join(known) or '(none listed)'} (`sinfo -s`)")
    raise SlurmError(f"sbatch refused the allocation: {said}")


def ended(state: str | None) -> bool:
    """Whether a ``job_state`` says the allocation has ended (not pending, running or unknown)."""
    word = (state or "").split(":")[0].split(" ")[0]
    return bool(word) and word not in (*ACTIVE, "UNKNOWN")


def squeue(job_id: str) -> tuple[str, str, str]:
    """(state, reason, node list) of a job; state ``GONE`` once SLURM has forgotten it."""
    out = subprocess.run([_require("squeue"), "-h", "-t", "all", "-j", job_id, "-o", "%T|%r|%N"],
                         capture_output=True, text=True)
    line = out.stdout.strip().splitlines()[:1]
    if out.returncode != 0 or not line:
        return "GONE", "", ""
    state, reason, nodes = (line[0].split("|") + ["", ""])[:3]
    return state, reason, nodes


def cancel(job_id: str, timeout_s: float = 60.0) -> str:
    """scancel the job and wait until SLURM has ended its processes; return the last state."""
    subprocess.run([_require("scancel"), job_id], capture_output=True, text=True)
    deadline = time.monotonic() + timeout_s
    while (state := squeue(job_id)[0]) in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def cancel_started_in(folder: Path) -> list[str]:
    """Cancel this user's SLURM jobs whose working dir is ``folder`` (a cluster's folder); return their ids.

    Finds a cluster's allocation when its record cannot be read: the bootstrap script runs
    with ``--chdir`` set to the cluster's folder. No-op without SLURM on PATH.
    """
    if not shutil.which("squeue"):
        return []
    out = subprocess.run(["squeue", "-h", "--me", "-o", "%i|%Z"], capture_output=True, text=True).stdout
    ids = [line.split("|", 1)[0] for line in out.splitlines()
           if "|" in line and Path(line.split("|", 1)[1]).resolve() == folder.resolve()]
    for job_id in ids:
        cancel(job_id)
    return ids


def _log_tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return " | ".join(text.splitlines()[-lines:])


def _follow(name: str, job_id: str, request: dict, progress: Progress) -> ClusterRecord:
    folder, log = slurm_node.job_dir(name, job_id), records.cluster_dir(name) / f"slurm-{job_id}.out"
    join_s = request["join_timeout_s"]
    submitted, allocated, seen, last, next_poll = time.monotonic(), None, 0, None, 0.0
    progress("submitted", f"job {job_id} ({records.cluster_dir(name) / 'bootstrap.sbatch'})", time.time())
    while True:
        events = slurm_node.read_events(folder)
        for event in events[seen:]:
            progress(event["phase"], event["detail"], event["t"])
            if event["phase"] == "failed":
                cancel(job_id)
                raise SlurmError(f"{event['detail']}: cancelled SLURM job {job_id}; logs kept in {log}")
            if event["phase"] == "ready":
                return records.load(name)
        seen = len(events)
        now = time.monotonic()
        if now >= next_poll:
            state, reason, nodes = squeue(job_id)
            next_poll = now + (0.5 if allocated or now - submitted < 30 else 2.0)
            if (state, reason) != last:
                last = (state, reason)
                why = f" ({reason})" if state == "PENDING" and reason not in ("", "None") else ""
                progress("queued" if state == "PENDING" else "allocated" if state == "RUNNING" else state.lower(),
                         f"job {job_id}{why}" if state == "PENDING" else f"job {job_id} on {nodes}", time.time())
            if state == "RUNNING" and allocated is None:
                allocated = now
            if state == "PENDING":
                _check_pending(name, job_id, reason, request, now - submitted)
            elif state not in ACTIVE and not slurm_node.read_events(folder)[seen:]:
                raise SlurmError(f"SLURM job {job_id} ended ({state}) before the cluster was ready: "
                                 f"{_log_tail(log) or 'no output'}; logs kept in {log}")
            limit = slurm_node.bootstrap_limit_s(join_s)
            if allocated is not None and now - allocated > limit:
                cancel(job_id)
                raise SlurmError(f"the bootstrap of SLURM job {job_id} was not ready {limit:.0f} s after "
                                 f"the allocation: cancelled it; logs kept in {log}")
        time.sleep(0.1)


def _check_pending(name: str, job_id: str, reason: str, request: dict, waited_s: float) -> None:
    if any(word in reason for word in HOPELESS):
        cancel(job_id)
        asked = ", ".join(f"{k}={request[k]}" for k in ("nodes", "partition", "account", "gpus_per_node",
                                                         "cpus_per_task", "time") if request.get(k))
        raise SlurmError(f"SLURM will never start job {job_id}: {reason} (asked {asked}): fix the request "
                         f"(`sinfo -s` lists partitions and limits); cancelled the job")
    if waited_s <= request["wait_s"]:
        return
    if request["keep_pending"]:
        records.save(ClusterRecord(name=name, backend="slurm", gcs_address="", dashboard_url="",
                                   token_path=str(records.cluster_dir(name) / "auth_token"),
                                   slurm={"job_id": job_id, "pending_since": time.time() - waited_s}))
        raise SlurmError(f"SLURM job {job_id} is still pending after {request['wait_s']:.0f} s ({reason}); "
                         f"kept it: `bridge-ray status{records.name_flag(name)}` shows when it is up, "
                         f"`bridge-ray down{records.name_flag(name)}` cancels it")
    cancel(job_id)
    raise SlurmError(f"SLURM job {job_id} was still pending after {request['wait_s']:.0f} s ({reason}): "
                     f"cancelled it; wait longer with --wait SECONDS, or keep it queued with --keep-pending")


def start(name: str, nodes: int = 1, gpus_per_node: int = 0, cpus_per_task: int | None = None,
          partition: str | None = None, nodelist: str | None = None, time: str | None = None,
          account: str | None = None, sbatch_args: tuple[str, ...] | list[str] = (), wait_s: float = 600.0,
          keep_pending: bool = False, join_timeout_s: float = 300.0, setup: tuple[str, ...] | list[str] = (),
          progress: Progress | None = None) -> ClusterRecord:
    """Submit the bootstrap allocation and return the record once every node has joined.

    Args:
        name: the cluster's name; its token, logs and record live in ``cluster_dir(name)``.
        nodes: SLURM nodes, one Ray node each (the first runs the head).
        gpus_per_node: GPUs per node (``--gpus-per-node``); the barrier waits for all of them.
        cpus_per_task: CPUs per node for Ray (``--cpus-per-task``; SLURM's default otherwise).
        partition, nodelist, time, account: the sbatch options of the same name.
        sbatch_args: more sbatch options, verbatim (``--exclusive``, ``--qos=high``).
        setup: shell lines every node runs before Ray starts (``module load hpcx/2.18.1``).
        wait_s: how long the allocation may stay pending before it is cancelled.
        keep_pending: keep a still-pending allocation queued (and recorded) instead.
        join_timeout_s: how long the head may take to answer once allocated, then the other nodes to join.
        progress: called as ``progress(phase, detail, unix_time)`` for each phase.

    Raises:
        SlurmError: no SLURM, a rejected request, a pending or failed allocation (cancelled).
    """
    script_options = dict(nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task,
                          partition=partition, nodelist=nodelist, time=time, account=account,
                          sbatch_args=tuple(sbatch_args), setup=tuple(setup), join_timeout_s=join_timeout_s)
    _check(nodes, gpus_per_node, cpus_per_task, wait_s, join_timeout_s)
    _require("sbatch")
    text = render(name, **script_options)
    folder = records.writable_dir(records.cluster_dir(name))
    folder.chmod(0o700)  # its token, and the jobs' secrets files
    for old in folder.glob("slurm-*"):  # progress of earlier allocations; their logs (slurm-N.out) stay
        if old.is_dir():
            shutil.rmtree(old)
    for old in folder.glob("node-setup-*.sh"):  # earlier allocations' setup lines
        old.unlink()
    new_token_file(folder / "auth_token")
    script = folder / "bootstrap.sbatch"
    script.write_text(text)
    request = dict(script_options, wait_s=wait_s, keep_pending=keep_pending)
    try:
        job_id = _sbatch(script, request)
    except SlurmError:  # nothing was started: leave no script or token behind
        script.unlink(missing_ok=True)
        (folder / "auth_token").unlink(missing_ok=True)
        raise
    try:
        return _follow(name, job_id, request, progress or (lambda *_: None))
    except KeyboardInterrupt:
        cancel(job_id)
        raise Interrupted(f"cancelled SLURM job {job_id} before the cluster was up; nothing of it is left") from None


def stop(record: ClusterRecord) -> str:
    """Cancel the cluster's allocation (all its Ray processes end with it); return the final state."""
    return cancel(record.slurm["job_id"]) if record.slurm else "GONE"


def job_state(record: ClusterRecord) -> str:
    """The allocation's SLURM state, saying when it has ended (the record is then stale)."""
    job_id = (record.slurm or {}).get("job_id")
    if not job_id:
        return "UNKNOWN (no job id recorded)"
    state, reason, _ = squeue(job_id)
    if state == "PENDING":
        return f"PENDING ({reason}): the Ray cluster starts when SLURM allocates the nodes"
    if state in ACTIVE:
        return state
    log = record.slurm.get("log") or records.cluster_dir(record.name) / f"slurm-{job_id}.out"
    return (f"{state}: the allocation has ended, so this record is stale (logs: {log}); clear it with "
            f"`bridge-ray down{records.name_flag(record.name)}`")
