"""Ray token authentication: one token per cluster, in a 0600 file beside its record.

The token value is only ever read into an HTTP header or a child's environment
(``RAY_AUTH_TOKEN_PATH`` names the file, never the value); it never reaches argv,
logs or records.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from bridge_ray.cluster.records import ClusterRecord
from bridge_ray.errors import AuthError


def new_token_file(path: Path) -> Path:
    """Write a fresh 256-bit token to ``path`` with mode 0600 (kept if it already exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def read_token(record: ClusterRecord) -> str | None:
    """The cluster's token, or None when the cluster runs without auth.

    Raises:
        AuthError: the record names a token file that is missing or empty.
    """
    if not record.token_path:
        return None
    path = Path(record.token_path)
    try:
        token = path.read_text().strip() if path.exists() else ""
    except UnicodeDecodeError:
        token = "\0"  # no text: not a token (below)
    except OSError:
        token = None
    if not token:
        raise AuthError(
            f"the auth token of cluster {record.name!r} is missing ({path}): "
            f"restore the file, or re-register with `bridge-ray up --name {record.name} --address ... --token-file FILE`"
        )
    if len(token) > 4096 or not token.isprintable() or any(c.isspace() for c in token):
        raise AuthError(f"{path} does not hold a Ray auth token (one word on one line): pass the cluster's own token "
                        f"file (Ray writes it as ~/.ray/auth_token on its head)")
    return token


def auth_headers(record: ClusterRecord) -> dict[str, str]:
    """HTTP headers for the cluster's Jobs API."""
    token = read_token(record)
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_env(record: ClusterRecord) -> dict[str, str]:
    """Environment that lets a Ray process (driver, ``ray`` CLI) join this cluster."""
    if not record.token_path:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": record.token_path}
