"""``bridge-ray runs [list | show ID] | upload | export``: run records, the Hub, merged checkpoints."""
from __future__ import annotations

import dataclasses
import datetime
import json

import click

from bridge_ray import hub, jobs
from bridge_ray import runs as lib
# Not `from bridge_ray import export`: the package binds that name to the function export.export.
from bridge_ray.export import export as export_run


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
                                    for k, v in (run.metrics or {}).items()) or "-"),
        f"hf model    {run.hf_model or '-'}" + "".join(f"\n            step {k}: {v}" for k, v in run.exports.items()),
        "wandb       " + (wandb.get("url") or wandb.get("dir") or "-")
        + (f"\n            offline: upload with `{wandb['sync_command']}`" if wandb.get("sync_command") else ""),
        f"hub         {run.hub_url or '-'}",
        f"run dir     {run.run_dir}   (config.json, metrics.json, packages.json, run.json)",
    ]
    if run.log_tail:
        lines.append("--- last log lines ---\n" + run.log_tail)
    return "\n".join(lines)


@click.group("runs", invoke_without_command=True)
@click.pass_context
def runs_group(ctx):
    """The run records of past submissions: list them (default) or show one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@runs_group.command("list")
def list_command():
    """List every recorded run, oldest first."""
    for run in jobs.list_runs(refresh=True):
        step = "-" if run.last_step is None else run.last_step
        click.echo(f"{run.submission_id}  {run.status:<9}  {_when(run.start_time)}  {_duration(run):>8}  "
                   f"step {step:<6}  {run.cluster:<10}  {run.recipe}" + (f"  ({run.failure})" if run.failure else ""))


@runs_group.command("show")
@click.argument("submission_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
def show_command(submission_id, as_json):
    """Show everything about one run (default: the latest)."""
    run = jobs.load_run(submission_id, refresh=True)
    click.echo(json.dumps(dataclasses.asdict(run), indent=2, default=str) if as_json else describe(run))


@click.command("upload")
@click.argument("run_or_dir")
@click.option("--repo-id", required=True, metavar="OWNER/NAME", help="The Hub repo (created if missing).")
@click.option("--private", is_flag=True, help="Create the repo private.")
def upload_command(run_or_dir, repo_id, private):
    """Upload a run's merged model (or a model folder) to the Hugging Face Hub with a model card.

    The token comes from HF_TOKEN or `hf auth login`, never from the command line.
    """
    url = hub.upload(run_or_dir, repo_id, private=private)
    click.echo(f"uploaded to {url}")


@click.command("export")
@click.argument("run")
@click.option("--step", type=int, help="The checkpointed step to merge (default: the latest).")
@click.option("--target-dir", type=click.Path(), help="Where to write the model (default: <output_dir>/hf_step_<N>).")
def export_command(run, step, target_dir):
    """Merge a checkpoint of RUN into a Hugging Face model folder."""
    target = export_run(run, step=step, target_dir=target_dir)
    click.echo(f"merged into {target}\nNext: bridge-ray upload {target} --repo-id OWNER/NAME")


COMMANDS = (runs_group, upload_command, export_command)
