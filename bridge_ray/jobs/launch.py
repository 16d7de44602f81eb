"""How a recipe runs: as a job's driver on the cluster, or checked on the submitting machine.

    python -m bridge_ray.jobs.launch RECIPE [ARGS...]           # a job's entrypoint (what `submit` sends)
    python -m bridge_ray.jobs.launch --check RECIPE [ARGS...]   # `submit` runs this here first

As a job's driver it loads the job's secrets (``bridge_ray.jobs.credentials``), makes Ray's folders
private again (Ray's job supervisor marks them 0777 each time it starts), then runs RECIPE as
``__main__`` with ARGS, exactly as ``python RECIPE ARGS`` would; a bridge-ray error it raises
ends the job with one ``error: ...`` line and the error's exit code, not a traceback.

With ``--check``, a recipe that declares how its arguments become configs, a top-level
``config(argv)`` returning a config (``SFTConfig``, ``PPOConfig``, ``TokenizerConfig``,
``PretrainConfig``, ``ChainConfig``) or a tuple of them, is imported
(not run: its ``__main__`` block stays untouched) and ``config(ARGS)`` is built and validated
here. So an unknown key, a wrong type or an out-of-range value is reported in a second with
nothing uploaded. Nothing heavy runs meanwhile: demo assets are located, not built, and
``ray.init`` stops the check. A recipe without ``config`` is not run here at all. Exit codes:
0 checked (or nothing to check), 2 a bridge-ray error (printed as ``error: ...``), 3 it cannot
be checked here (a module this machine lacks), 4 it failed here with another exception; any
other code is the recipe's own (an argparse error in ``config``, say).
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.abc
import importlib.util
import io
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

CANNOT_CHECK, FAILED_HERE = 3, 4


class ReachedCluster(BaseException):
    """Raised by ``ray.init`` in check mode: the recipe got as far as attaching to a cluster."""


def _stop(*_args, **_kwargs):
    raise ReachedCluster()


class _StopAtRayInit(importlib.abc.MetaPathFinder):
    """Replaces ``ray.init`` with ``_stop`` as soon as ``ray`` is imported (it costs seconds to import it ourselves)."""

    def find_spec(self, name, path=None, target=None):
        if name != "ray":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("ray")
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            module.init = _stop

        spec.loader.exec_module = exec_module
        return spec


def _load(recipe: str, args: list[str] | None = None, run_name: str = "__bridge_ray_check__") -> dict:
    """Execute ``recipe`` as ``python recipe args`` would (its folder first on sys.path); return its globals."""
    path = os.path.abspath(recipe)
    sys.argv = [recipe, *(args or [])]
    sys.path[0] = os.path.dirname(path)
    return runpy.run_path(path, run_name=run_name)


def _run(recipe: str, args: list[str]) -> None:
    """Run ``recipe`` as ``__main__`` with ``args``."""
    _load(recipe, args, run_name="__main__")


def _where(err: BaseException, recipe: str) -> str:
    """``" (recipe.py:12)"``: the recipe's own line closest to the error."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(recipe)]
    return f" ({recipe}:{frames[-1].lineno})" if frames else ""


def declares_config(recipe: str) -> bool:
    """Whether the recipe defines a top-level ``config(argv)`` (read from its source, nothing run)."""
    tree = ast.parse(Path(recipe).read_bytes(), recipe)
    return any(isinstance(node, ast.FunctionDef) and node.name == "config" for node in tree.body)


HELP_FLAGS = ("--help", "-h")


def local_only_flag(recipe: str, args: list[str] | tuple[str, ...]) -> str | None:
    """Why ``args`` should not go to the cluster (None: they may): ``--help``, or the ``--dry-run`` of a recipe
    that declares ``config(argv)`` (``bridge_ray.recipe``'s), would submit a job that only prints."""
    for flag in HELP_FLAGS:
        if flag in args:
            return (f"{flag} after `--` goes to the recipe, which would run on the cluster only to print its help: "
                    f"read it here with `python {recipe} --help`; `bridge-ray submit --help` lists submit's own "
                    "options; nothing was submitted")
    if "--dry-run" in args and declares_config(recipe):
        return ("--dry-run after `--` goes to the recipe, which would run on the cluster only to print its config: "
                f"print it here with `python {recipe} --dry-run ARGS`, or put --dry-run before `--` to see what "
                "submit would send; nothing was submitted")
    return None


# Each config type a recipe may return, the check its entry point runs on the cluster, and where the check
# that the cluster's shape can run it lives (``fits(cfg, nodes)``: the entry point's own, on ``ray.nodes()`` rows).
VALIDATORS = (
    ("bridge_ray.sft.config", "SFTConfig", "validate", "bridge_ray.sft.preflight"),
    ("bridge_ray.ppo.config", "PPOConfig", "validate", "bridge_ray.ppo.preflight"),
    ("bridge_ray.tokenizer", "TokenizerConfig", "validate", "bridge_ray.tokenizer"),
    ("bridge_ray.pretrain.config", "PretrainConfig", "validate", "bridge_ray.pretrain.config"),
    ("bridge_ray.pipelines.text_to_chat", "ChainConfig", "validate", "bridge_ray.pipelines.text_to_chat"),
)
# The submitting side puts the cluster's alive nodes here (JSON, ``health.alive_nodes``) for ``--check``.
NODES_ENV = "BRIDGE_RAY_CHECK_NODES"


def validate(configs, nodes: list[dict] | None = None) -> None:
    """Validate what a recipe's ``config(argv)`` returned: one config or a tuple of them; with the cluster's
    alive ``nodes``, also that it fits them (what the entry point checks first on the cluster).

    Raises:
        ConfigError: listing every problem, as the training entry points would on the cluster.
        PreflightError: the cluster lacks what a config needs (GPUs, CPUs, room for its workers).
    """
    from bridge_ray.errors import PreflightError, RecipeError

    known = []
    for cfg in configs if isinstance(configs, (tuple, list)) else (configs,):
        kind = (type(cfg).__module__, type(cfg).__name__)
        for module_name, class_name, check, fits in VALIDATORS:
            if kind == (module_name, class_name):  # its module is imported already: it made the object
                getattr(sys.modules[module_name], check)(cfg)
                known.append((cfg, fits))
                break
        else:
            names = ", ".join(class_name for _, class_name, _, _ in VALIDATORS)
            raise RecipeError(f"config() returned {type(cfg).__name__} {str(cfg)[:40]!r}, not a bridge-ray config "
                              f"({names}) or a tuple of them: return the config(s) the recipe trains, or rename "
                              "config() to submit it unchecked")
    problems = []
    for cfg, fits in known if nodes is not None else ():  # every config valid first, then the cluster's shape
        try:
            importlib.import_module(fits).fits(cfg, nodes)
        except PreflightError as err:
            problems.append(str(err))
    if problems:
        raise PreflightError("; ".join(problems))


def _nodes() -> list[dict] | None:
    """The cluster's alive nodes the submitting side found (``NODES_ENV``), or None: no shape to check."""
    try:
        nodes = json.loads(os.environ.get(NODES_ENV) or "null")
    except ValueError:
        return None
    return nodes if isinstance(nodes, list) and nodes else None


class _Tee(io.StringIO):
    """Writes go to ``real`` as well; ``last_line()`` is the last non-empty line written."""

    def __init__(self, real):
        super().__init__()
        self.real = real

    def write(self, text: str) -> int:
        self.real.write(text)
        return super().write(text)

    def last_line(self) -> str:
        return next((line.strip() for line in reversed(self.getvalue().splitlines()) if line.strip()), "")


def check(recipe: str, args: list[str]) -> int:
    """Build and validate the recipe's ``config(args)`` here; return the exit code (see the module docstring)."""
    from bridge_ray.models import assets
    from bridge_ray.errors import BridgeRayError

    if not declares_config(recipe):
        return 0
    if "ray" in sys.modules:
        sys.modules["ray"].init = _stop
    else:
        sys.meta_path.insert(0, _StopAtRayInit())
    assets.build_demo_assets = lambda out_dir, *_, **__: assets.demo_asset_paths(out_dir)
    said = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(said):
            configs = _load(recipe)["config"](list(args))
        validate(configs, _nodes())
    except ReachedCluster:
        return 0
    except SystemExit as err:  # config() must return its config(s); exiting would read as this check's own code
        last = said.last_line()
        if err.code == 2 and ": error: " in last:  # argparse refused the recipe's own arguments
            print(f"error: {recipe}: {last.split(': error: ', 1)[1]} (see `python {recipe} --help`)", file=sys.stderr)
            return 2
        print(f"{recipe}'s config() exited (sys.exit({err.code!r})) instead of returning its config(s)"
              + (f" after printing {last!r}" if last else ""), file=sys.stderr)
        return FAILED_HERE
    except BridgeRayError as err:
        print(f"{err.prefix}{err}", file=sys.stderr)
        return err.exit_code
    except ImportError as err:
        print(f"cannot check {recipe} here: {err}", file=sys.stderr)
        return CANNOT_CHECK
    except Exception as err:  # noqa: BLE001 - whatever the recipe raised, reported in one line
        print(f"{recipe} failed when checked here: {type(err).__name__}: {err}{_where(err, recipe)}", file=sys.stderr)
        return FAILED_HERE
    return 0


class _DriverLog:
    """The driver's stdout and stderr, also copied line by line (secrets scrubbed) into its run folder's
    ``driver.log``: the job's log then outlives its cluster (``runs.mark_lost``). Ray's own log is unchanged."""

    def __init__(self, stream, file, scrub):
        self.stream, self.file, self.scrub, self.pending = stream, file, scrub, ""

    @classmethod
    def install(cls) -> "_DriverLogs | None":
        from bridge_ray import runs

        folder = os.environ.get(runs.RUN_DIR_ENV)
        if not folder or not Path(folder).is_dir():
            return None
        try:
            file = os.fdopen(os.open(Path(folder) / runs.DRIVER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "w")
        except OSError:
            return None
        secrets = runs.known_secrets()
        scrub = lambda text: runs.scrub(text, secrets)  # noqa: E731
        out, err = cls(sys.stdout, file, scrub), cls(sys.stderr, file, scrub)
        sys.stdout, sys.stderr = out, err
        return _DriverLogs(out, err)

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        self.pending += text
        if "\n" in self.pending:
            done, _, self.pending = self.pending.rpartition("\n")
            self._copy(done + "\n")
        return written

    def _copy(self, text: str) -> None:
        try:
            self.file.write(self.scrub(text))
            self.file.flush()
        except (OSError, ValueError):
            pass  # the copy is a spare: the job goes on without it

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...: the real stream's
        return getattr(self.stream, name)


class _DriverLogs:
    def __init__(self, out: _DriverLog, err: _DriverLog):
        self.out, self.err = out, err

    def close(self) -> None:
        for copy in (self.out, self.err):
            if copy.pending:
                copy._copy(copy.pending + "\n")
                copy.pending = ""
        sys.stdout, sys.stderr = self.out.stream, self.err.stream
        try:
            self.out.file.close()
        except OSError:
            pass


def drive(recipe: str, args: list[str]) -> None:
    """A job's driver: the job's secrets into the environment, Ray's folders private, then the recipe."""
    from bridge_ray.jobs import credentials
    from bridge_ray.cluster.processes import TEMP_DIR_ENV, make_private
    from bridge_ray.errors import BridgeRayError

    credentials.load()
    if os.environ.get(TEMP_DIR_ENV):
        make_private(Path(os.environ[TEMP_DIR_ENV]))
    copied = _DriverLog.install()
    code = 1
    try:
        _run(recipe, args)
        code = 0
    except BridgeRayError as err:  # one line in the job's log, as on the submitting machine
        print(f"{err.prefix}{(str(err).strip().splitlines() or [''])[0]}", file=sys.stderr, flush=True)
        code = err.exit_code
        sys.exit(err.exit_code)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        raise
    finally:
        if copied is not None:
            copied.close()
        from bridge_ray import runs

        runs.record_driver_end(code)


def main(argv: list[str] | None = None) -> int:
    """``python -m bridge_ray.jobs.launch [--check] RECIPE [ARGS...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    checking = args[:1] == ["--check"]
    args = args[1:] if checking else args
    if not args:
        print("usage: python -m bridge_ray.jobs.launch [--check] RECIPE [ARGS...]", file=sys.stderr)
        return 2
    if checking:
        return check(args[0], args[1:])
    drive(args[0], args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
