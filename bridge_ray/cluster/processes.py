"""Find and stop exactly one cluster's processes, never another Ray's.

Three marks find them, and any one suffices: Ray's daemons carry the cluster's temp dir on
their command line; every process bridge-ray starts for a cluster carries the cluster's tag
in its environment (``BRIDGE_RAY_CLUSTER_TAG``), which all its descendants inherit, also those
that outlive their parent (Ray's client server) and those whose command line names no temp
dir; and every Ray process holds its log files, under the temp dir, open to write. The last mark is
for processes that rename themselves (``ray::RuntimeEnvAgent``: setproctitle overwrites both
the command line and what ``/proc/PID/environ`` shows) and outlive their raylet, which leaves
them neither mark nor a parent of the cluster's. Reading it means reading every process's open
files, so only stopping a cluster asks for it (``find_pids(..., by_open_files=True)``); while a
cluster runs, such a process is still its raylet's descendant. ``plain ray stop`` would kill
every Ray of the user on the machine, so bridge-ray never calls it.

Ray's own files are kept private the same way: its processes run with umask 077 and the
cluster's temp dir sits in a per-user folder of mode 0700 (``private_dir``).
"""
from __future__ import annotations

import getpass
import os
import re
import signal
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

from bridge_ray.errors import BridgeRayError
from bridge_ray.secret_env import without_secrets

TAG_ENV = "BRIDGE_RAY_CLUSTER_TAG"
TEMP_DIR_ENV = "BRIDGE_RAY_TEMP_DIR"  # the node's Ray temp dir, for job drivers (``bridge_ray.jobs.launch``)
UMASK = 0o077
NICENESS_ENV = "RAY_worker_niceness"  # Ray's niceness for the workers a raylet starts (default 15)
# Variables of the user's shell that would point a Ray process at another cluster or token.
FOREIGN_RAY_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def cmdline(pid: int) -> bytes:
    """The process's command line (NUL-separated), or b"" once it is gone."""
    return _read(Path(f"/proc/{pid}/cmdline"))


def _ppid(pid: int) -> int:
    stat_line = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    # The command name sits in parentheses and may hold spaces: split after the last ')'.
    fields = stat_line.rsplit(")", 1)[-1].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def clean_env() -> dict[str, str]:
    """This process's environment without the variables that point Ray at another cluster or token."""
    return {k: v for k, v in os.environ.items() if k not in FOREIGN_RAY_ENV}


def worker_niceness(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``RAY_worker_niceness`` for ``ray start``: a cluster's tasks and actors at the niceness of its daemons.

    Ray starts every worker at nice 15 by default, to keep its own daemons responsive. A training
    job is the wrong thing to deprioritise: beside ordinary (nice 0) processes a nice-15 worker gets
    ~3 % of a core. Measured on the 2-core VM (2026-12-05): beside two busy loops a nice-15 loop got
    0.034 of a core, a nice-0 one 0.69; the jobs of ``make test`` ran 9-16x slower there than on an
    idle machine, where plain ``torchrun`` would run ~2x slower. A value already in ``environ``
    (the user's choice) is kept.
    """
    environ = os.environ if environ is None else environ
    return {NICENESS_ENV: environ.get(NICENESS_ENV, "0")}


def child_env(tag: str, **extra: str) -> dict[str, str]:
    """The environment for a process of a cluster: ``clean_env()`` without credentials, tagged, workers not
    deprioritised. Every job inherits the daemons' environment: an ``HF_TOKEN`` of the shell that ran ``up``
    would reach every later job unredacted (and stay after the user unset or rotated it); jobs get secrets
    from their own 0600 file (``jobs.credentials``).

    Args:
        tag: the cluster's tag (``find_pids(..., tag=...)`` finds the process by it).
        extra: variables to set on top (the cluster's own ``RAY_AUTH_*``, ports, ...).
    """
    return {**without_secrets(clean_env()), TAG_ENV: tag, **worker_niceness(), **extra}


def temp_env(temp_dir: str | Path) -> dict[str, str]:
    """Where a cluster's processes on this node keep temporary files: ``TEMP_DIR/tmp`` (made here, 0700).

    verl (a lock file per checkpoint folder), vLLM (seven engine sockets and a rendezvous file a
    rollout server) and Python's multiprocessing (``pymp-*``) write under ``tempfile.gettempdir()``
    and leave it all there when stopped: in ``/tmp`` a few dozen files a run, forever. Under the
    cluster's temp dir ``down`` removes them. torch's compile cache keeps its usual place
    (``/tmp/torchinductor_USER``, shared by every cluster and by runs without bridge-ray). A
    ``TORCHINDUCTOR_CACHE_DIR`` of the user's stays, and so does a ``TMPDIR`` other than ``/tmp``.
    """
    env = {}
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid_{os.getuid()}"
        user = re.sub(r'[\\/:*?"<>|]', "_", user)  # as torch names it
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    own = os.environ.get("TMPDIR")
    if not own or os.path.realpath(own) == "/tmp":  # SLURM sets TMPDIR=/tmp in every job
        folder = Path(temp_dir) / "tmp"
        folder.mkdir(mode=0o700, exist_ok=True)
        env["TMPDIR"] = str(folder)
    return env


def _open_for_writing(pid: int, fd: str) -> bool:
    """Whether ``pid``'s descriptor ``fd`` was opened to write (``flags`` in ``/proc/PID/fdinfo/FD``, octal)."""
    for line in _read(Path(f"/proc/{pid}/fdinfo/{fd}")).decode(errors="replace").splitlines():
        if line.startswith("flags:"):
            return bool(int(line.split()[1], 8) & (os.O_WRONLY | os.O_RDWR))
    return False


def _holds_file_under(pid: int, folder: str) -> bool:
    """Whether ``pid`` has a file under ``folder`` open to write (False for other users' processes:
    unreadable). A reader (``tail -f`` of a Ray log, a backup or virus scanner) is not the cluster's."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(fds / name).startswith(folder) and _open_for_writing(pid, name):
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def find_pids(marker: str | None, tag: str | None = None, by_open_files: bool = False) -> list[int]:
    """Processes whose command line contains ``marker`` or whose environment carries ``tag``, and
    their descendants; never this process or its ancestors.

    Args:
        marker: text of the command line; an absolute folder (the cluster's temp dir) for ``by_open_files``.
        tag: the cluster's tag (``child_env``).
        by_open_files: also the processes left that hold a file under the folder ``marker`` open to
            write, and their descendants: the renamed orphans a stop must not miss (see the module
            docstring). A process that only reads there (the user's ``tail -f``) is never found.
    """
    # The caller and its ancestors are never a seed: a caller that holds the cluster's files (its
    # driver's logs) would otherwise bring in all its other children.
    caller = _self_and_ancestors()
    pids = [p for p in _all_pids() if p not in caller]
    children: dict[int, list[int]] = {}
    for p in pids:
        children.setdefault(_ppid(p), []).append(p)
    needle = marker.encode() if marker else None
    tagged = f"{TAG_ENV}={tag}\0".encode() if tag else None
    found = _with_descendants({p for p in pids if (needle and needle in _read(Path(f"/proc/{p}/cmdline")))
                               or (tagged and tagged in _read(Path(f"/proc/{p}/environ")))}, children)
    under = marker.rstrip("/") + "/" if marker and marker.startswith("/") else None
    if by_open_files and under:
        found |= _with_descendants({p for p in pids if p not in found and _holds_file_under(p, under)}, children)
    return sorted(found)


def _with_descendants(pids: set[int], children: dict[int, list[int]]) -> set[int]:
    found, stack = set(pids), list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _self_and_ancestors() -> set[int]:
    """This process and those above it: a caller that attached to the cluster (its driver's log
    files under the temp dir) is never among what it stops."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        pid = _ppid(pid)
    return chain


def _alive(pid: int) -> bool:
    state = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace").rsplit(")", 1)[-1].split()
    return bool(state) and state[0] != "Z"


KILL_WAIT_S = 60.0  # after SIGKILL: a loaded machine may take seconds to tear a big process down


def terminate(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s``, then SIGKILL what is left and wait until it is gone
    (up to ``KILL_WAIT_S``: SIGKILL cannot be ignored, only delayed). Returns the pids signalled."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [p for p in pids if _alive(p)]
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else KILL_WAIT_S)
        while time.monotonic() < deadline and any(_alive(p) for p in live):
            time.sleep(0.05)
    return pids


def stop_all(find: Callable[[], list[int]], grace_s: float, rounds: int = 5) -> list[int]:
    """``terminate`` what ``find`` returns, then look again, until it finds nothing (or ``rounds`` ends).

    A raylet or job supervisor that is still running when the first round is found may start a
    process before its SIGTERM lands (a worker, a runtime-env agent's child); on a loaded machine
    that window is wide. Returns every pid signalled."""
    stopped: list[int] = []
    for _ in range(rounds):
        pids = [p for p in find() if _alive(p)]
        if not pids:
            break
        stopped += terminate(pids, grace_s)
    return stopped


def env_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` started with (None if unset or unreadable)."""
    prefix = f"{name}=".encode()
    for item in _read(Path(f"/proc/{pid}/environ")).split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def private_root() -> Path:
    """``/tmp/bridge-ray-<uid>``: mode 0700 and owned by this user, or an error saying whose it is.

    Raises:
        BridgeRayError: the folder exists but is a link, not a folder, or someone else's.
    """
    root = Path("/tmp") / f"bridge-ray-{os.getuid()}"
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise BridgeRayError(f"{root} is not a folder of yours (a link, a file, or owned by uid {info.st_uid}): "
                             "another user may be trying to read your cluster's files; remove it and run again")
    os.chmod(root, 0o700)
    return root


def make_private(temp_dir: Path, depth: int = 3, files: bool = False) -> None:
    """Take group and other permissions off ``temp_dir``'s folders ``depth`` levels down (and files, if ``files``).

    Ray marks its temp, session, log, socket and runtime-resource folders 0777 whenever a node
    starts and whenever a job's supervisor or worker process starts; so bridge-ray calls this
    after ``ray start``, in each job's driver (``bridge_ray.jobs.launch``) and in each job's worker
    (``credentials.setup_worker``). Files Ray's processes create are private already (umask 077).
    """
    for folder, dirs, names in os.walk(temp_dir):
        level = len(Path(folder).relative_to(temp_dir).parts)
        if level >= depth:
            dirs[:] = []
        paths = [folder, *(os.path.join(folder, name) for name in names)] if files else [folder]
        for path in paths:
            try:
                mode = os.lstat(path).st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & 0o700)
            except OSError:  # removed by Ray meanwhile
                continue
