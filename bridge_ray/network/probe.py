"""What one node sees of the network: interfaces, InfiniBand/RoCE ports, GPUs, /dev/shm, versions.

``probe_node()`` runs on every node as a Ray task. It reads a sysfs root and the JSON of
``ip -j addr``, both injectable, so unit tests feed layouts recorded on real machines.
This module imports only the standard library (psutil as a fallback): the doctor ships it
to nodes by value, so it works even where bridge_ray is not installed.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

VERSIONED_PACKAGES = ("ray", "torch", "verl", "vllm")
_ZERO_GID = "0000:0000:0000:0000:0000:0000:0000:0000"


@dataclasses.dataclass
class Interface:
    """One network interface: ``ipv4`` holds ``address/prefixlen`` strings."""

    name: str
    up: bool
    loopback: bool = False
    ipv4: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Gid:
    """One GID table entry of an RDMA port; ``type`` is ``IB/RoCE v1`` or ``RoCE v2``."""

    index: int
    gid: str
    type: str | None = None
    netdev: str | None = None

    @property
    def ipv4(self) -> str | None:
        """The IPv4 address of an IPv4-mapped GID (``::ffff:a.b.c.d``), else None."""
        mapped = ipaddress.IPv6Address(self.gid).ipv4_mapped
        return str(mapped) if mapped else None


@dataclasses.dataclass
class IbPort:
    """One port of an RDMA device under ``/sys/class/infiniband``."""

    device: str
    port: int
    state: str
    link_layer: str
    rate_gbps: float = 0.0
    gids: list[Gid] = dataclasses.field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state.endswith("ACTIVE")

    @property
    def name(self) -> str:
        return f"{self.device}:{self.port}"


@dataclasses.dataclass
class NodeProbe:
    """Everything the doctor learns about one node. ``node_ip`` is Ray's address of it."""

    hostname: str
    interfaces: list[Interface] = dataclasses.field(default_factory=list)
    ib_ports: list[IbPort] = dataclasses.field(default_factory=list)
    gpus: list[str] = dataclasses.field(default_factory=list)
    shm_bytes: int = 0
    versions: dict[str, str | None] = dataclasses.field(default_factory=dict)
    shared_dirs: dict[str, bool] = dataclasses.field(default_factory=dict)
    node_ip: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NodeProbe":
        data = dict(data)
        data["interfaces"] = [Interface(**i) for i in data.get("interfaces", [])]
        data["ib_ports"] = [
            IbPort(**{**p, "gids": [Gid(**g) for g in p.get("gids", [])]})
            for p in data.get("ib_ports", [])
        ]
        return cls(**data)


def parse_ip_addr(ip_json: str) -> list[Interface]:
    """Interfaces from the output of ``ip -j addr``; up means the UP and LOWER_UP flags."""
    interfaces = []
    for link in json.loads(ip_json):
        flags = set(link.get("flags", []))
        ipv4 = [
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
        ]
        interfaces.append(
            Interface(
                name=link["ifname"],
                up={"UP", "LOWER_UP"} <= flags,
                loopback="LOOPBACK" in flags,
                ipv4=ipv4,
            )
        )
    return interfaces


def read_interfaces() -> list[Interface]:
    """This node's interfaces: ``ip -j addr``, or psutil where iproute2 is not installed."""
    if shutil.which("ip"):
        out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True)
        return parse_ip_addr(out.stdout)
    import psutil

    stats = psutil.net_if_stats()
    return [
        Interface(
            name=name,
            up=stats[name].isup if name in stats else False,
            loopback=name == "lo",
            ipv4=[
                str(ipaddress.IPv4Interface(f"{a.address}/{a.netmask}"))
                for a in addrs
                if a.family == socket.AF_INET and a.netmask
            ],
        )
        for name, addrs in psutil.net_if_addrs().items()
    ]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # unused GID entries answer EINVAL
        return None


def _rate_gbps(text: str | None) -> float:
    try:
        return float((text or "0").split()[0])
    except ValueError:
        return 0.0


def _read_gids(port_dir: Path) -> list[Gid]:
    gids = []
    for entry in sorted((port_dir / "gids").glob("*"), key=lambda p: int(p.name)):
        gid = _read(entry)
        if not gid or gid == _ZERO_GID:
            continue
        attrs = port_dir / "gid_attrs"
        gids.append(
            Gid(
                index=int(entry.name),
                gid=gid,
                type=_read(attrs / "types" / entry.name),
                netdev=_read(attrs / "ndevs" / entry.name),
            )
        )
    return gids


def read_ib_ports(root: str | Path = "/") -> list[IbPort]:
    """Every port of every RDMA device under ``<root>/sys/class/infiniband``."""
    ports = []
    for device in sorted(Path(root, "sys/class/infiniband").glob("*")):
        for port_dir in sorted((device / "ports").glob("*"), key=lambda p: int(p.name)):
            ports.append(
                IbPort(
                    device=device.name,
                    port=int(port_dir.name),
                    state=_read(port_dir / "state") or "",
                    link_layer=_read(port_dir / "link_layer") or "",
                    rate_gbps=_rate_gbps(_read(port_dir / "rate")),
                    gids=_read_gids(port_dir),
                )
            )
    return ports


def read_gpus(root: str | Path = "/") -> list[str]:
    """NVIDIA GPU models from ``<root>/proc/driver/nvidia/gpus/*/information``."""
    models = []
    for info in sorted(Path(root, "proc/driver/nvidia/gpus").glob("*/information")):
        fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        models.append(fields.get("Model", "unknown").strip())
    return models


def package_versions() -> dict[str, str | None]:
    """Python and the versions that must match across nodes (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _shm_bytes(path: str) -> int:
    try:
        stat = os.statvfs(path)
    except OSError:
        return 0
    return stat.f_blocks * stat.f_frsize


def marker_path(directory: str | Path, token: str) -> Path:
    """The file the doctor writes into ``directory`` to learn which nodes see it."""
    return Path(directory, f".bridge-ray-doctor-{token}")


def _sees_marker(directory: str, token: str) -> bool:
    return _read(marker_path(directory, token)) == token


def probe_node(
    root: str | Path = "/",
    ip_json: str | None = None,
    shm_path: str = "/dev/shm",
    markers: dict[str, str] | None = None,
    hostname: str | None = None,
) -> dict:
    """Probe this node and return ``NodeProbe.to_dict()`` (a plain dict crosses Ray safely).

    Args:
        root: where ``sys/`` and ``proc/`` are read from; a recorded layout in tests.
        ip_json: output of ``ip -j addr``; None runs it here.
        shm_path: the shared-memory mount whose size is reported.
        markers: ``{directory: token}``; the doctor wrote ``marker_path(directory, token)``
            holding the token, and a node that reads it back sees the same filesystem.
        hostname: overrides ``socket.gethostname()`` (recorded layouts).

    Returns:
        The probe as a dict; rebuild it with ``NodeProbe.from_dict``.
    """
    interfaces = parse_ip_addr(ip_json) if ip_json is not None else read_interfaces()
    probe = NodeProbe(
        hostname=hostname or socket.gethostname(),
        interfaces=interfaces,
        ib_ports=read_ib_ports(root),
        gpus=read_gpus(root),
        shm_bytes=_shm_bytes(shm_path),
        versions=package_versions(),
        shared_dirs={d: _sees_marker(d, token) for d, token in (markers or {}).items()},
    )
    return probe.to_dict()
