"""The cluster's network profile: NCCL/Gloo settings derived from every node's probe.

Three files live in ``records.cluster_dir(name)``:

- ``profile.json``: what the doctor derived (``env`` common to all nodes, ``node_env`` for
  keys whose value differs by hostname, ``notes``);
- ``overrides.env``: the user's ``KEY=VALUE`` lines (``bridge-ray doctor --env`` adds to it;
  it may be edited by hand); they win over anything derived;
- ``profile.env``: a shell file the SLURM bootstrap sources before ``ray start`` on each node,
  because some libraries read these variables at import.

Jobs get ``profile_env(name)`` in their runtime_env; the job's own ``--env`` wins over it.
No key that verl's PPO driver sets itself (``VERL_PPO_RESERVED_KEYS``) is ever carried, and no
secret (``HF_TOKEN``, ...; ``runtime_env.is_secret``): a profile travels in every job's runtime_env,
which Ray shows on worker command lines and in its logs. The files are the user's own, mode 0600.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import shlex
import time
from pathlib import Path

from bridge_ray.cluster import records
from bridge_ray.errors import ConfigError
from bridge_ray.jobs.runtime_env import is_secret
from bridge_ray.network.probe import IbPort, NodeProbe

# Keys verl/trainer/constants_ppo.py (get_ppo_ray_runtime_env, verl 0.9.1) sets for PPO workers.
# Ray rejects a job whose runtime_env and the driver's ray.init(runtime_env) disagree on a key.
VERL_PPO_RESERVED_KEYS = frozenset({
    "TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "VLLM_LOGGING_LEVEL",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "VLLM_DISABLE_COMPILE_CACHE",
    "HCCL_HOST_SOCKET_PORT_RANGE", "HCCL_NPU_SOCKET_PORT_RANGE", "HSA_NO_SCRATCH_RECLAIM",
    "NCCL_NVLS_ENABLE", "NCCL_MNNVL_ENABLE", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
    "CUDA_DEVICE_MAX_CONNECTIONS", "NVTX_INJECTION64_PATH",
    "VERL_FULL_DETERMINISM", "VLLM_BATCH_INVARIANT", "VERL_RL_INSIGHT_ENABLE",
    "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "FLASH_ATTENTION_DETERMINISTIC",
    "NCCL_DETERMINISTIC", "NCCL_ALGO",
})
SOCKET_KEYS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass
class SharedSubnet:
    """An IPv4 subnet every node has an address on: ``ifnames`` and ``addresses`` by hostname."""

    network: str
    ifnames: dict[str, str]
    addresses: dict[str, str]


@dataclasses.dataclass
class ClusterProfile:
    """The settings every node and job of a cluster gets.

    Attributes:
        env: derived keys with the same value on every node.
        node_env: derived keys whose value differs, by hostname (applied at node start).
        overrides: the user's keys; they win over ``env`` and ``node_env``.
        notes: what could not be derived and why.
        nodes: hostnames the profile was derived from.
        created_at: UNIX time of the probe.
    """

    env: dict[str, str] = dataclasses.field(default_factory=dict)
    node_env: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    nodes: list[str] = dataclasses.field(default_factory=list)
    created_at: float = dataclasses.field(default_factory=time.time)

    def job_env(self) -> dict[str, str]:
        """Env vars for every job's runtime_env: common keys plus overrides, none of verl's."""
        return without_reserved({**self.env, **self.overrides})

    def node_start_env(self, hostname: str) -> dict[str, str]:
        """Env vars for ``ray start`` on the node called ``hostname``."""
        return without_reserved({**self.env, **self.node_env.get(hostname, {}), **self.overrides})


def without_reserved(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the keys verl's PPO driver sets itself (``VERL_PPO_RESERVED_KEYS``)."""
    return {k: v for k, v in env.items() if k not in VERL_PPO_RESERVED_KEYS}


def _parse_lines(items: list[str] | tuple[str, ...], what: str) -> tuple[dict[str, str], list[str]]:
    """``KEY=VALUE`` strings to a dict, and a problem for each malformed one; ``what`` names an item's source."""
    env, problems = {}, []
    example = f"{'--env ' if what == '--env' else ''}NCCL_IB_GID_INDEX=3"
    for item in items:
        key, sep, value = item.removeprefix("export ").partition("=")
        if not sep or not _KEY_RE.fullmatch(key.strip()):
            problems.append(f"{what} {item!r} is not KEY=VALUE (e.g. {example})")
            continue
        if "\n" in value or "\r" in value:
            problems.append(f"{what} {key.strip()}=...: a value cannot hold a line break; give one line")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env, problems


def secret_env_problem(key: str) -> str:
    """Why ``--env KEY=...`` of ``doctor`` is refused when ``KEY`` names a secret, and what to do instead."""
    return (f"--env {key}=...: a secret has no place in the network profile (saved for every job, shown in "
            f"Ray's logs) nor on a command line (`ps` shows it to every user): export {key} in your shell "
            "instead; bridge-ray sends it to each job in a 0600 file")


# What `doctor --env` may put into the profile: NCCL's, Gloo's, UCX's and torch.distributed's own variables. Anything
# else (LD_PRELOAD, PATH) would ride along in every job without being tried by the all-reduce at all.
NETWORK_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "TORCH_NCCL_", "TORCH_GLOO_", "TORCH_DISTRIBUTED_")


def parse_env_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings (``doctor --env``).

    Raises:
        ConfigError: listing every malformed item, every secret-named key (``HF_TOKEN=...``) and every key that
            is no network setting (``NETWORK_PREFIXES``).
    """
    env, problems = _parse_lines(items, "--env")
    problems += env_problems(env)
    if problems:
        raise ConfigError(problems)
    return env


def env_problems(env: dict[str, str]) -> list[str]:
    """Why each of ``doctor --env``'s keys cannot join the profile: a secret, or no network setting."""
    allowed = ", ".join(f"{prefix}*" for prefix in NETWORK_PREFIXES)
    return [secret_env_problem(k) if is_secret(k) else
            f"--env {k}=...: the network profile takes only the collectives' settings ({allowed}), and every later "
            f"job carries it; give {k} to one job with `bridge-ray submit --env {k}=...`"
            for k in env if is_secret(k) or not k.startswith(NETWORK_PREFIXES)]


# ---- derivation ---------------------------------------------------------------------------


def _node_networks(probe: NodeProbe) -> dict[str, tuple[str, str]]:
    """``{network: (ifname, address)}`` for the node's up, non-loopback IPv4 addresses."""
    networks: dict[str, tuple[str, str]] = {}
    for iface in sorted(probe.interfaces, key=lambda i: i.name):
        if not iface.up or iface.loopback:
            continue
        for cidr in iface.ipv4:
            address = ipaddress.IPv4Interface(cidr)
            if address.is_link_local or address.is_loopback:
                continue
            networks.setdefault(str(address.network), (iface.name, str(address.ip)))
    return networks


def shared_subnets(probes: list[NodeProbe]) -> list[SharedSubnet]:
    """Subnets on which every node has its own address, best first.

    A subnet where two nodes hold the same address (docker0's 172.17.0.1 on every host) joins
    nothing and is skipped. The subnet holding Ray's node addresses comes first, since Ray
    already reached every node through it.
    """
    hosts = list({p.hostname: p for p in probes}.values())  # Ray nodes sharing a host count once
    per_node = [_node_networks(p) for p in hosts]
    common = set(per_node[0]).intersection(*per_node[1:]) if per_node else set()
    subnets = []
    for network in common:
        addresses = {p.hostname: nets[network][1] for p, nets in zip(hosts, per_node)}
        if len(set(addresses.values())) < len(hosts):
            continue
        ifnames = {p.hostname: nets[network][0] for p, nets in zip(hosts, per_node)}
        subnets.append(SharedSubnet(network, ifnames, addresses))

    def rank(subnet: SharedSubnet) -> tuple:
        net = ipaddress.IPv4Network(subnet.network)
        holds_ray = all(p.node_ip and ipaddress.IPv4Address(p.node_ip) in net for p in probes)
        return (not holds_ray, ipaddress.IPv4Network(subnet.network))

    return sorted(subnets, key=rank)


def select_hca_ports(ports: list[IbPort]) -> list[IbPort]:
    """The active ports NCCL should use: InfiniBand ones if any, else RoCE; the fastest only.

    Keeping only the top link rate leaves out a slower front-end or storage NIC that happens
    to be an RDMA device too.
    """
    active = [p for p in ports if p.active and p.link_layer in ("InfiniBand", "Ethernet")]
    chosen = [p for p in active if p.link_layer == "InfiniBand"] or active
    top = max((p.rate_gbps for p in chosen), default=0.0)
    return [p for p in chosen if p.rate_gbps == top]


def roce_gid_index(port: IbPort) -> int | None:
    """The RoCE v2 GID index NCCL should use: IPv4-mapped first, then global, then link-local."""
    v2 = [g for g in port.gids if g.type and "v2" in g.type.lower()]

    def rank(gid) -> tuple:
        link_local = gid.gid.lower().startswith("fe80")
        return (gid.ipv4 is None, link_local, gid.index)

    return min(v2, key=rank).index if v2 else None


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _node_derived(probe: NodeProbe, subnet: SharedSubnet | None, notes: list[str]) -> dict:
    env = {}
    if subnet:
        env.update({key: subnet.ifnames[probe.hostname] for key in SOCKET_KEYS})
    ports = sorted(select_hca_ports(probe.ib_ports), key=lambda p: _natural(p.name))
    if ports:
        env["NCCL_IB_HCA"] = "=" + ",".join(p.name for p in ports)
    roce = [p for p in ports if p.link_layer == "Ethernet"]
    indices = {roce_gid_index(p) for p in roce}
    if len(indices) == 1 and None not in indices:
        env["NCCL_IB_GID_INDEX"] = str(indices.pop())
    elif roce:
        notes.append(
            f"{probe.hostname}: RoCE ports disagree on a RoCE v2 GID index ({sorted(map(str, indices))}); "
            "NCCL_IB_GID_INDEX left to NCCL"
        )
    return env


def derive_profile(probes: list[NodeProbe]) -> ClusterProfile:
    """The profile for a cluster from the probes of all its nodes.

    Args:
        probes: one per node; ``node_ip`` (Ray's address of the node) ranks the subnets.

    Returns:
        A ClusterProfile whose ``env`` holds the keys equal on every node and whose
        ``node_env`` holds, by hostname, the keys that differ.
    """
    notes: list[str] = []
    subnets = shared_subnets(probes)
    if not subnets and len(probes) > 1:
        notes.append("no IPv4 subnet is shared by every node: NCCL/GLOO_SOCKET_IFNAME not set")
    per_node = {p.hostname: _node_derived(p, subnets[0] if subnets else None, notes) for p in probes}
    keys = set().union(*per_node.values()) if per_node else set()
    env = {
        k: next(iter(values))
        for k in sorted(keys)
        if len(values := {node.get(k) for node in per_node.values()}) == 1
    }
    node_env = {
        host: {k: v for k, v in node.items() if k not in env}
        for host, node in per_node.items()
        if any(k not in env for k in node)
    }
    return ClusterProfile(env=env, node_env=node_env, notes=notes, nodes=sorted(per_node))


# ---- files --------------------------------------------------------------------------------


def profile_path(name: str) -> Path:
    return records.cluster_dir(name) / "profile.json"


def overrides_path(name: str) -> Path:
    return records.cluster_dir(name) / "overrides.env"


def env_file_path(name: str) -> Path:
    """The shell file the SLURM bootstrap sources before ``ray start``."""
    return records.cluster_dir(name) / "profile.env"


def _refuse_secrets(keys, path: Path, fix: str) -> None:
    """ConfigError when a profile file names a secret: it would travel in every job's runtime_env."""
    secret = sorted({k for k in keys if is_secret(k)})
    if secret:
        names = ", ".join(secret)
        raise ConfigError(f"{path} sets {names}, a secret: a network profile travels in every job's runtime_env "
                          f"(Ray's logs, worker command lines): {fix} and export {names} in your shell instead "
                          "(bridge-ray sends it to each job in a 0600 file)")


def _doctor_command(name: str) -> str:
    return f"bridge-ray doctor{'' if name == records.DEFAULT_CLUSTER else ' --name ' + name}"


def load_overrides(name: str) -> dict[str, str]:
    """The user's overrides from ``overrides.env`` (empty when there is none).

    Raises:
        ConfigError: a line is not ``KEY=VALUE``, or sets a secret (refused rather than carried).
    """
    path = overrides_path(name)
    if not path.exists():
        return {}
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    env, problems = _parse_lines([ln for ln in lines if ln and not ln.startswith("#")], f"{path}: line")
    if problems:
        raise ConfigError([f"{problem}: fix or remove it" for problem in problems])
    _refuse_secrets(env, path, "remove that line" if sum(map(is_secret, env)) == 1 else "remove those lines")
    return env


def render_env_file(profile: ClusterProfile) -> str:
    """Shell text exporting the profile; keys that differ by node go in a case on the hostname."""
    lines = ["# bridge-ray network profile, written by `bridge-ray doctor`; user keys: overrides.env"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in without_reserved(profile.env).items()]
    if profile.node_env:
        lines.append('case "$(hostname)" in')
        for host, env in sorted(profile.node_env.items()):
            exports = "; ".join(f"export {k}={shlex.quote(v)}" for k, v in without_reserved(env).items())
            lines.append(f"  {shlex.quote(host)}) {exports} ;;")
        lines.append("esac")
    lines += [f"export {k}={shlex.quote(v)}" for k, v in without_reserved(profile.overrides).items()]
    return "\n".join(lines) + "\n"


def save_profile(name: str, profile: ClusterProfile) -> Path:
    """Write ``profile.json``, ``overrides.env`` and ``profile.env`` (each 0600); return the JSON's path.

    Raises:
        HomeNotWritable: the cluster's folder cannot take them.
    """
    records.writable_dir(records.cluster_dir(name))
    derived = {k: v for k, v in dataclasses.asdict(profile).items() if k != "overrides"}
    records.write_text(profile_path(name), json.dumps(derived, indent=2, sort_keys=True), mode=0o600)
    header = "# KEY=VALUE lines that win over the derived profile (bridge-ray doctor --env adds here)\n"
    records.write_text(overrides_path(name), header + "".join(f"{k}={v}\n" for k, v in profile.overrides.items()),
                       mode=0o600)
    records.write_text(env_file_path(name), render_env_file(profile), mode=0o600)
    return profile_path(name)


def load_profile(name: str) -> ClusterProfile | None:
    """The saved profile with the current ``overrides.env``, or None if doctor never ran.

    Raises:
        ConfigError: a file is unreadable, or sets a secret (refused rather than carried).
    """
    path = profile_path(name)
    if not path.exists():
        return None
    try:
        profile = ClusterProfile(**json.loads(path.read_text()))
        _refuse_secrets([*profile.env, *(k for env in profile.node_env.values() for k in env)], path,
                        f"run `{_doctor_command(name)}` to write it again")
    except (ValueError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise ConfigError(f"the network profile {path} is unreadable ({err}): run `{_doctor_command(name)}` "
                          "to write it again, or delete it") from None
    profile.overrides = load_overrides(name)
    return profile


def saved_profile_note(name: str) -> str | None:
    """A line for ``up``: the network profile an earlier ``doctor`` (or ``overrides.env``) left for ``name``,
    which every job of the new cluster gets, with how to derive it again; None when there is none."""
    try:
        profile = load_profile(name)
        keys = profile.job_env() if profile else without_reserved(load_overrides(name))
    except ConfigError as err:
        return f"warning: {err}"
    shown = sorted(keys) + (["per-node settings"] if profile and profile.node_env else [])
    if not shown:
        return None
    when = (f"saved by `bridge-ray doctor` on {time.strftime('%Y-%m-%d %H:%M', time.localtime(profile.created_at))}"
            if profile else f"from {overrides_path(name)}")
    return (f"jobs get the network profile {when} ({', '.join(shown)}): run `{_doctor_command(name)}` to derive "
            "it for this cluster again")


def profile_env(name: str) -> dict[str, str]:
    """Env vars every job on cluster ``name`` should get in its runtime_env.

    Merge it under the job's own variables, so the user's ``--env`` wins:
    ``env_vars = {**profile_env(name), **user_env}``. Empty when doctor never ran.

    Example:
        >>> runtime_env = {"env_vars": {**profile_env("default"), **{"WANDB_MODE": "offline"}}}
    """
    profile = load_profile(name) or ClusterProfile(overrides=load_overrides(name))
    return profile.job_env()


def node_env(name: str, hostname: str) -> dict[str, str]:
    """Env vars for ``ray start`` on ``hostname`` (what ``profile.env`` exports there)."""
    profile = load_profile(name) or ClusterProfile(overrides=load_overrides(name))
    return profile.node_start_env(hostname)
