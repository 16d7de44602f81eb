"""Cluster records: where each cluster bridge-ray knows about lives.

A record is a JSON file ``$BRIDGE_RAY_HOME/clusters/<name>.json`` (default home
``~/.bridge-ray``). Every command finds the cluster through it, so no address is
ever typed. The auth token is stored beside it in a 0600 file, never in the record.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

from bridge_ray.errors import ClusterNotFound, ConfigError

DEFAULT_CLUSTER = "default"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def home_dir() -> Path:
    """The bridge-ray home, absolute: ``$BRIDGE_RAY_HOME`` or ``~/.bridge-ray``."""
    return Path(os.environ.get("BRIDGE_RAY_HOME") or Path.home() / ".bridge-ray").expanduser().absolute()


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid cluster name, else raise ConfigError."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"cluster name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 63, starting with a letter or digit)"
        )
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
    """Per-cluster folder (token, logs, profile) beside the record."""
    return home_dir() / "clusters" / name


def record_path(name: str) -> Path:
    return home_dir() / "clusters" / f"{name}.json"


def save(record: ClusterRecord) -> Path:
    """Write the record atomically and return its path."""
    path = record_path(record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, path)
    return path


def load(name: str = DEFAULT_CLUSTER) -> ClusterRecord:
    """Load the record called ``name``.

    Raises:
        ClusterNotFound: no such record, with the command that creates one.
    """
    path = record_path(name)
    if not path.exists():
        known = [r.name for r in list_records()]
        hint = f" (known: {', '.join(known)}; pick one with --name)" if known else ""
        raise ClusterNotFound(
            f"no cluster named {name!r} is recorded in {home_dir()}{hint}: "
            f"start one with `bridge-ray up{'' if name == DEFAULT_CLUSTER else ' --name ' + name}`"
        )
    return ClusterRecord.from_dict(json.loads(path.read_text()))


def delete(name: str) -> bool:
    """Remove the record; return whether there was one."""
    path = record_path(name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def list_records() -> list[ClusterRecord]:
    """All recorded clusters, sorted by name."""
    folder = home_dir() / "clusters"
    if not folder.is_dir():
        return []
    return [ClusterRecord.from_dict(json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
