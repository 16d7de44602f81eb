"""``bridge-ray runs [list | show ID] | upload | export``: run records, the Hub, merged checkpoints."""
from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
from pathlib import Path

import click

from bridge_ray import jobs
from bridge_ray import runs as lib
from bridge_ray.cli.phases import Phases
from bridge_ray.errors import ConfigError
from bridge_ray.models import hub
from bridge_ray.models.export import export as export_run


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _duration(run: lib.RunRecord) -> str:
    if not run.start_time or not run.end_time:
        return "-"
    return str(datetime.timedelta(seconds=round(run.end_time - run.start_time)))


def describe(run: lib.RunRecord) -> str:
    """The human view of one run record (``--json`` prints all of it)."""
    git = run.git or {}
    commit = git.get("commit") or ("no commit yet" if git.get("repo") else "not a git repo")
    dirty = f" + uncommitted changes ({run.run_dir}/{git['diff_file']})" if git.get("diff_file") else (
        " + uncommitted changes" if git.get("dirty") else "")
    wandb = run.wandb or {}
    where = f"{run.cluster_record.get('backend', '?')}, {run.cluster_record.get('dashboard_url', '?')}"
    lines = [
        f"run         {run.submission_id}",
        f"status      {run.status}" + (f" ({run.failure})" if run.failure else "")
        + (f": {run.message}" if run.message else ""),
        f"cluster     {run.cluster} ({where})",
        f"recipe      {run.recipe}   in {run.project_dir} @ {commit}{dirty}",
        f"entrypoint  {run.entrypoint}",
        f"started     {_when(run.start_time)}   ended {_when(run.end_time)}   took {_duration(run)}",
        f"host        {run.host or '-'}",
        "packages    " + (", ".join(f"{k} {v}" for k, v in (run.packages or {}).items() if v) or "-"),
        f"output dir  {run.output_dir or '-'}",
        f"last step   {run.last_step if run.last_step is not None else '-'}",
        "metrics     " + (", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in (run.metrics or {}).items() if v is not None) or "-"),
        f"hf model    {run.hf_model or '-'}" + "".join(f"\n            step {k}: {v}" for k, v in run.exports.items()),
        "wandb       " + (wandb.get("url") or wandb.get("dir") or "-")
        + (f"\n            offline: upload with `{wandb['sync_command']}`" if wandb.get("sync_command") else ""),
        f"hub         {run.hub_url or '-'}",
        f"run dir     {run.run_dir}   ({', '.join(sorted(p.name for p in Path(run.run_dir).iterdir() if p.is_file()))})"
        if run.run_dir and Path(run.run_dir).is_dir() else f"run dir     {run.run_dir or '-'}",
    ]
    lines += _figures(run)
    if run.log_tail:
        lines.append("--- last log lines ---\n" + run.log_tail)
    return "\n".join(lines)


def _figures(run: lib.RunRecord) -> list[str]:
    """The figures that matter, from the run's curves: loss/reward first, last, best; throughput; wall time."""
    from bridge_ray.runs import curves

    found = curves.summary(curves.of_run(run))
    lines = []
    for name in ("loss", "val_loss", "reward", "critic_loss"):
        if name in found:
            f = found[name]
            lines.append(f"{name:<12} first {f['first']:.4g}   last {f['last']:.4g}   best {f['best']:.4g} (step {f['best_step']})")
    for name in ("tokens_per_s", "mfu"):
        if name in found:
            lines.append(f"{name:<12} mean {found[name]['mean']:.4g}   last {found[name]['last']:.4g}")
    if lines:
        lines.append(f"{'wall time':<12} {_duration(run)}   (curves: `bridge-ray runs plot {run.submission_id}`)")
    return lines


@click.group("runs", invoke_without_command=True)
@click.pass_context
def runs_group(ctx):
    """The run records of past submissions: list them (default) or show one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@runs_group.command("list")
def list_command():
    """List every recorded run, oldest first."""
    listed = jobs.list_runs(refresh=True)
    width = max((len(run.submission_id) for run in listed), default=0)
    for run in listed:
        step = "-" if run.last_step is None else run.last_step
        click.echo(f"{run.submission_id:<{width}}  {run.status:<9}  {_when(run.start_time)}  {_duration(run):>8}  "
                   f"step {step:<6}  {run.cluster:<10}  {run.recipe}" + (f"  ({run.failure})" if run.failure else ""))
    for problem in lib.unreadable_runs():
        click.echo(f"warning: {problem}", err=True)
    if not listed:
        click.echo(f"no runs recorded in {lib.runs_root()} yet: submit one with "
                   "`bridge-ray submit recipes/hello_cluster.py --follow`", err=True)


@runs_group.command("show")
@click.argument("submission_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
def show_command(submission_id, as_json):
    """Show everything about one run (default: the latest)."""
    run = jobs.load_run(submission_id, refresh=True)
    click.echo(json.dumps(dataclasses.asdict(run), indent=2, default=str) if as_json else describe(run))


@runs_group.command("plot")
@click.argument("submission_ids", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False), help="The PNG to write (default: the first run's folder, metrics.png).")
@click.option("--overwrite", is_flag=True, help="Replace the --out file if it exists.")
def plot_command(submission_ids, out, overwrite):
    """Draw the loss / reward curves of a run, or of several overlaid (`runs plot A B`), into a PNG."""
    from bridge_ray.runs import curves

    if out:
        curves.check_target(out, overwrite)
    runs = [jobs.load_run(submission_id) for submission_id in submission_ids]
    drawn = {run.submission_id: curves.of_run(run) for run in runs}
    empty = [name for name, found in drawn.items() if not found]
    if empty:
        raise ConfigError(f"run {empty[0]} has logged no step yet (no metrics.json or metrics.jsonl in its output "
                          "dir): plot it once it has")
    target = curves.plot(drawn, out or Path(runs[0].run_dir) / "metrics.png")
    click.echo(f"wrote {target}")


@click.command("upload")
@click.argument("run_or_dir")
@click.option("--repo-id", required=True, metavar="OWNER/NAME", help="The Hub repo (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
def upload_command(run_or_dir, repo_id, private):
    """Upload a run's merged model (or a model folder) to the Hugging Face Hub with a model card.

    The token comes from HF_TOKEN or `hf auth login`, never from the command line.
    """
    with Phases() as say:
        url = hub.upload(run_or_dir, repo_id, private=private, on_phase=say)
    click.echo(f"uploaded to {url}")


@click.command("export")
@click.argument("run")
@click.option("--step", type=int, help="The checkpointed step to merge (default: the latest).")
@click.option("--target-dir", type=click.Path(), help="Where to write the model (default: <output_dir>/hf_step_<N>).")
@click.option("--overwrite", is_flag=True, help="Replace what a --target-dir that is not empty holds.")
def export_command(run, step, target_dir, overwrite):
    """Merge a checkpoint of RUN into a Hugging Face model folder."""
    with Phases() as say:
        target = export_run(run, step=step, target_dir=target_dir, on_phase=say, overwrite=overwrite)
    click.echo(f"merged into {target}\nNext: bridge-ray upload {shlex.quote(str(target))} --repo-id OWNER/NAME")


COMMANDS = (runs_group, upload_command, export_command)
