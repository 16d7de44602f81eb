"""Typed, frozen configs and dotted command-line overrides.

Configs are frozen dataclasses; presets are plain functions returning one;
``apply_overrides(cfg, ["sft.lr=1e-5", "sft.workers.num_workers=2"], prefix="sft")``
returns a new config. Every bad override is reported together in one ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from bridge_ray.errors import ConfigError


def to_dict(cfg: Any) -> dict:
    """A plain dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def write_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as JSON (used for the run directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True, default=str))
    return path


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a nested config dataclass from ``to_dict`` output."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


LOGGERS = ("console", "wandb", "file", "tensorboard")


def too_small(minimum: int, values: dict[str, Any], note: str = "") -> list[str]:
    """``NAME=VALUE must be >= MINIMUM`` (then ``note``) for each of ``values`` below ``minimum``: the
    message names the value that was given, not only the rule."""
    return [f"{name}={value} must be >= {minimum}{note}" for name, value in values.items() if value < minimum]


def trainer_problems(trainer: Any, save_off: str = "off") -> list[str]:
    """Checks every workload's trainer section shares: output dir, run length, frequencies, loggers.

    Args:
        trainer: a config with ``output_dir``, ``total_epochs``, ``total_steps``, ``save_freq``,
            ``test_freq`` and ``loggers``.
        save_off: what ``save_freq=-1`` means for this workload, for the message.
    """
    problems = []
    if not trainer.output_dir or not os.path.isabs(trainer.output_dir):
        problems.append(f"trainer.output_dir={trainer.output_dir!r} must be an absolute path "
                        "(relative paths land in Ray's unpacked working_dir)")
    problems += too_small(1, {"trainer.total_epochs": trainer.total_epochs})
    if trainer.total_steps is not None and trainer.total_steps < 1:
        problems.append(f"trainer.total_steps={trainer.total_steps}: give a step count >= 1, or null to train "
                        "for trainer.total_epochs")
    for name in ("save_freq", "test_freq"):
        value = getattr(trainer, name)
        if value == 0 or value < -1:
            problems.append(f"trainer.{name}={value}: use -1 ({save_off if name == 'save_freq' else 'off'}) "
                            "or a step count >= 1")
    unknown = sorted(set(trainer.loggers) - set(LOGGERS))
    if unknown:
        problems.append(f"trainer.loggers has {unknown}: choose from {', '.join(LOGGERS)}")
    return problems


# What a Hydra override reads back unchanged as a string when written bare: ASCII path characters, and nothing
# Hydra would read as a number, a boolean or null.
_HYDRA_BARE = re.compile(r"[A-Za-z0-9_\-+./:~@%]+", re.ASCII)
_HYDRA_TYPED = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|inf|nan)|null|true|false",
                          re.IGNORECASE)


def hydra_value(value: Any) -> str:
    """``value`` as the value of a Hydra override (``key=<this>``): ``null`` for None, a string bare when Hydra
    reads it back as the same string, else single-quoted (a path with a space, ``,``, ``=``, a quote or a
    non-ASCII letter: Hydra refuses those bare, or reads ``a,b`` as a sweep)."""
    if value is None:
        return "null"
    text = str(value)
    return text if _HYDRA_BARE.fullmatch(text) and not _HYDRA_TYPED.fullmatch(text) else _hydra_quoted(text)


def _hydra_quoted(text: str) -> str:
    # In a quoted value Hydra unescapes \' and backslashes before a quote or at the end; others stay as written.
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, text).replace("'", "\\'")
    return f"'{escaped}'"


def hydra_list(items) -> str:
    """A Hydra list of strings, each single-quoted (and escaped)."""
    return "[" + ",".join(_hydra_quoted(str(item)) for item in items) + "]"


def epochs_needed(total_steps: int, rows: int, batch: int) -> tuple[int, int]:
    """``(steps an epoch, epochs)`` for ``total_steps`` steps of ``batch`` rows over ``rows`` rows.

    verl ends training after its epochs even short of its total steps, and then saves no final
    checkpoint; an epoch drops its last partial batch.
    """
    per_epoch = max(1, rows // batch)
    return per_epoch, -(-total_steps // per_epoch)


def output_dir_problem(path: str | Path) -> str | None:
    """Why ``path`` (created if missing) cannot take a run's output, or None if it can."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        return f"trainer.output_dir {out} is not writable: {err.strerror or err}"
    return None


def _coerce(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        items = value if isinstance(value, (list, tuple)) else [value]
        inner = args[0] if args else str
        return tuple(_coerce(v, inner, key) for v in items)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} is not a boolean: use true or false")
    if kind in (int, float, str, bool) and value is None:  # YAML's null for a key that cannot be unset
        what = {int: "an integer", float: "a number", str: "a value", bool: "true or false"}[kind]
        raise ConfigError(f"{key}=null: this key cannot be unset; give {what}")
    if kind in (int, float) and isinstance(value, bool):  # YAML's true/false: never a count or a rate
        raise ConfigError(f"{key}={str(value).lower()} is not {'an integer' if kind is int else 'a number'}")
    if kind is int and isinstance(value, int):  # exact, however large (float() would round it)
        return value
    if kind in (int, float):
        try:
            number = kind(value)  # YAML 1.1 reads 2e-4 as a string; int("3.5") still fails below
        except (TypeError, ValueError):
            number = None
        if number is not None and kind is float and not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} is not a finite number")
        if number is not None and (kind is float or float(value) == number):
            return number
        raise ConfigError(f"{key}={value!r} is not {'an integer' if kind is int else 'a number'}")
    if kind is str:
        return value if isinstance(value, str) else str(value)
    return value


def _unknown(cfg: Any, path: list[str], key: str) -> ConfigError:
    """``unknown key 'sft.optim.lrr': did you mean 'sft.optim.lr'? (OptimConfig has ...)``."""
    names = sorted(f.name for f in dataclasses.fields(cfg))
    close = difflib.get_close_matches(path[0], names, n=1, cutoff=0.6)
    known = f"{type(cfg).__name__} has {', '.join(names)}"
    if not close:
        return ConfigError(f"unknown key {key!r}: {known}")
    parts = key.split(".")
    at = len(parts) - len(path)
    return ConfigError(f"unknown key {key!r}: did you mean {'.'.join(parts[:at] + close + parts[at + 1:])!r}? ({known})")


def _set(cfg: Any, path: list[str], raw: str, key: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    head = path[0]
    if head not in names:
        raise _unknown(cfg, path, key)
    kind = typing.get_type_hints(type(cfg))[head]
    current = getattr(cfg, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown key {key!r}: {head} has no sub-keys")
        return dataclasses.replace(cfg, **{head: _set(current, path[1:], raw, key)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{key} is a group: set one of its keys, e.g. {key}.{dataclasses.fields(current)[0].name}=...")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:  # an unclosed bracket or quote: its message spans lines, with a caret
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{key}={raw}: the value is not valid YAML ({problem}): close its brackets or quotes, "
                          f"or pass a string quoted, e.g. '{key}=\"text\"'") from None
    return dataclasses.replace(cfg, **{head: _coerce(value, kind, key)})


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...], prefix: str | None = None) -> Any:
    """Return ``cfg`` with dotted ``key=value`` overrides applied.

    Args:
        cfg: a frozen config dataclass.
        overrides: strings like ``lr=1e-5`` or, with ``prefix="sft"``, ``sft.lr=1e-5``
            (the prefix is optional on each override).
        prefix: the config's own name on the command line.

    Raises:
        ConfigError: listing every override that was malformed, unknown or mistyped.
    """
    problems = []
    for item in overrides:
        if "=" not in item and item.startswith("-"):
            problems.append(f"{item!r} is not an override: recipe arguments are {prefix + '.' if prefix else ''}"
                            "GROUP.KEY=VALUE overrides and preset=NAME")
            continue
        if "=" not in item:
            problems.append(f"override {item!r} has no '=': write it as {item.strip() or 'key'}=VALUE")
            continue
        key, raw = item.split("=", 1)
        path = key.strip().split(".")
        if prefix and path[0] == prefix and len(path) > 1:
            path = path[1:]
        try:
            cfg = _set(cfg, path, raw.strip(), key.strip())
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return cfg
