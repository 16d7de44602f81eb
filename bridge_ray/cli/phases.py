"""Long local phases (merging, checking, uploading) shown as they run, with their elapsed time.

On a terminal: one live line (rich's spinner) per phase, replaced by "done" with its time.
Elsewhere (CI, a pipe): a line when a phase starts and one when it ends. Both on stderr, so
stdout keeps only the command's result.
"""
from __future__ import annotations

import sys
import time

import click

from bridge_ray.errors import Interrupted


class Phases:
    """``with Phases() as say: library_call(..., on_phase=say)``: each call to ``say`` ends the phase
    before it and starts the next; leaving the block ends the last one."""

    def __init__(self):
        self._name: str | None = None
        self._started = 0.0
        self._status = None
        self._console = None

    def __enter__(self) -> "Phases":
        if sys.stderr.isatty():
            from rich.console import Console

            self._console = Console(stderr=True)
        return self

    def __call__(self, name: str) -> None:
        self._end()
        self._name, self._started = name, time.monotonic()
        if self._console is None:
            click.echo(f"[bridge-ray] {name} ...", err=True)
        else:
            self._status = self._console.status(f"{name} ...")
            self._status.start()

    def _end(self, ended: str = "done in") -> None:
        if self._name is None:
            return
        took = f"{ended} {time.monotonic() - self._started:.1f} s"
        if self._status is not None:
            self._status.stop()
            self._status = None
        click.echo(f"[bridge-ray] {self._name}: {took}", err=True)
        self._name = None

    def __exit__(self, kind, value, traceback) -> None:
        cut = kind is not None and issubclass(kind, (KeyboardInterrupt, Interrupted))
        self._end("interrupted after" if cut else "failed after" if kind is not None else "done in")
