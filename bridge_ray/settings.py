"""Defaults a user would otherwise retype on every command, from two YAML files; flags win over both.

- user: ``$BRIDGE_RAY_HOME/config.yaml`` (``~/.bridge-ray/config.yaml``);
- project: ``bridge-ray.yaml`` in the current folder (for ``submit``, the recipe's folder) or
  the nearest folder above it that has one; it wins over the user's file.

Example ``bridge-ray.yaml``::

    slurm:
      partition: gpu
      account: proj123
      time: "04:00:00"
      gpus_per_node: 8
      setup:
        - module reset
        - module load nccl/2.21 hpcx/2.18.1
    wandb:
      entity: my-team

``bridge-ray config`` shows every key's effective value and where it came from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bridge_ray.cluster.records import home_dir
from bridge_ray.errors import ConfigError

PROJECT_FILE = "bridge-ray.yaml"
USER_FILE = "config.yaml"
# key: (type, built-in default, what it sets)
KEYS: dict[str, tuple[type, Any, str]] = {
    "slurm.partition": (str, None, "up --slurm --partition"),
    "slurm.account": (str, None, "up --slurm --account"),
    "slurm.time": (str, None, "up --slurm --time"),
    "slurm.nodes": (int, 1, "up --slurm --nodes"),
    "slurm.gpus_per_node": (int, 0, "up --slurm --gpus-per-node"),
    "slurm.cpus_per_task": (int, None, "up --slurm --cpus-per-task"),
    "slurm.setup": (list, [], "up --slurm --setup (lines every node runs before Ray starts)"),
    "slurm.sbatch_args": (list, [], "up --slurm --sbatch-arg"),
    "slurm.join_timeout_s": (int, 300, "up --slurm --join-timeout (seconds for the head, then the other nodes)"),
    "wandb.entity": (str, None, "WANDB_ENTITY of every submitted job (unless set in your shell)"),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    source: str  # "default", or the file it came from


def user_file() -> Path:
    return home_dir() / USER_FILE


def project_file(start: Path | None = None) -> Path | None:
    """The nearest ``bridge-ray.yaml`` from ``start`` (default: the current folder) upwards, or None."""
    folder = (start or Path.cwd()).absolute()
    for candidate in [folder, *folder.parents]:
        if (candidate / PROJECT_FILE).exists():  # a folder of that name is reported by `effective`, not skipped
            return candidate / PROJECT_FILE
    return None


def _flatten(data: dict, path: Path) -> dict[str, Any]:
    flat = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section!r} must be a section of keys (e.g. `slurm:` then `  partition: gpu`)")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


MINIMUM = {"slurm.nodes": 1, "slurm.cpus_per_task": 1, "slurm.join_timeout_s": 1}  # other whole numbers: 0


def _check(key: str, value: Any, path: Path) -> Any:
    if key not in KEYS:
        raise ConfigError(f"{path}: unknown key {key!r}: the keys are {', '.join(KEYS)} (`bridge-ray config` lists them)")
    kind = KEYS[key][0]
    if value is None:
        return None
    if kind is list:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must be a list of strings, got {value!r}")
        return value
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: {key} must be a whole number, got {value!r}")
    if kind is int and value < MINIMUM.get(key, 0):  # as the flag it stands for would say, but naming the file
        raise ConfigError(f"{path}: {key} must be {MINIMUM.get(key, 0)} or more, got {value}")
    if kind is str and not isinstance(value, (str, int, float)):
        raise ConfigError(f"{path}: {key} must be a string, got {value!r}")
    return str(value) if kind is str else value


def read(path: Path) -> dict[str, Any]:
    """The checked keys of one file.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a value of the wrong type (with the file's path).
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path} cannot be read ({err.strerror}): fix its permissions or remove it") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}): save it as UTF-8 YAML, or remove it") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{line}: fix it (`bridge-ray config` shows what is read)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold sections of keys (`slurm:`, `wandb:`), not {type(data).__name__}")
    return {key: _check(key, value, path) for key, value in _flatten(data, path).items()}


def effective(start: Path | None = None) -> dict[str, Setting]:
    """Every key's value: the project file's, else the user file's, else the built-in default.

    Raises:
        ConfigError: one of the files is broken (nothing is guessed).
    """
    found = {key: Setting(key, default, "default") for key, (_, default, _) in KEYS.items()}
    for path in (user_file(), project_file(start)):
        if path is not None and path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a file (a folder?): bridge-ray reads its settings from a YAML file there; "
                              "move it away")
        if path is not None and path.is_file():
            for key, value in read(path).items():
                if value is not None:
                    found[key] = Setting(key, value, str(path))
    return found


def value(key: str, start: Path | None = None) -> Any:
    return effective(start)[key].value
