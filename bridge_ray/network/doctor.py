"""``bridge-ray doctor``: probe every node, derive the profile, prove it with an all-reduce.

Example:
    >>> report = run_doctor("default", timeout_s=60)
    >>> print(render_table(report))
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid

import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from bridge_ray.cluster import records
from bridge_ray.cluster import health, local
from bridge_ray.cluster.auth import auth_env
from bridge_ray.errors import ConfigError
from bridge_ray.network import collective, probe
from bridge_ray.network.checks import FAIL, PASS, Check, static_checks
from bridge_ray.network.probe import NodeProbe
from bridge_ray.network.profile import (
    SOCKET_KEYS, VERL_PPO_RESERVED_KEYS, ClusterProfile, derive_profile, load_overrides,
    env_problems, save_profile,
)

# Starting a task's or a rank's process (Ray worker start-up, importing torch) is not what the doctor
# measures, and on a busy node it takes far longer than any network stage: it gets its own bound.
STARTUP_S = 300.0
RUNTIME_ENV_FIX = ("Ray's runtime-env agent on a node failed or answered too late (a loaded node): run "
                   "`bridge-ray doctor` again; if it fails again, look in the node's Ray logs "
                   "(runtime_env_agent.log, raylet.out)")
# The all-reduce's limit: above 0, and no longer than an hour (a collective that slow has failed anyway).
MAX_TIMEOUT_S = 3600.0
# Nodes need only ray and torch to run these two modules, not bridge_ray itself.
ray.cloudpickle.register_pickle_by_value(probe)
ray.cloudpickle.register_pickle_by_value(collective)


@dataclasses.dataclass
class DoctorReport:
    """What ``doctor`` found.

    Attributes:
        checks: the table's rows, in order; the all-reduce is last.
        probes: one per node that answered.
        profile: the profile derived from the probes (plus overrides once saved).
        backend: ``gloo`` (CPU) or ``nccl`` (GPU).
        world_size: ranks in the all-reduce.
        nbytes: bytes all-reduced per iteration.
        busbw_gbps: bus bandwidth in GB/s (nccl-tests' definition); None if it failed or
            ran on one rank (nothing crossed a link).
        algbw_gbps: bytes per second of one all-reduce, in GB/s.
        transport: what carried the traffic (gloo interface, or NCCL's network and channels).
        profile_path: where ``run_doctor`` saved the profile.
    """

    checks: list[Check]
    probes: list[NodeProbe]
    profile: ClusterProfile
    backend: str = ""
    world_size: int = 0
    nbytes: int = 0
    busbw_gbps: float | None = None
    algbw_gbps: float | None = None
    transport: str = ""
    profile_path: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status == PASS for c in self.checks)


@dataclasses.dataclass
class _Node:
    node_id: str
    ip: str
    gpus: int


def _alive_nodes() -> list[_Node]:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    nodes.sort(key=lambda n: "node:__internal_head__" not in n["Resources"])
    return [_Node(n["NodeID"], n["NodeManagerAddress"], int(n["Resources"].get("GPU", 0))) for n in nodes]


def _on(node: _Node) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def _write_markers(dirs: list[str], token: str) -> None:
    """Write the doctor's marker into each directory; the caller removes them (also after a failure)."""
    for directory in dirs:
        try:
            probe.marker_path(directory, token).write_text(token)
        except OSError as err:
            raise ConfigError(f"cannot write a file in {directory} ({err.strerror or type(err).__name__}): "
                              "each shared directory must be a folder you can write; give another "
                              "--shared-dir") from None


def _probe_all(nodes: list[_Node], dirs: list[str], timeout_s: float) -> tuple[list[NodeProbe], list[Check]]:
    """Run ``probe_node`` pinned to each node; nodes that do not answer in time become FAILs."""
    token = uuid.uuid4().hex
    try:
        _write_markers(dirs, token)
        task = ray.remote(num_cpus=0, max_retries=0)(probe.probe_node)
        refs = {task.options(scheduling_strategy=_on(n)).remote(markers={d: token for d in dirs}): n for n in nodes}
        limit = max(timeout_s, STARTUP_S)
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=limit)
        probes, checks = [], []
        for ref, node in refs.items():
            error = "" if ref in ready else f"no answer within {limit:g} s"
            if not error:
                try:
                    found = NodeProbe.from_dict(ray.get(ref))
                except ray.exceptions.RayError as err:
                    error = _last_line(str(err))
            if error:
                ray.cancel(ref, force=True)
                checks.append(Check(f"probe {node.ip}", FAIL, error,
                                    "look at that node's raylet log, or raise --timeout"))
                continue
            found.node_ip = node.ip
            probes.append(found)
        return probes, checks
    finally:
        for directory in dirs:
            try:
                probe.marker_path(directory, token).unlink(missing_ok=True)
            except OSError:  # never written (_write_markers refused the directory)
                pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else text


def _rank_env(profile: ClusterProfile, hostname: str, forced: dict[str, str], backend: str,
              rank: int, token: str) -> dict[str, str]:
    env = {**profile.env, **profile.node_env.get(hostname, {}), **forced}
    if backend == "nccl":  # read back by the rank to report the transport NCCL chose
        env.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,NET",
                   NCCL_DEBUG_FILE=f"/tmp/bridge-ray-doctor-{token}-{rank}/nccl.%h.%p.log")
    return env


def _allreduce_fix(forced: dict[str, str], profile: ClusterProfile, backend: str) -> str:
    used = {k: forced[k] for k in (*SOCKET_KEYS, "NCCL_IB_HCA", "NCCL_IB_GID_INDEX") if k in forced}
    if used:
        forced_text = " ".join(f"--env {k}={v}" for k, v in used.items())
        detected = ", ".join(f"{k}={v}" for k, v in profile.env.items()) or "nothing"
        return (f"the ranks could not connect with {forced_text}: drop it (and its line in "
                f"overrides.env) to use the detected profile ({detected})")
    fix = ("check that TCP is open between the nodes on all ports (firewall) and that the "
           "profile's interface routes between them")
    if backend == "nccl":
        fix += "; rerun with --env NCCL_DEBUG=INFO to see NCCL's choice"
    return fix


def _plan(nodes: list[_Node], hosts: dict[str, str]) -> tuple[str, list[_Node]]:
    """The backend, and the node of each rank: one per GPU (nccl) or one per CPU node (gloo)."""
    gpu_nodes = [n for n in nodes if n.gpus and n.ip in hosts]
    if gpu_nodes:
        return "nccl", [n for n in gpu_nodes for _ in range(n.gpus)]
    return "gloo", [n for n in nodes if n.ip in hosts]


def _measured(name: str, nbytes: int, results: list[dict]) -> tuple[Check, dict]:
    world, seconds = len(results), max(res["seconds"] for res in results)
    algbw = nbytes / seconds / 1e9
    info = {"algbw_gbps": algbw, "transport": results[0]["transport"]}
    if world == 1:  # nothing crossed a link: nccl-tests' bus bandwidth is 0 by definition
        return Check(name, PASS, f"1 rank, {nbytes >> 20} MiB in {seconds * 1e3:.2f} ms "
                                 f"(no link to measure with one rank); {info['transport']}"), info
    info["busbw_gbps"] = collective.bus_bandwidth_gbps(nbytes, seconds, world)
    return Check(name, PASS, f"{world} ranks, {nbytes >> 20} MiB in {seconds * 1e3:.1f} ms: bus bandwidth "
                             f"{info['busbw_gbps']:.2f} GB/s; {info['transport']}"), info


def _results(refs: list) -> list[tuple]:
    """``(ref, result)`` pairs; a rank whose process died counts as a failed rank."""
    pairs = []
    for ref in refs:
        try:
            pairs.append((ref, ray.get(ref)))
        except ray.exceptions.RayError as err:  # e.g. the process crashed inside NCCL
            pairs.append((ref, {"ok": False, "error": str(err)}))
    return pairs


def _start_ranks(ranks: list[_Node], envs: list[dict[str, str]], backend: str) -> list:
    """One all-reduce rank actor on each of ``ranks``' nodes, with its variables."""
    worker = ray.remote(collective.AllReduceRank)
    return [worker.options(num_cpus=0, num_gpus=int(backend == "nccl"), max_restarts=0,
                           scheduling_strategy=_on(node), runtime_env=_rank_runtime_env(env)).remote()
            for node, env in zip(ranks, envs)]


def _rank_runtime_env(env: dict[str, str]) -> dict:
    """A rank's runtime_env: its variables only (its code travels pickled by value)."""
    return {"env_vars": env}


def _allreduce(nodes: list[_Node], probes: list[NodeProbe], profile: ClusterProfile,
               forced: dict[str, str], timeout_s: float, nbytes: int | None) -> tuple[Check, dict]:
    """All-reduce across the ranks of ``_plan``: ranks start (torch imported) within ``STARTUP_S``, then the
    collective gets ``timeout_s`` (enforced by the ranks themselves; the wait here only adds slack)."""
    hosts = {p.node_ip: p.hostname for p in probes}
    backend, ranks = _plan(nodes, hosts)
    nbytes = nbytes or (1 << 30 if backend == "nccl" else 16 << 20)
    name, fix = f"all-reduce ({backend})", _allreduce_fix(forced, profile, backend)
    info = {"backend": backend, "world_size": len(ranks), "nbytes": nbytes}
    token = uuid.uuid4().hex[:12]
    envs = [_rank_env(profile, hosts[node.ip], forced, backend, r, token) for r, node in enumerate(ranks)]
    actors, retried = [], ""
    try:
        for attempt in (1, 2):
            actors += _start_ranks(ranks, envs, backend)
            started = actors[-len(ranks):]
            try:
                endpoints = ray.get([a.endpoint.remote() for a in started], timeout=max(timeout_s, STARTUP_S))
                break
            except ray.exceptions.RuntimeEnvSetupError as err:
                # Ray's runtime-env agent gave up on the ranks' variables (CI saw it on a loaded node):
                # nothing of the network was tried yet, so start the ranks once more.
                if attempt == 2:
                    return Check(name, FAIL, f"could not start {len(ranks)} ranks, twice: Ray could not set up "
                                             f"their runtime env ({_last_line(str(err))})", RUNTIME_ENV_FIX), info
                retried = _last_line(str(err))
            except ray.exceptions.RayError as err:  # GetTimeoutError included
                return Check(name, FAIL, f"could not start {len(ranks)} ranks: {_last_line(str(err))}",
                             "free the GPUs (`bridge-ray list`, `bridge-ray stop`) or raise --timeout"), info
        args = (len(ranks), "%s:%d" % endpoints[0], backend, nbytes, 20 if backend == "nccl" else 5, timeout_s)
        refs = [a.run.remote(r, *args) for r, a in enumerate(started)]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s + 60)
        where = {ref: f"rank {r} on {hosts[ranks[r].ip]}" for r, ref in enumerate(refs)}
        errors = [f"{where[ref]}: {_last_line(res['error'])}" for ref, res in _results(ready) if not res["ok"]]
        if pending:
            late = ", ".join(where[ref] for ref in pending)
            return Check(name, FAIL, "; ".join([f"timed out after {timeout_s:g} s ({late} never finished)",
                                                *errors[:1]]), fix), info
        if errors:
            return Check(name, FAIL, errors[0], fix), info
        check, measured = _measured(name, nbytes, [res for _, res in _results(refs)])
        if retried:
            check.detail += f" (ranks started on a second try: Ray's runtime env setup failed once: {retried})"
        return check, {**info, **measured}
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def doctor(address: str | None = None, timeout_s: float = 60.0, force_env: dict[str, str] | None = None,
           shared_dirs: list[str] | tuple[str, ...] = (), nbytes: int | None = None) -> DoctorReport:
    """Probe every alive node, derive the profile and prove it with an all-reduce.

    Args:
        address: Ray address to connect to when Ray is not initialised in this process.
        timeout_s: limit of the all-reduce once its ranks run; probes and ranks get at least
            ``STARTUP_S`` to start. Nothing hangs past these.
        force_env: variables that win over the derived profile in the all-reduce (``--env``).
        shared_dirs: directories every node must see (BRIDGE_RAY_HOME, output dirs).
        nbytes: bytes per all-reduce (default 16 MiB on CPU, 1 GiB on GPU).

    Returns:
        A DoctorReport; ``report.ok`` is False when any check failed. Nothing is saved.
    """
    forced = dict(force_env or {})
    owned = not ray.is_initialized()
    if owned:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = _alive_nodes()
        probes, checks = _probe_all(nodes, [str(d) for d in shared_dirs], timeout_s)
        profile = derive_profile(probes)
        if not probes:
            return DoctorReport(checks=checks, probes=probes, profile=profile)
        checks += static_checks(probes, forced, str(records.home_dir()))
        check, info = _allreduce(nodes, probes, profile, forced, timeout_s, nbytes)
        return DoctorReport(checks=[*checks, check], probes=probes, profile=profile, **info)
    finally:
        if owned:
            ray.shutdown()


def _use_auth(record: records.ClusterRecord) -> None:
    """Point this process's Ray at the cluster's token (or auth off, as the record says), and at its address."""
    os.environ.update(auth_env(record))
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if record.backend == "local":
        # A local head listens on 127.0.0.1 only; Ray would swap a loopback address for the machine's.
        local.attach_here()
    # Ray caches RAY_AUTH_MODE and the token when it is imported; refresh both, as
    # ray._private.authentication does when it turns token auth on.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def check_options(timeout_s: float, env: dict[str, str]) -> None:
    """The doctor's timeout and ``--env`` keys, before anything runs.

    Raises:
        ConfigError: a timeout not above 0 or over ``MAX_TIMEOUT_S`` (NaN included), a secret-named key, or one
            that is no network setting (``env_problems``).
    """
    problems = [] if 0 < timeout_s <= MAX_TIMEOUT_S else [
        f"--timeout {timeout_s:g} is out of range: give the seconds the all-reduce may take, above 0 and at "
        f"most {MAX_TIMEOUT_S:g}, e.g. --timeout 60"]
    problems += env_problems(env)
    if problems:
        raise ConfigError(problems)


def checked_shared_dirs(dirs: list[str] | tuple[str, ...]) -> list[str]:
    """The ``--shared-dir`` folders as absolute paths (a node would read a relative one from its own cwd).

    Raises:
        ConfigError: one is missing, not a folder, or not writable. Nothing is created: a mistyped
            path must not become a new folder.
    """
    found, problems = [], []
    for given in dirs:
        path = os.path.abspath(os.path.expanduser(given))
        if not os.path.exists(path):
            problems.append(f"--shared-dir {given} does not exist: give an existing folder every node must see "
                            "(e.g. the output dir), or create it first")
        elif not os.path.isdir(path):
            problems.append(f"--shared-dir {given} is not a folder: give the folder every node must see "
                            "(e.g. the output dir)")
        elif not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"--shared-dir {given} is not writable by you: the doctor writes a marker file "
                            "there; give a folder you can write")
        else:
            found.append(path)
    if problems:
        raise ConfigError(problems)
    return list(dict.fromkeys(found))


def run_doctor(name: str = records.DEFAULT_CLUSTER, timeout_s: float = 60.0,
               env: dict[str, str] | None = None, shared_dirs: list[str] | tuple[str, ...] = ()) -> DoctorReport:
    """Run the doctor on a recorded cluster and save its profile for later nodes and jobs.

    The user's ``env`` joins ``overrides.env`` only if the all-reduce, and the check of each interface
    it names, passed with it; keys that verl's PPO driver sets itself are never saved, and neither
    ``env`` nor the saved profile may name a secret (``runtime_env.is_secret``). This process becomes a Ray driver of
    ``record.gcs_address``, so run it where a driver can join: a cluster node (the local
    head, or inside the SLURM allocation).

    Args:
        name: the cluster record to use.
        timeout_s: limit of the all-reduce (see ``doctor``).
        env: ``--env`` overrides, tried on top of the saved ones; an empty value (``KEY=``) tries without ``KEY``
            and, if that passes, removes it from ``overrides.env``.
        shared_dirs: existing, writable directories beyond BRIDGE_RAY_HOME that every node must see.

    Raises:
        ConfigError: a timeout out of range, a secret-named key in ``env`` or in the saved profile, or a
            shared directory that is missing, not a folder, or not writable; nothing is written.
        ClusterNotFound: no record called ``name``.
        ClusterStale: nothing listens at its GCS address.

    Example:
        >>> report = run_doctor("default", env={"NCCL_IB_GID_INDEX": "3"})
        >>> report.ok, report.profile_path
    """
    env = dict(env or {})
    check_options(timeout_s, env)
    dirs = checked_shared_dirs(shared_dirs)
    record = records.load(records.check_name(name))
    saved = load_overrides(name)
    removed = sorted(k for k, v in env.items() if v == "")  # KEY= : drop KEY from overrides.env
    overrides = {k: v for k, v in {**saved, **env}.items() if k not in removed}
    if health.gcs_refuses(record):  # a dead head: one line now, not a Ray driver waiting minutes to join
        raise health.stale_error(record, f"nothing listens at its GCS {record.gcs_address}")
    _use_auth(record)
    report = doctor(record.gcs_address, timeout_s, overrides, list(dict.fromkeys([str(records.home_dir()), *dirs])))
    if not report.probes:  # nothing learned: keep the profile saved before
        return report
    collective_passed = report.checks[-1].status == PASS
    refused = [c.name for c in report.checks if c.status == FAIL and c.name in {f"interface {k}" for k in env}]
    kept = overrides if collective_passed and not refused else load_overrides(name)
    dropped = sorted(k for k in kept if k in VERL_PPO_RESERVED_KEYS)
    report.profile.overrides = {k: v for k, v in kept.items() if k not in VERL_PPO_RESERVED_KEYS}
    if dropped:
        report.profile.notes.append(
            f"not saved: {', '.join(dropped)} (set by verl's PPO driver; pass it to the job's --env)")
    if env and not collective_passed:
        report.profile.notes.append("--env not saved: the all-reduce failed with it")
    elif refused:
        report.profile.notes.append(f"--env not saved: the check {', '.join(refused)} failed")
    elif removed:
        gone = [k for k in removed if k in saved]
        unset = [k for k in removed if k not in saved]
        report.profile.notes += [f"removed from overrides.env: {', '.join(gone)}"] if gone else []
        report.profile.notes += [f"not in overrides.env, nothing to remove: {', '.join(unset)}"] if unset else []
    report.profile_path = str(save_profile(name, report.profile))
    return report


def to_json(report: DoctorReport) -> str:
    """The report as JSON for scripts (``bridge-ray doctor --json``)."""
    return json.dumps({"ok": report.ok, **dataclasses.asdict(report)}, indent=2, sort_keys=True)


def render_table(report: DoctorReport) -> str:
    """The report as a plain-text PASS/FAIL table, each FAIL followed by its fix, then the profile."""
    width = max([len(c.name) for c in report.checks] + [5])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    for c in report.checks:
        lines.append(f"{c.name:<{width}}  {c.status:<6}  {c.detail}")
        if c.status == FAIL:
            lines.append(f"{'':<{width}}  {'fix:':<6}  {c.fix}")
    env = report.profile.job_env()
    where = f" (saved to {report.profile_path})" if report.profile_path else ""
    lines += ["", f"profile{where}:"]
    lines += [f"  {k}={v}" for k, v in env.items()] or ["  (nothing to set)"]
    for host, node in sorted(report.profile.node_env.items()):
        lines.append(f"  on {host}: " + " ".join(f"{k}={v}" for k, v in node.items()))
    lines += [f"  note: {n}" for n in report.profile.notes]
    lines += ["", "PASS" if report.ok else "FAIL: fix the rows above and rerun `bridge-ray doctor`"]
    return "\n".join(lines)
