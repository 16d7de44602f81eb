"""Is a cluster's head answering? Polls the Jobs API instead of sleeping."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from bridge_ray.cluster.auth import auth_headers
from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import AuthError, BridgeRayError, ClusterStale

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
    """Whether the head's Jobs API answers (an auth refusal still raises AuthError)."""
    try:
        get_json(record, "/api/version", timeout_s=timeout_s)
    except AuthError:
        raise
    except (OSError, ValueError):
        return False
    return True


def check_alive(record: ClusterRecord) -> None:
    """Raise ClusterStale, with the fix, when the recorded head does not answer."""
    if not is_alive(record):
        raise ClusterStale(
            f"cluster {record.name!r} is recorded but its head at {record.dashboard_url} does not answer "
            f"(stale record): run `bridge-ray down{_name_flag(record)}` to clear it, then "
            f"`bridge-ray up{_name_flag(record)}`"
        )


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
        nodes = get_json(record, "/api/v0/nodes?detail=1&limit=10000", timeout_s=10.0)["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return sum(n.get("state") == "ALIVE" for n in nodes)


def _name_flag(record: ClusterRecord) -> str:
    return "" if record.name == "default" else f" --name {record.name}"
