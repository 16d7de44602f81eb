"""``bridge-ray submit | logs | stop | list``: jobs through one Ray Job client."""
from __future__ import annotations

import difflib
import json
import sys

import click

from bridge_ray import jobs as lib
from bridge_ray import runs
from bridge_ray.cli.cluster import name_option
from bridge_ray.cluster.client import quiet_ray_client
from bridge_ray.cluster.records import name_flag
from bridge_ray.errors import ClusterNotFound, ClusterStale, Interrupted, JobNotFound
from bridge_ray.jobs.runtime_env import parse_env
from bridge_ray.runs import LOG_TAIL_LINES, TERMINAL


class _Screen:
    """A terminal's live progress: the latest step line stays on the bottom line, redrawn in place;
    every other line is printed above it."""

    def __init__(self):
        self.status = ""

    def __call__(self, line: str) -> None:
        import shutil

        width = shutil.get_terminal_size().columns - 1
        if line.startswith("[bridge-ray] step "):
            self.status = line[:width]
            sys.stdout.write("\r\x1b[2K" + self.status)
        else:
            sys.stdout.write("\r\x1b[2K" + line + "\n" + self.status)
        sys.stdout.flush()

    def close(self) -> None:
        if self.status:
            sys.stdout.write("\n")
            self.status = ""


def _follow(job: lib.Job, verbose: bool = False) -> str:
    """Stream the job's log (``verbose``: all of it; else what ``ConsoleView`` keeps); Ctrl-C leaves
    the job running and says how to get back to it. A failure whose error the view did not show
    ends with the log's last lines. Ray's client logs nothing but its errors (``--verbose``: all)."""
    from bridge_ray.errors import BridgeRayError, JobFailed
    from bridge_ray.jobs.progress import ConsoleView

    if not verbose:
        quiet_ray_client()
    screen = _Screen() if not verbose and sys.stdout.isatty() else None
    view = None if verbose else ConsoleView(screen or (lambda line: click.echo(line)))
    try:
        return job.follow(click.echo if view is None else view.feed)
    except JobFailed as err:
        if view is not None and not view.showed_output:  # nothing of the job's own said why: its last lines do
            try:
                err.log_tail = "\n".join(job.logs().rstrip().splitlines()[-LOG_TAIL_LINES:])
            except BridgeRayError:  # the cluster went away meanwhile: the failure itself is the news
                pass
        raise
    except KeyboardInterrupt:
        flag = name_flag(job.cluster)
        raise Interrupted(f"stopped following; job {job.submission_id} keeps running on cluster {job.cluster!r}: "
                          f"reattach with `bridge-ray logs {job.submission_id}{flag} --follow`, "
                          f"stop it with `bridge-ray stop {job.submission_id}{flag}`") from None
    finally:
        if screen is not None:
            screen.close()


class _SubmitCommand(click.Command):
    """``submit``: what follows RECIPE goes to the recipe, but an option before ``--`` that bridge-ray does not
    know is refused: ``--folow`` would otherwise reach the recipe and the job be sent unfollowed."""

    def parse_args(self, ctx, args):
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        known = sorted(o for p in options for o in (*p.opts, *p.secondary_opts))
        valued = {o for p in options if not p.is_flag for o in p.opts}
        ours = args[:args.index("--")] if "--" in args else args
        skip = False
        for arg in ours:
            if skip or not arg.startswith("-") or arg == "-":
                skip = False
                continue
            name = arg.split("=", 1)[0]
            if name in valued:
                skip = "=" not in arg
            elif name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise click.UsageError(
                    f"No such option {name!r}{f' (did you mean {close[0]}?)' if close else ''}; the recipe's own "
                    "arguments go after `--`: bridge-ray submit RECIPE.py [OPTIONS] -- ARGS", ctx=ctx)
        return super().parse_args(ctx, args)


@click.command("submit", cls=_SubmitCommand, context_settings={"ignore_unknown_options": True})
@click.argument("recipe")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@name_option
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Extra env var for the job (repeatable).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN", help="More working_dir excludes (repeatable).")
@click.option("--submission-id", help="Job id to use (default: <recipe>-<time>-<hex>).")
@click.option("--follow", is_flag=True, help="Stream the job's progress and exit with its outcome.")
@click.option("--verbose", is_flag=True, help="Everything verl and Ray print (with --follow), and Ray's upload log.")
@click.option("--dry-run", is_flag=True, help="Print the entrypoint and runtime_env (secrets redacted); submit nothing.")
@click.option("--no-check", is_flag=True, help="Skip running the recipe here first to check its arguments.")
def submit_command(recipe, args, name, env_items, excludes, submission_id, follow, verbose, dry_run, no_check):
    """Submit RECIPE.py [-- ARGS...] as a Ray job on the recorded cluster.

    A recipe that declares config(argv) has its configs built and validated here first, so a
    bad override is reported at once and nothing is submitted.
    """
    env = parse_env(env_items)
    options = dict(cluster=name, env=env, excludes=excludes, submission_id=submission_id, check=not no_check)
    if dry_run:
        click.echo(json.dumps(lib.plan(recipe, args, **options).shown(), indent=2))
        return
    if not verbose:
        quiet_ray_client()
    job = lib.submit(recipe, args, **options)
    flag = name_flag(name)
    click.echo(f"submitted {job.submission_id} to cluster {name!r}")
    if follow:
        click.echo(f"{job.submission_id} {_follow(job, verbose)}")
        return
    click.echo("Next steps:\n"
               f"  bridge-ray logs {job.submission_id}{flag} --follow\n"
               f"  bridge-ray status {job.submission_id}{flag}\n"
               f"  bridge-ray stop {job.submission_id}{flag}\n"
               f"  bridge-ray runs show {job.submission_id}")


@click.command("logs")
@click.argument("submission_id")
@name_option
@click.option("--follow", is_flag=True, help="Stream until the job ends; exit with its outcome.")
@click.option("--all", "--verbose", "everything", is_flag=True,
              help="The whole log: everything verl and Ray print, not only the progress.")
def logs_command(submission_id, name, follow, everything):
    """Print a job's progress (its own lines and one per training step); --all for the whole log."""
    try:
        job = lib.Job(submission_id, name)
        text = None if follow else job.logs()
        if follow:
            job.info()  # a job the cluster does not know: its saved log, as without --follow
    except (ClusterNotFound, ClusterStale, JobNotFound) as err:  # the log saved when the job ended, if any
        text = _saved_log(submission_id, name, isinstance(err, JobNotFound))
        if text is None:
            raise
        if follow and runs.load_run(submission_id).status != "SUCCEEDED":
            _print_log(text, everything)
            raise SystemExit(1)  # --follow exits with the job's outcome
    if text is None:
        _follow(job, everything)
        return
    _print_log(text, everything)


def _print_log(text: str, everything: bool) -> None:
    if everything:
        sys.stdout.write(text)
        return
    from bridge_ray.jobs.progress import ConsoleView

    ConsoleView(lambda line: click.echo(line)).feed(text)


def _saved_log(submission_id: str, name: str, unknown_job: bool = False) -> str | None:
    """The job's whole log as its run folder kept it (``runs/ID/job.log``), for a cluster that is not
    there to ask, or that does not know the job (a cluster started since under the same name); None
    without one (no such run, or it ended unseen)."""
    if submission_id in ("", ".", "..") or "/" in submission_id:
        return None
    saved = runs.run_dir(submission_id) / runs.JOB_LOG
    if not saved.is_file():
        return None
    why = (f"cluster {name!r} does not know job {submission_id} (it was started again since?)" if unknown_job
           else f"cluster {name!r} is not there to ask")
    click.echo(f"note: {why}: this is the log saved when job {submission_id} ended ({saved})", err=True)
    return saved.read_text(errors="replace")


@click.command("stop")
@click.argument("submission_id")
@name_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=120, show_default=True,
              help="Seconds to wait for the job to end (0: return once the stop is asked for).")
def stop_command(submission_id, name, wait_s):
    """Stop a running job and wait until it has ended (its run record then says so)."""
    job = lib.Job(submission_id, name)
    if not job.stop():
        click.echo(f"{submission_id}: already finished")
        return
    click.echo(f"{submission_id}: stop requested")
    state = job.stopped(wait_s) if wait_s else None
    if state in TERMINAL:
        click.echo(f"{submission_id}: {state}")
    elif wait_s:
        click.echo(f"{submission_id}: still {state} after {wait_s:g} s; `bridge-ray status {submission_id}"
                   f"{name_flag(name)}` shows when it has ended")


@click.command("list")
@name_option
def list_command(name):
    """List the cluster's jobs."""
    listed = [(job.submission_id or job.job_id or "-", job) for job in lib.list_jobs(name)]
    width = max((len(job_id) for job_id, _ in listed), default=0)
    for job_id, job in listed:
        click.echo(f"{job_id:<{width}}  {job.status.value:<9}  {job.entrypoint}")
    if not listed:
        click.echo(f"no jobs on cluster {name!r} yet: submit one with `bridge-ray submit recipes/hello_cluster.py"
                   f"{name_flag(name)} --follow`", err=True)


COMMANDS = (submit_command, logs_command, stop_command, list_command)
