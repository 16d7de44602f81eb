"""The body every recipe's ``main`` shares: config from argv, ``--dry-run``, one error line, exit code."""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, TypeVar

from bridge_ray.errors import BridgeRayError

C = TypeVar("C")
R = TypeVar("R")

DRY_RUN = "--dry-run"
HELP = "--help"
HELP_FALLBACK = ("Arguments: preset=NAME and dotted KEY=VALUE overrides of the recipe's config; --dry-run prints the "
                 "config they give, and runs nothing.")


def recipe_main(argv: list[str] | None, build: Callable[[list[str]], C], shown: Callable[[C], Any],
                act: Callable[[C], R], report: Callable[[R], str] | None = None,
                before: Callable[[C], None] | None = None) -> R | None:
    """Run a recipe: ``build(args)`` then ``before(cfg)`` and ``act(cfg)``, or print ``shown(cfg)`` for ``--dry-run``.

    Args:
        argv: the recipe's arguments (default ``sys.argv[1:]``); ``--dry-run`` anywhere in them; ``--help`` (``-h``)
            prints the recipe's docstring instead.
        build: the validated config for the arguments without ``--dry-run``.
        shown: what ``--dry-run`` prints, as JSON.
        act: the run itself; its result is returned.
        report: lines printed after a run (e.g. where its model is).
        before: called with the config before ``act`` (e.g. to write demo data on the cluster).

    A ``BridgeRayError`` prints as one ``error: ...`` line and exits with its code (2: bad input, 1: run).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if HELP in argv or "-h" in argv:  # the recipe's own docstring says what its arguments are
        recipe = sys.modules.get("__main__")
        print((getattr(recipe, "__doc__", None) or HELP_FALLBACK).strip(), flush=True)
        return None
    try:
        cfg = build([a for a in argv if a != DRY_RUN])
        if DRY_RUN in argv:
            print(json.dumps(shown(cfg), indent=2, default=str), flush=True)
            return None
        if before is not None:
            before(cfg)
        result = act(cfg)
    except BridgeRayError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    if report is not None:
        print(report(result), flush=True)
    return result
