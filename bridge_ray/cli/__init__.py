"""The ``bridge-ray`` command line: parse, make one library call, print.

Exit codes: 0 success, 1 the job failed or was stopped, 2 a user error
(printed as one line, with the fix, and nothing submitted).
"""
from __future__ import annotations

import os
import sys

import click

from bridge_ray.errors import BridgeRayError

DEBUG_ENV = "BRIDGE_RAY_DEBUG"
# What click >= 8.2 raises for a group given no command (8.1 printed the help itself and exited 0).
NO_COMMAND = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _usage_error(err: click.UsageError, ctx: click.Context | None = None) -> None:
    """A usage error (unknown option, bad value, missing argument) as one line, exit 2: click's own
    form is four (usage, hint, blank, error). A group given no command (``bridge-ray``, ``bridge-ray data``)
    prints its help as click lays it out, still exit 2: nothing was done."""
    if isinstance(err, NO_COMMAND) and err.ctx is not None:
        click.echo(err.ctx.get_help(), err=True)
        sys.exit(err.exit_code)
    message = "; ".join(line.strip() for line in err.format_message().splitlines() if line.strip()).rstrip(".")
    if err.ctx is not None:
        command = err.ctx.command_path
    elif ctx is not None and ctx.invoked_subcommand:  # click's parser raises some errors without their context
        command = f"{ctx.command_path} {ctx.invoked_subcommand}"
    else:
        command = "bridge-ray"
    click.echo(f"error: {message}: see `{command} --help`", err=True)
    sys.exit(err.exit_code)


class _Group(click.Group):
    """Prints a BridgeRayError as one line and exits with its code, instead of a traceback.

    A usage error is one line too (exit 2); Ctrl-C exits 130 with one line; anything else
    unexpected is one line (a bug to report), with the traceback only when ``BRIDGE_RAY_DEBUG`` is set.
    """

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            _usage_error(err)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            _usage_error(err, ctx)
        except BridgeRayError as err:
            click.echo(f"{err.prefix}{err}", err=True)
            tail = getattr(err, "log_tail", "")
            if tail:
                click.echo(f"--- last log lines of {err.submission_id} ---\n{tail}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `bridge-ray runs | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
            sys.exit(0)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the last guard between a bug and a user's terminal
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(f"error: unexpected {type(err).__name__}: {err} (a bridge-ray bug: please report it; "
                       f"{DEBUG_ENV}=1 shows the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bridge-ray")
def cli():
    """bridge-ray: start a Ray cluster once, then submit verl SFT/PPO recipes to it."""


def _register() -> None:
    from bridge_ray.cli import cluster, data, doctor, jobs, runs

    for module in (cluster, jobs, runs, doctor, data):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console entry point."""
    cli(prog_name="bridge-ray")
