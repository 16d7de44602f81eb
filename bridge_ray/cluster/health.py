"""Is a cluster's head answering? Polls the Jobs API instead of sleeping."""
from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request

from bridge_ray.cluster.auth import auth_headers
from bridge_ray.cluster.records import ClusterRecord, name_flag
from bridge_ray.errors import AuthError, BridgeRayError, ClusterStale, ClusterUnresponsive

# Never through the shell's HTTP(S)_PROXY: the request carries the cluster's token.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(record: ClusterRecord, path: str, timeout_s: float = 5.0):
    """GET ``path`` from the cluster's dashboard with its auth header (never via a proxy) and decode JSON.

    Raises:
        AuthError: the head refused the token.
        OSError: the head did not answer.
    """
    request = urllib.request.Request(record.dashboard_url.rstrip("/") + path, headers=auth_headers(record))
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise AuthError(
                f"cluster {record.name!r} refused the auth token in {record.token_path} (HTTP {err.code}): "
                f"the file does not match the head's token; restore it, or recreate the cluster with "
                f"`bridge-ray down --name {record.name} && bridge-ray up --name {record.name}`"
            ) from None
        raise


def is_alive(record: ClusterRecord, timeout_s: float = 2.0) -> bool:
    """Whether the head's Jobs API answers and, for a head on this machine, its GCS is not gone (an
    auth refusal still raises AuthError). Without the GCS check a killed head looks alive for the
    60 s its dashboard outlives it, and each Jobs API call hangs ~30 s in that window. A remote
    GCS is not asked here: a firewall may reject its port from this machine while the head works."""
    try:
        get_json(record, "/api/version", timeout_s=timeout_s)
    except AuthError:
        raise
    except (OSError, ValueError):
        return False
    host = record.gcs_address.rpartition(":")[0]
    return not (host in ("127.0.0.1", "localhost", "::1") and gcs_refuses(record))


def gcs_refuses(record: ClusterRecord, timeout_s: float = 2.0) -> bool:
    """Whether the head's GCS port refuses connections: nothing listens there, so the GCS is gone
    (its dashboard answers HTTP for up to 60 s more). A timeout or no recorded address proves nothing.
    Asked of a remote head only once its Jobs API has failed (a firewall that rejects this port must
    not make a working head look dead)."""
    host, _, port = record.gcs_address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def head_gone(record: ClusterRecord, timeout_s: float = 2.0) -> bool:
    """Whether the head is certainly gone, not only slow: nothing listens at its Jobs API port (the connection is
    refused), or, for a head on this machine, at its GCS port. A probe that times out proves nothing: a busy or
    paused head, or a network that hiccups, must not have its runs recorded lost and their secrets removed."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(record.dashboard_url)
        where = (url.hostname, url.port) if url.hostname and url.port else None
    except ValueError:
        where = None
    if where:
        try:
            socket.create_connection(where, timeout=timeout_s).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            pass
    host = record.gcs_address.rpartition(":")[0]
    return host in ("127.0.0.1", "localhost", "::1") and gcs_refuses(record, timeout_s)


UNRESPONSIVE_S = 10.0  # how long a head that is not certainly gone is asked again before a command gives up


def answers_soon(record: ClusterRecord, within_s: float = UNRESPONSIVE_S) -> bool:
    """``is_alive``, asked again for up to ``within_s`` while the head is not certainly gone (``head_gone``): a
    head that misses one 2 s probe (busy, or paused for a moment) is not taken for a dead one."""
    deadline = time.monotonic() + within_s
    while not is_alive(record):
        if time.monotonic() > deadline or head_gone(record):
            return False
        time.sleep(0.5)
    return True


async def gcs_answers(record: ClusterRecord, timeout_s: float = 2.0) -> bool:
    """Whether the head's GCS port takes a TCP connection (False for a record without a GCS address).

    A killed GCS refuses at once, while the dashboard keeps answering HTTP (and keeps a job's log
    stream open) until Ray's own GCS reconnect timeout, 60 s, ends it.
    """
    host, _, port = record.gcs_address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def watch_gcs(record: ClusterRecord, every_s: float = 2.0, misses: int = 2) -> None:
    """Return once the head's GCS has refused ``misses`` checks in a row; never, if it did not answer at the start
    (a GCS this machine cannot reach, e.g. behind a SLURM cluster's firewall, proves nothing)."""
    if not await gcs_answers(record):
        await asyncio.Event().wait()
    missed = 0
    while missed < misses:
        await asyncio.sleep(every_s)
        missed = 0 if await gcs_answers(record) else missed + 1


def require_started(record: ClusterRecord) -> None:
    """Raise ClusterStale for a cluster whose SLURM allocation is still queued (``up --slurm --keep-pending``):
    it has no head to ask yet, and `down` (the stale-record fix) would cancel its place in the queue."""
    if record.backend == "slurm" and not record.dashboard_url:
        flag = name_flag(record.name)
        raise ClusterStale(f"cluster {record.name!r} has not started: its SLURM allocation (job "
                           f"{(record.slurm or {}).get('job_id')}) is still queued; `bridge-ray status{flag}` shows "
                           f"when it starts (`bridge-ray down{flag}` cancels it)")


def check_alive(record: ClusterRecord) -> None:
    """Raise ClusterStale, with the fix, when the recorded head does not answer (or has not started)."""
    require_started(record)
    if not is_alive(record):
        raise stale_error(record, f"its head at {record.dashboard_url} does not answer")


def stale_error(record: ClusterRecord, what: str) -> ClusterStale:
    """The one-line error for a recorded cluster whose head is gone; ``what`` says what was seen."""
    return ClusterStale(f"cluster {record.name!r} is recorded but {what} (stale record): "
                        f"run `bridge-ray down{name_flag(record.name)}` to clear it, then `{up_again(record)}`")


def unresponsive_error(record: ClusterRecord, doing: str, waited_s: float = UNRESPONSIVE_S) -> ClusterUnresponsive:
    """The one-line error for a head that did not answer for ``waited_s`` but is not certainly gone."""
    return ClusterUnresponsive(
        f"the head of cluster {record.name!r} at {record.dashboard_url} did not answer for {waited_s:.0f} s "
        f"while {doing} (busy, paused, or its network is down); nothing was recorded: try again, or see "
        f"`bridge-ray status{name_flag(record.name)}`")


def up_again(record: ClusterRecord) -> str:
    """The command that brings a stale cluster back under its name."""
    flag = name_flag(record.name)
    if record.backend == "slurm":
        return f"bridge-ray up --slurm{flag} ..."
    if record.backend == "address":
        return f"bridge-ray up{flag} --address {record.dashboard_url or 'URL'} --token-file FILE"
    return f"bridge-ray up{flag}"


def wait_ready(record: ClusterRecord, timeout_s: float = 60.0) -> None:
    """Poll until the Jobs API lists jobs, or raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            get_json(record, "/api/jobs/", timeout_s=2.0)
            return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise BridgeRayError(
                    f"the Ray head of cluster {record.name!r} did not become ready within {timeout_s:.0f} s: "
                    f"see the logs under {record.temp_dir}"
                ) from None
            time.sleep(0.1)


def nodes_alive(record: ClusterRecord) -> int:
    """How many of the cluster's nodes are ALIVE (0 when the head does not answer)."""
    try:
        return len(alive_nodes(record) or [])
    except OSError:
        return 0


def alive_nodes(record: ClusterRecord) -> list[dict] | None:
    """The cluster's ALIVE nodes as a driver's ``ray.nodes()`` rows (``NodeID``, ``NodeManagerAddress``,
    ``Resources``: the totals), asked of its Jobs API; None when the answer is no node list.

    Raises:
        OSError: the head did not answer in ``UNRESPONSIVE_S`` (or answered with an HTTP error).
    """
    try:
        data = get_json(record, "/api/v0/nodes?detail=1&limit=10000", timeout_s=UNRESPONSIVE_S)
    except json.JSONDecodeError:
        return None
    try:
        nodes = data["data"]["result"]["result"]
        return [{"NodeID": n["node_id"], "NodeManagerAddress": n["node_ip"], "Alive": True,
                 "Resources": dict(n["resources_total"])} for n in nodes if n.get("state") == "ALIVE"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
