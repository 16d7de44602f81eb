"""What a job carries: its working_dir (checked for size) and an allow-listed env.

Only variables on the allow-list (plus the cluster's network profile and the
user's ``--env``) travel; never all of ``os.environ``. Secrets travel (a job needs
``HF_TOKEN``) but never in the runtime_env, which Ray puts on worker command lines:
``bridge_ray.jobs.credentials`` carries them in a 0600 file; they are redacted wherever a
plan is shown or recorded.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from pathlib import Path

from bridge_ray.cluster.records import home_dir
from bridge_ray.errors import ConfigError, WorkingDirTooLarge
from bridge_ray.secret_env import is_secret  # noqa: F401 - named here by its users since before

ENV_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "NVTE_", "TORCH_NCCL_", "HF_", "WANDB_", "VERL_")
ENV_NAMES = ("CUDA_DEVICE_MAX_CONNECTIONS",)
DEFAULT_EXCLUDES = (
    ".git", ".venv", "venv", "__pycache__", "*.egg-info", ".pytest_cache", "checkpoints",
    "*.safetensors", "*.pt", "*.pth", "*.bin", "wandb", "outputs",
    # credentials a folder may hold (a job has its secrets from bridge-ray's 0600 file, never from its upload)
    ".ssh", ".aws", ".azure", ".gnupg", ".docker", ".kube", ".netrc", ".git-credentials", ".pypirc", ".env",
    ".cache", "/.config/gcloud", "*.pem", "*.key", "id_rsa*", "id_ecdsa*", "id_ed25519*",
)
RAY_PACKAGE_LIMIT = 100 * 1024 * 1024
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROJECT_MARKERS = ("setup.cfg", "pyproject.toml", "setup.py", ".git")


def parse_env(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings (from ``--env``).

    Raises:
        ConfigError: listing each malformed item and the form to use, and each secret (``HF_TOKEN=...``):
            a command line is readable by every user of the machine.
    """
    env, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY_RE.match(key):
            problems.append(f"--env {item!r} is not KEY=VALUE: write e.g. --env NCCL_DEBUG=INFO")
            continue
        if is_secret(key) and value:
            problems.append(f"--env {key}=...: a secret on the command line is visible to every user of this machine "
                            f"(`ps`): export {key} in your shell instead; bridge-ray sends it to the job in a 0600 file")
            continue
        env[key] = value
    if problems:
        raise ConfigError(problems)
    return env


def allowed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def redact(runtime_env: dict) -> dict:
    """A copy of ``runtime_env`` safe to print or record: secret values become ``***``."""
    shown = dict(runtime_env)
    if "env_vars" in shown:
        shown["env_vars"] = {k: ("***" if is_secret(k) else v) for k, v in shown["env_vars"].items()}
    return shown


def project_dir(recipe: Path) -> Path:
    """The recipe's project: the nearest parent holding setup.cfg/pyproject.toml/.git, else its folder."""
    for folder in [recipe.parent, *recipe.parent.parents]:
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return recipe.parent


def _excluded(rel: str, name: str, excludes: tuple[str, ...]) -> bool:
    """Whether ``excludes`` leave ``rel`` out, as Ray reads them (``.gitignore`` style: ``/a/b`` only at the root)."""
    return any(fnmatch.fnmatch(rel, pat[1:]) if pat.startswith("/") else
               fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(rel, pat) for pat in excludes)


def home_excludes(root: Path, recipe: Path) -> tuple[str, ...]:
    """The bridge-ray home inside the project ``root`` (its clusters' tokens, the jobs' secrets files, every run's
    log): an exclude that keeps it out of the upload.

    Raises:
        ConfigError: the project is the home or inside it, where no exclude could keep those files out.
    """
    home, project = home_dir().resolve(), root.resolve()
    if project == Path.home().resolve():
        raise ConfigError(f"recipe {recipe} would upload your whole home folder {project} (its project: no "
                          "pyproject.toml, setup.py or .git nearer): move the recipe into a project folder")
    if project == home or home in project.parents:
        raise ConfigError(f"recipe {recipe} is inside the bridge-ray home {home}, which holds the clusters' auth tokens "
                          "and the jobs' secrets: its folder would be uploaded with it; move the recipe into a "
                          "project folder outside the home")
    return (f"/{home.relative_to(project).as_posix()}",) if project in home.parents else ()


def _walk(root: Path, excludes: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """(bytes per top-level entry, broken links) of what Ray would upload from ``root``.

    Like Ray's packaging, links are followed: a linked file counts at its target's size and a
    linked folder is walked (each real folder once, so a link loop ends).
    """
    per_entry: dict[str, int] = {}
    broken: list[str] = []
    seen_dirs: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        rel_folder = os.path.relpath(folder, root)
        dirs[:] = [d for d in dirs if not _excluded(os.path.normpath(os.path.join(rel_folder, d)), d, excludes)]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if _excluded(rel, name, excludes):
                continue
            try:
                size = os.stat(os.path.join(folder, name)).st_size
            except OSError:
                broken.append(rel)
                continue
            top = rel.split(os.sep, 1)[0]
            per_entry[top] = per_entry.get(top, 0) + size
    return per_entry, broken


def package_size(root: Path, excludes: tuple[str, ...] = DEFAULT_EXCLUDES) -> tuple[int, list[tuple[int, str]]]:
    """Bytes Ray would upload from ``root`` (links followed), and the biggest top-level entries as (bytes, path)."""
    per_entry, _ = _walk(root, excludes)
    biggest = sorted(((size, top) for top, size in per_entry.items()), reverse=True)
    return sum(per_entry.values()), biggest


def check_package_size(root: Path, excludes: tuple[str, ...] = DEFAULT_EXCLUDES,
                       limit: int = RAY_PACKAGE_LIMIT) -> int:
    """Return the upload size, or raise naming the biggest offenders (or the links Ray cannot read).

    Raises:
        WorkingDirTooLarge: over Ray's limit, or a link whose target is missing (Ray's upload fails on it).
    """
    per_entry, broken = _walk(root, excludes)
    if broken:
        shown = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        raise WorkingDirTooLarge(f"working_dir {root} holds links whose target is missing: {shown}: "
                                 "remove them or leave them out with --exclude PATTERN")
    total = sum(per_entry.values())
    if total > limit:
        biggest = sorted(((size, top) for top, size in per_entry.items()), reverse=True)
        top = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for size, name in biggest[:3])
        raise WorkingDirTooLarge(
            f"working_dir {root} would upload {total / 2**20:.0f} MiB, over Ray's {limit / 2**20:.0f} MiB limit; "
            f"biggest: {top}: move data and checkpoints out of the project or add --exclude PATTERN"
        )
    return total


def gitignore_patterns(root: Path) -> tuple[str, ...]:
    """Patterns of ``root/.gitignore``, which Ray's packaging also leaves out (negations ignored)."""
    path = root / ".gitignore"
    if not path.is_file():
        return ()
    lines = (line.strip() for line in path.read_text(errors="replace").splitlines())
    return tuple(line.strip("/") for line in lines if line and not line.startswith(("#", "!")))


def _leaving_out(rel: Path, excludes: tuple[str, ...]) -> str | None:
    """The pattern that leaves the file ``rel`` (relative to the project) out of the upload, if any:
    the file's own, or one of a folder above it (as ``_walk`` prunes)."""
    parts = rel.parts
    for depth in range(1, len(parts) + 1):
        sub = os.path.join(*parts[:depth])
        for pattern in excludes:
            if _excluded(sub, parts[depth - 1], (pattern,)):
                return pattern
    return None


def _check_not_left_out(root: Path, recipe: Path, user: tuple[str, ...], ignored: tuple[str, ...]) -> None:
    """The recipe, and bridge-ray's own files where the project holds them, must be uploaded.

    Raises:
        ConfigError: naming the pattern (an ``--exclude``, a ``.gitignore`` line or a default) that leaves them out.
    """
    recipe_rel = recipe.resolve().relative_to(root.resolve())
    needed = [(recipe_rel, "the recipe", "run it")]
    package = root / "bridge_ray"
    if (package / "__init__.py").is_file():  # the job imports bridge-ray from the upload
        needed += [(path.relative_to(root), "bridge-ray's own", "import bridge-ray") for path in sorted(package.rglob("*.py"))]
    patterns = ([(p, f"--exclude {p!r}", "narrow the pattern") for p in user]
                + [(p, f".gitignore's {p!r}", "narrow that line") for p in ignored]
                + [(p, f"the default exclude {p!r}", "move the file out of that folder") for p in DEFAULT_EXCLUDES])
    for rel, what, use in needed:
        for pattern, where, fix in patterns:
            if _leaving_out(rel, (pattern,)):
                raise ConfigError(f"{where} leaves {what} {rel} out of the job's upload, so the job could not {use}: {fix}")


def build(recipe: Path, env: dict[str, str], profile_env: dict[str, str] | None = None,
          excludes: tuple[str, ...] = ()) -> dict:
    """The job's runtime_env: working_dir + excludes + env_vars (profile < allow-listed env < --env).

    Raises:
        ConfigError: an exclude leaves the recipe (or bridge-ray's own files in its project) out.
        WorkingDirTooLarge: the upload is over Ray's limit, or holds broken links.
    """
    root = project_dir(recipe)
    all_excludes = DEFAULT_EXCLUDES + home_excludes(root, recipe) + tuple(excludes)
    ignored = gitignore_patterns(root)
    _check_not_left_out(root, recipe, tuple(excludes), ignored)
    check_package_size(root, all_excludes + ignored)
    env_vars = {**(profile_env or {}), **allowed_env(), "PYTHONUNBUFFERED": "1", **env}
    return {"working_dir": str(root), "excludes": list(all_excludes), "env_vars": env_vars}


@dataclasses.dataclass
class SubmitPlan:
    """Everything ``submit`` would send; ``--dry-run`` prints it (secrets redacted).

    ``secrets`` never enter the runtime_env: they travel in a 0600 file (``bridge_ray.jobs.credentials``).
    """

    cluster: str
    submission_id: str
    entrypoint: str
    runtime_env: dict
    metadata: dict
    secrets: dict = dataclasses.field(default_factory=dict)

    def shown(self) -> dict:
        return {"cluster": self.cluster, "submission_id": self.submission_id, "entrypoint": self.entrypoint,
                "runtime_env": redact(self.runtime_env), "metadata": self.metadata,
                "secrets (sent in a 0600 file)": {k: "***" for k in sorted(self.secrets)}}
