"""The doctor's checks over the probes of all nodes: each is PASS, or FAIL with its fix.

Pure functions of ``NodeProbe`` lists, so unit tests run them on recorded layouts.
"""
from __future__ import annotations

import collections
import dataclasses
import ipaddress

from bridge_ray.network.probe import NodeProbe
from bridge_ray.network.profile import SOCKET_KEYS, SharedSubnet, select_hca_ports, shared_subnets

PASS, FAIL = "PASS", "FAIL"
MIN_SHM_BYTES = 1 << 30


@dataclasses.dataclass
class Check:
    """One row of the doctor's table; ``fix`` says what to do when ``status`` is FAIL."""

    name: str
    status: str
    detail: str
    fix: str = ""


def _listing(items: list[str], limit: int = 4) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def check_nodes(probes: list[NodeProbe]) -> Check:
    """Which nodes answered, with their addresses and GPUs."""
    parts = []
    for p in probes:
        gpus = collections.Counter(p.gpus)
        gpu_text = ", ".join(f"{n}x {model}" for model, n in gpus.items()) or "no GPU"
        parts.append(f"{p.hostname} {p.node_ip} ({gpu_text})")
    return Check("nodes", PASS, f"{len(probes)} alive: " + _listing(parts))


def check_versions(probes: list[NodeProbe]) -> Check:
    """Python, ray, torch, verl and vllm must be the same on every node."""
    skews, fixes = [], []
    for package in probes[0].versions:
        seen = collections.defaultdict(list)
        for p in probes:
            seen[p.versions.get(package) or "missing"].append(p.hostname)
        if len(seen) > 1:
            skews.append(f"{package}: " + ", ".join(f"{v} on {','.join(h)}" for v, h in seen.items()))
            wanted = max(seen, key=lambda v: len(seen[v]))
            fixes.append(f"python {wanted}" if package == "python" else f"{package}=={wanted}")
    if skews:
        fix = (f"install the same versions on every node ({', '.join(fixes)}) in the cluster's "
               "environment, then restart it: `bridge-ray down && bridge-ray up`")
        return Check("versions", FAIL, _listing(skews), fix)
    same = ", ".join(f"{k} {v or '-'}" for k, v in probes[0].versions.items())
    return Check("versions", PASS, f"same on all nodes: {same}")


def check_shared_dirs(probes: list[NodeProbe], home: str) -> list[Check]:
    """Each directory the doctor marked must be seen by every node."""
    checks = []
    for directory in probes[0].shared_dirs:
        blind = [p.hostname for p in probes if not p.shared_dirs.get(directory)]
        name = f"shared filesystem {directory}"
        if not blind:
            checks.append(Check(name, PASS, f"seen by all {len(probes)} nodes"))
            continue
        target = "BRIDGE_RAY_HOME" if directory == home else "the output directory"
        fix = (f"put {target} on a filesystem every node mounts (NFS, Lustre, GPFS), e.g. "
               "`export BRIDGE_RAY_HOME=/shared/$USER/bridge-ray` before `bridge-ray up`"
               if directory == home else
               f"choose {target} on a filesystem every node mounts (NFS, Lustre, GPFS)")
        checks.append(Check(name, FAIL, f"not visible on {', '.join(blind)}", fix))
    return checks


def check_subnet(probes: list[NodeProbe], subnets: list[SharedSubnet]) -> Check:
    """Multi-node clusters need one IPv4 subnet every node has an address on."""
    if subnets:
        best = subnets[0]
        names = ", ".join(sorted(set(best.ifnames.values())))
        return Check("common subnet", PASS, f"{best.network} via {names} on {len(probes)} node(s)")
    if len(probes) == 1:
        return Check("common subnet", PASS, "single node: no inter-node traffic")
    seen = [f"{p.hostname}: " + ", ".join(f"{i.name} {','.join(i.ipv4)}" for i in p.interfaces
                                          if i.up and not i.loopback and i.ipv4) for p in probes]
    fix = ("give every node an address on one subnet, or name an interface that routes between "
           "nodes: --env NCCL_SOCKET_IFNAME=<if> --env GLOO_SOCKET_IFNAME=<if>")
    return Check("common subnet", FAIL, "no IPv4 subnet is shared by all nodes (" + _listing(seen) + ")", fix)


def _iface_networks(probe: NodeProbe, name: str, prefix: bool = False) -> set[str]:
    """The IPv4 networks of the up interface ``name`` (``prefix``: of every up interface whose name starts so)."""
    return {str(ipaddress.IPv4Interface(c).network) for iface in probe.interfaces if iface.up
            and (iface.name.startswith(name) if prefix else iface.name == name) for c in iface.ipv4}


def check_socket_overrides(probes: list[NodeProbe], env: dict[str, str],
                           subnets: list[SharedSubnet]) -> list[Check]:
    """A user-forced NCCL/GLOO_SOCKET_IFNAME must name an up interface on a shared subnet."""
    checks = []
    shared = {s.network for s in subnets}
    for key in SOCKET_KEYS:
        value = env.get(key)
        if not value or value.startswith("^"):
            continue
        problems = []
        # NCCL reads each name as a prefix ("eth" takes eth0, eth1) unless the list starts with "=";
        # gloo takes exact names.
        prefix = key.startswith("NCCL_") and not value.startswith("=")
        for name in value.lstrip("=").split(","):
            nets = {p.hostname: _iface_networks(p, name, prefix) for p in probes}
            missing = [h for h, n in nets.items() if not n]
            if missing:
                problems.append(f"{name} is not up with an IPv4 address on {', '.join(missing)}")
            elif len(probes) > 1 and not set.intersection(*nets.values()) & shared:
                where = ", ".join(f"{'/'.join(sorted(n))} on {h}" for h, n in nets.items())
                problems.append(f"{name} is on {where}: no subnet all nodes share")
        if not problems:
            checks.append(Check(f"interface {key}", PASS, f"{value} is on a subnet all nodes share"))
            continue
        hint = (f"use the detected interface (--env {key}={next(iter(subnets[0].ifnames.values()))}, "
                f"subnet {subnets[0].network}) or " if subnets else "")
        fix = f"{hint}drop --env {key} and its line in the cluster's overrides.env"
        checks.append(Check(f"interface {key}", FAIL, "; ".join(problems), fix))
    return checks


def _port_problem(port, active_elsewhere: bool) -> tuple[str, str] | None:
    if port.active:
        return None
    if port.link_layer == "InfiniBand" and port.state.endswith(("INIT", "ARMED")):
        return (f"{port.name} is {port.state} (no subnet manager)",
                "start a subnet manager (opensm) or check the fabric's (`sminfo`)")
    if active_elsewhere:
        return (f"{port.name} is {port.state or 'DOWN'}",
                "check the cable and switch port (`ibstat`), or leave the port out with "
                "--env NCCL_IB_HCA=...")
    return None


def check_ib_ports(probes: list[NodeProbe]) -> Check:
    """RDMA ports NCCL would use must be ACTIVE; a port up on one node must be up on all."""
    chosen = {p.hostname: select_hca_ports(p.ib_ports) for p in probes}
    up_somewhere = {port.name for ports in chosen.values() for port in ports}
    problems, fixes = [], []
    for p in probes:
        for port in p.ib_ports:
            found = _port_problem(port, port.name in up_somewhere)
            if found:
                problems.append(f"{p.hostname}: {found[0]}")
                fixes.append(found[1])
        if up_somewhere and not chosen[p.hostname] and not p.ib_ports:
            problems.append(f"{p.hostname}: no RDMA device while other nodes have some")
            fixes.append("check the HCA driver there (`ibv_devinfo`)")
    if problems:
        return Check("RDMA ports", FAIL, _listing(problems), "; ".join(dict.fromkeys(fixes)))
    if not up_somewhere:
        return Check("RDMA ports", PASS, "no InfiniBand/RoCE device: NCCL uses TCP sockets")
    ports = max(chosen.values(), key=len)
    kinds = ", ".join(sorted({f"{q.link_layer} {q.rate_gbps:g} Gb/s" for q in ports}))
    return Check("RDMA ports", PASS, f"{len(ports)} active per node ({kinds})")


def check_shm(probes: list[NodeProbe]) -> Check:
    """NCCL and Ray's object store need a /dev/shm of at least 1 GiB."""
    small = [f"{p.hostname}: {p.shm_bytes >> 20} MiB" for p in probes if p.shm_bytes < MIN_SHM_BYTES]
    if small:
        fix = ("give /dev/shm at least 1 GiB: `docker run --shm-size=16g`, a Kubernetes emptyDir "
               "with medium Memory, or `mount -o remount,size=16G /dev/shm`")
        return Check("/dev/shm", FAIL, _listing(small), fix)
    return Check("/dev/shm", PASS, f"at least {min(p.shm_bytes for p in probes) >> 30} GiB on every node")


def static_checks(probes: list[NodeProbe], forced_env: dict[str, str], home: str) -> list[Check]:
    """Every check that needs only the probes (the all-reduce comes after)."""
    subnets = shared_subnets(probes)
    return [
        check_nodes(probes),
        check_versions(probes),
        *check_shared_dirs(probes, home),
        check_subnet(probes, subnets),
        *check_socket_overrides(probes, forced_env, subnets),
        check_ib_ports(probes),
        check_shm(probes),
    ]
