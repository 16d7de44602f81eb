"""Weights & Biases for a run: names from the config or ``WANDB_*`` env, the key only from the environment.

verl starts W&B itself when ``wandb`` is in ``trainer.logger``: it passes the project and
experiment names and reads ``WANDB_ENTITY``; wandb reads ``WANDB_RUN_GROUP``, ``WANDB_MODE``,
``WANDB_DIR`` and ``WANDB_API_KEY`` from the environment (all ``WANDB_*`` variables travel in
the job's runtime_env). So bridge-ray only

1. resolves the names: ``WANDB_PROJECT`` / ``WANDB_NAME`` win over the config's, so nothing is
   edited in files to change them (``resolve_names``);
2. sets the job's env: ``WANDB_DIR`` inside the run directory, and ``WANDB_MODE=offline`` when no
   ``WANDB_API_KEY`` travels (``job_env``);
3. finds the W&B run afterwards: its URL, or the offline folder and its ``wandb sync`` command
   (``find_run``).

The API key is never printed, recorded or passed on a command line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

KEY_ENV = "WANDB_API_KEY"
_RUN_FOLDER = re.compile(r"^(offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9]+)$")
_FINISHING = re.compile(r"finishing run (\S*)/(\S+)/([A-Za-z0-9]+)")


def resolve_names(project: str, experiment: str, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The W&B project and run name: ``WANDB_PROJECT`` / ``WANDB_NAME`` when set, else the config's.

    Example:
        >>> resolve_names("bridge-ray-sft", "tiny", {"WANDB_PROJECT": "gsm8k"})
        ('gsm8k', 'tiny')
    """
    environ = os.environ if environ is None else environ
    return environ.get("WANDB_PROJECT") or project, environ.get("WANDB_NAME") or experiment


def job_env(run_dir: Path, env_vars: dict[str, str]) -> dict[str, str]:
    """W&B env for a job whose runtime_env carries ``env_vars``; the caller's own values win over these.

    ``WANDB_DIR`` puts W&B's files in the run directory; without a ``WANDB_API_KEY`` the run is
    offline (``WANDB_MODE=offline``) instead of failing at login.
    """
    env = {"WANDB_DIR": str(run_dir)}
    if not env_vars.get(KEY_ENV):
        env["WANDB_MODE"] = "offline"
    return env


def sync_command(run_folder: str | Path) -> str:
    """The command that uploads an offline W&B run once a key is available."""
    return f"wandb sync {run_folder}"


def announce(environ: dict[str, str] | None = None) -> str:
    """One line for the job's log saying where W&B writes and, offline, how to sync later."""
    environ = os.environ if environ is None else environ
    folder = Path(environ.get("WANDB_DIR") or ".") / "wandb"
    if environ.get("WANDB_MODE") == "offline" or not environ.get(KEY_ENV):
        return (f"[bridge-ray] W&B is offline (no {KEY_ENV} in the job's environment): files go to {folder}; "
                f"upload later with `{sync_command(folder / 'offline-run-*')}`")
    return f"[bridge-ray] W&B is online; local files go to {folder}"


def _app_url(environ: dict[str, str]) -> str:
    base = (environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")
    return base.replace("://api.", "://", 1)


def find_run(wandb_dir: str | Path, environ: dict[str, str] | None = None) -> dict | None:
    """The newest W&B run under ``wandb_dir`` (the ``WANDB_DIR`` given to the job), or None.

    Returns:
        ``{"mode", "run_id", "dir", "url", "sync_command"}``: ``url`` when the run was online (or
        its entity is known), ``sync_command`` when it was offline.
    """
    environ = os.environ if environ is None else environ
    root = Path(wandb_dir) / "wandb"
    matches = sorted(((m.group(2), m, p) for p in root.glob("*run-*") if (m := _RUN_FOLDER.match(p.name))),
                     key=lambda found: found[0])
    if not matches:
        return None
    _, match, folder = matches[-1]
    offline, run_id = match.group(1), match.group(3)
    log = folder / "logs" / "debug.log"
    found = _FINISHING.search(log.read_text(errors="replace")) if log.is_file() else None
    entity, project = (found.group(1), found.group(2)) if found else (environ.get("WANDB_ENTITY", ""), None)
    url = f"{_app_url(environ)}/{entity}/{project}/runs/{run_id}" if entity and project else None
    return {"mode": "offline" if offline else "online", "run_id": run_id, "dir": str(folder),
            "project": project, "entity": entity or None, "url": url,
            "sync_command": sync_command(folder) if offline else None}
