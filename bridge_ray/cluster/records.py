"""Cluster records: where each cluster bridge-ray knows about lives.

A record is a JSON file ``$BRIDGE_RAY_HOME/clusters/<name>.json`` (default home
``~/.bridge-ray``). Every command finds the cluster through it, so no address is
ever typed. The auth token is stored beside it in a 0600 file, never in the record.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time
import types
import typing
from pathlib import Path

from bridge_ray.errors import ClusterExists, ClusterNotFound, ClusterRecordBroken, ConfigError, HomeNotWritable

DEFAULT_CLUSTER = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def home_dir() -> Path:
    """The bridge-ray home, absolute: ``$BRIDGE_RAY_HOME`` or ``~/.bridge-ray``."""
    return Path(os.environ.get("BRIDGE_RAY_HOME") or Path.home() / ".bridge-ray").expanduser().absolute()


def home_error(path: Path, err: OSError) -> HomeNotWritable:
    """The one-line error for a file or folder of the bridge-ray home that cannot be written."""
    reason = err.strerror or type(err).__name__
    return HomeNotWritable(
        f"cannot write {path} ({reason}): the bridge-ray home {home_dir()} must be a writable folder; "
        "fix its permissions, or point BRIDGE_RAY_HOME at one, e.g. `export BRIDGE_RAY_HOME=$HOME/.bridge-ray`")


PRIVATE_FOLDERS = ("clusters", "runs")  # tokens, secrets files, run records with their logs' tails


def writable_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and return it. The home, when this creates it, and its
    ``PRIVATE_FOLDERS`` always, are this user's only (0700): a run record's log tail is nobody else's to read.

    Raises:
        HomeNotWritable: it cannot be created or written (read-only, below a file, ...).
    """
    home = home_dir()
    new_home = not home.exists() and (path == home or home in path.parents)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if new_home:
            home.chmod(0o700)
        for private in (home / name for name in PRIVATE_FOLDERS):
            if (path == private or private in path.parents) and private.stat().st_mode & 0o077:
                private.chmod(0o700)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise home_error(path, err) from None
    return path


def write_text(path: Path, text: str, mode: int = 0o666) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename).

    ``mode`` is the new file's permission bits before the umask (0o600: this user only).

    Raises:
        HomeNotWritable: the folder cannot take it.
    """
    writable_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise home_error(path, err) from None
    return path


def name_flag(name: str) -> str:
    """`` --name NAME`` for a command a message suggests, or nothing for the default cluster."""
    return "" if name == DEFAULT_CLUSTER else f" --name {name}"


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid cluster name, else raise ConfigError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"cluster name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)"
        )
    if name.endswith(".json"):  # cluster 'a' keeps its record in clusters/a.json, where 'a.json' keeps its folder
        raise ConfigError(f"cluster name {name!r} is not valid: it may not end in '.json' (that is how records are "
                          f"named); use e.g. {name[:-5] or 'c'}-json")
    return name


@dataclasses.dataclass
class ClusterRecord:
    """Everything needed to reach and tear down one cluster.

    Attributes:
        name: the cluster's name (``default`` unless ``--name`` was given).
        backend: ``local``, ``slurm`` or ``address``.
        gcs_address: ``host:port`` of the Ray GCS.
        dashboard_url: the Jobs API URL (``http://127.0.0.1:PORT`` for local clusters).
        token_path: file holding the Ray auth token, or ``None`` when auth is off on an
            existing cluster registered with ``--address``.
        ports: every port bridge-ray chose, by Ray's flag name.
        temp_dir: Ray's ``--temp-dir`` for this cluster (local backend).
        pids: process ids of the daemons this cluster started.
        python: the interpreter the cluster's drivers run with.
        created_at: UNIX time the record was written.
        slurm: SLURM details (job id, node list, end time) for the slurm backend.
    """

    name: str
    backend: str
    gcs_address: str
    dashboard_url: str
    token_path: str | None = None
    ports: dict[str, int] = dataclasses.field(default_factory=dict)
    temp_dir: str | None = None
    pids: list[int] = dataclasses.field(default_factory=list)
    python: str = "python"
    created_at: float = dataclasses.field(default_factory=time.time)
    slurm: dict | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def cluster_dir(name: str) -> Path:
    """Per-cluster folder (token, logs, profile) beside the record.

    Raises:
        ConfigError: ``name`` is not a valid cluster name (``../x`` would leave the home).
    """
    return home_dir() / "clusters" / check_name(name)


def record_path(name: str) -> Path:
    """The record's file. Raises ConfigError for an invalid ``name``."""
    return home_dir() / "clusters" / f"{check_name(name)}.json"


@contextlib.contextmanager
def starting(name: str):
    """Hold cluster ``name``'s start for this process: ``up`` runs inside it, so two ``up`` of one name never
    both start a head (each saw no record, both reported success, the record kept the last).

    The lock file (``clusters/.NAME.starting``, this process's pid in it) goes when the start ends.

    Raises:
        ClusterExists: another process is starting this cluster now.
        HomeNotWritable: the home cannot take the lock file.
    """
    path = writable_dir(home_dir() / "clusters") / f".{check_name(name)}.starting"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise home_error(path, err) from None
        if not _flock_soon(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ClusterExists(
                f"cluster {name!r} is being started right now by another `bridge-ray up{name_flag(name)}`"
                f"{f' (pid {holder})' if holder.isdigit() else ''}: wait for it, then use the cluster "
                f"(`bridge-ray status{name_flag(name)}`), or pick another --name") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not a file the last holder removed meanwhile
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _flock_soon(fd: int, tries: int = 5) -> bool:
    """Take ``fd``'s exclusive lock within ~0.5 s (``starter`` holds it for microseconds; an ``up`` for seconds)."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(0.1)
    return False


def starter(name: str) -> int | None:
    """The pid of the ``up`` starting cluster ``name`` right now (0 if it wrote none yet), else None."""
    try:
        fd = os.open(home_dir() / "clusters" / f".{check_name(name)}.starting", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # a file left by nobody: no start holds it
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else 0
    finally:
        os.close(fd)


def save(record: ClusterRecord) -> Path:
    """Write the record atomically and return its path.

    Raises:
        HomeNotWritable: the bridge-ray home cannot take it.
    """
    return write_text(record_path(record.name), record.to_json())


BACKENDS = ("local", "slurm", "address")

def _temp_dir_name(backend: str, name: str) -> str | None:
    """The pattern of the name ``up`` gives a cluster's temp dir (``local._ray_start``, ``slurm_node.Node.temp_dir``)."""
    return {"local": re.escape(name[:20]) + r"-[0-9a-f]{6}", "slurm": r"slurm-[0-9]+(\.[0-9]+)?"}.get(backend)


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _has_type(value, hint) -> bool:
    """Whether a JSON value fits a field's annotation (``str | None``, ``dict[str, int]``, ``float``, ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:  # JSON writes 3.0 as 3; a bool is no number here
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    return isinstance(value, hint) and not (isinstance(value, bool) and hint is not bool)


def _check_fields(data: dict, name: str) -> None:
    """Raise ValueError naming the first field a record must not hold as it is.

    A record decides what ``down`` stops and deletes, so its temp dir must be one bridge-ray makes:
    a direct child of the per-user root ``/tmp/bridge-ray-UID`` named as ``up`` names it (never an
    arbitrary folder, whose processes and files ``down`` would take), and its SLURM job id a number.
    """
    missing = [k for k in ("name", "backend", "gcs_address", "dashboard_url") if not isinstance(data.get(k), str)]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")
    hints = typing.get_type_hints(ClusterRecord)
    for key, value in data.items():
        if key in hints and not _has_type(value, hints[key]):
            raise ValueError(f"{key} is {value!r}, not {_type_name(hints[key])}")
    if data["name"] != name or not _NAME_RE.match(name):
        raise ValueError(f"name {data['name']!r} is not the file's name, or no valid cluster name")
    if data["backend"] not in BACKENDS:
        raise ValueError(f"backend {data['backend']!r} is none of {', '.join(BACKENDS)}")
    temp_dir = data.get("temp_dir")
    if temp_dir is not None:
        path = Path(temp_dir)
        root = Path("/tmp") / f"bridge-ray-{os.getuid()}"  # processes.private_root(), without creating it
        pattern = _temp_dir_name(data["backend"], name)
        if path.parent != root or not pattern or not re.fullmatch(pattern, path.name):
            raise ValueError(f"temp_dir {temp_dir!r} is not one bridge-ray makes, a folder of {root}")
    job_id = (data.get("slurm") or {}).get("job_id")
    if job_id is not None and not (isinstance(job_id, str) and job_id.isdigit()):
        raise ValueError(f"SLURM job id {job_id!r} is not a number")


def _parse(path: Path) -> ClusterRecord:
    """The record in ``path``, or ClusterRecordBroken naming the file and the way out."""
    name = path.stem
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
        _check_fields(data, name)
        record = ClusterRecord.from_dict(data)
    except (OSError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise ClusterRecordBroken(
            f"the record of cluster {name!r} ({path}) is unreadable ({err}): run `bridge-ray down{name_flag(name)} --force` "
            "to stop whatever was started for it and remove the record") from None
    return record


def load(name: str = DEFAULT_CLUSTER) -> ClusterRecord:
    """Load the record called ``name``.

    Raises:
        ConfigError: ``name`` is not a valid cluster name.
        ClusterNotFound: no such record, with the command that creates one.
        ClusterRecordBroken: the record cannot be read or holds what no record may (``_check_fields``).
    """
    path = record_path(name)
    if not path.exists():
        known = [r.name for r in list_records()]
        hint = f" (known: {', '.join(known)}; pick one with --name)" if known else ""
        raise ClusterNotFound(
            f"no cluster named {name!r} is recorded in {home_dir()}{hint}: "
            f"start one with `bridge-ray up{'' if name == DEFAULT_CLUSTER else ' --name ' + name}`"
        )
    return _parse(path)


def delete(name: str) -> bool:
    """Remove the record; return whether there was one."""
    path = record_path(name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def list_records() -> list[ClusterRecord]:
    """All readable cluster records, sorted by name (an unreadable one never hides the others)."""
    folder = home_dir() / "clusters"
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(_parse(path))
        except ClusterRecordBroken:
            continue
    return found
