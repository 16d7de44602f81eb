"""Custom rewards wired into verl's ``custom_reward_function`` hook.

verl loads ``compute_score`` below (``pkg://bridge_ray.ppo.reward``) in its reward workers and
passes the user's function as ``reward_kwargs.bridge_ray_reward="module:function"`` (or
``"path/to/file.py:function"``, relative to the job's working_dir). ``compute_score`` calls
that function and turns what verl would swallow or mangle into a job failure that names the
sample: an exception (with the reward's own traceback) or a result that is not a number.

A recipe may pass a Python function instead of a string; ``describe`` turns it into the spec
and says which code must travel with the job (``py_modules``) when it lies outside the
working_dir and is not an installed distribution.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from bridge_ray.errors import ConfigError, RewardFailed

FAILURE_MARKER = "[bridge-ray reward failure]"
FAILURE_END = "[end of reward failure]"


def _installed(module_name: str, path: Path) -> bool:
    from importlib.metadata import packages_distributions

    top = module_name.split(".")[0]
    return top in packages_distributions() or any(part in ("site-packages", "dist-packages") for part in path.parts)


def _top_level_source(module_name: str) -> Path:
    top = sys.modules[module_name.split(".")[0]]
    source = Path(inspect.getsourcefile(top) or top.__file__).resolve()
    return source.parent if source.name == "__init__.py" else source


def describe(fn: Callable | str, working_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """The reward spec verl's workers load, and local code to ship with them.

    Args:
        fn: A module-level function, or a spec string (returned as is).
        working_dir: The job's working_dir (default: the current directory, as in a Ray job driver).

    Returns:
        ``(spec, py_modules)``: ``"recipes/x.py:fn"`` for a recipe's own function,
        ``"pkg.mod:fn"`` for an importable one; ``py_modules`` lists a package folder or file
        that lies neither in the working_dir nor in an installed distribution.

    Raises:
        ConfigError: the function is a lambda, nested or a method (verl can't import it by name).
    """
    if isinstance(fn, str):
        return fn, []
    name = getattr(fn, "__qualname__", "")
    if not callable(fn) or "<" in name or "." in name:
        raise ConfigError(f"reward {fn!r} must be a module-level function (not a lambda, method or closure): "
                          "define it with `def` at the top of the recipe or a module")
    root = Path(working_dir or os.getcwd()).resolve()
    if fn.__module__ == "__main__":
        source = Path(inspect.getsourcefile(fn)).resolve()
        if source.is_relative_to(root):
            return f"{source.relative_to(root)}:{name}", []
        return f"{source.stem}:{name}", [str(source)]
    top = _top_level_source(fn.__module__)
    ship = [] if top.is_relative_to(root) or _installed(fn.__module__, top) else [str(top)]
    return f"{fn.__module__}:{name}", ship


@functools.lru_cache(maxsize=8)
def load(spec: str) -> Callable:
    """Import the function a spec names (``module:function`` or ``file.py:function``)."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target) if os.path.isabs(target) else Path(os.getcwd()) / target
        module_spec = importlib.util.spec_from_file_location(f"bridge_ray_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # the job's working_dir, where a recipe's modules live
        module = importlib.import_module(target)
    return getattr(module, name)


def sample_id(data_source, extra_info) -> str:
    """How a failure names the sample: its split and index from ``extra_info``, and data source."""
    info = extra_info if isinstance(extra_info, dict) else {}
    parts = [f"{key}={info[key]}" for key in ("split", "index") if key in info]
    return " ".join(parts + [f"data_source={data_source}"])


def _check(result, spec: str, sample: str):
    score = result.get("score") if isinstance(result, dict) else result
    if isinstance(score, numbers.Real) and math.isfinite(float(score)):
        return result
    shown = repr(result)[:200]
    raise RewardFailed(f"{FAILURE_MARKER} reward {spec} returned {shown} for sample {sample}: it must return a "
                       f"finite number (or a dict with a numeric 'score') {FAILURE_END}")


def record_failure(failure_file: str, message: str) -> None:
    """Keep the first failure's message in ``failure_file`` (later ones, from other samples, are left out).

    verl's agent loop logs what the reward raised and fails the step with a message of its own,
    so the job's driver reads the reason from this file (``failure_in``).
    """
    if not failure_file:
        return
    try:
        with open(failure_file, "x") as out:
            out.write(message)
    except OSError:  # FileExistsError: an earlier sample's failure is kept; a missing dir: nothing to keep
        pass


def failure_in(failure_file: Path) -> str | None:
    """The reward failure recorded in ``failure_file`` by this run's reward workers, or None."""
    try:
        return failure_from(failure_file.read_text())
    except OSError:
        return None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, bridge_ray_reward: str = "",
                  bridge_ray_failure_file: str = "", **kwargs):
    """verl's custom reward hook: call the user's reward and check what it returns.

    Raises:
        RewardFailed: the reward raised (message holds its traceback) or returned a non-number;
            both name the sample (``split``/``index`` from ``extra_info``). The first one is also
            written to ``bridge_ray_failure_file``.
    """
    fn = load(bridge_ray_reward)
    sample = sample_id(data_source, extra_info)
    try:
        try:
            result = fn(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                        extra_info=extra_info, **kwargs)
        except Exception:  # noqa: BLE001 - any error of the user's reward fails the job, with its traceback
            raise RewardFailed(f"{FAILURE_MARKER} reward {bridge_ray_reward} raised on sample {sample}:\n"
                               f"{traceback.format_exc()}{FAILURE_END}") from None
        return _check(result, bridge_ray_reward, sample)
    except RewardFailed as failed:
        record_failure(bridge_ray_failure_file, str(failed))
        raise


def failure_from(text: str) -> str | None:
    """The reward failure message inside a Ray error's text, or None.

    Ray nests each actor's traceback around it; the markers delimit the reward's own message.
    """
    start = text.find(FAILURE_MARKER)
    if start < 0:
        return None
    end = text.find(FAILURE_END, start)
    return text[start + len(FAILURE_MARKER):end if end > 0 else None].strip()


def gsm8k_digit_bonus(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl's GSM8K score plus 0.1 x the share of digits in the response.

    For smoke tests and benchmarks with a random-init model: it scores 0 on GSM8K, so its
    GRPO advantages and gradients would be exactly 0 without a term that varies.
    """
    from verl.utils.reward_score import gsm8k

    digits = sum(c.isdigit() for c in solution_str) / max(1, len(solution_str))
    return float(gsm8k.compute_score(solution_str, ground_truth)) + 0.1 * digits
