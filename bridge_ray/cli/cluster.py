"""``bridge-ray up | down | status``: the cluster's lifecycle."""
from __future__ import annotations

import datetime

import click

from bridge_ray import cluster as lib
from bridge_ray.cluster import health
from bridge_ray.cluster.records import DEFAULT_CLUSTER, name_flag
from bridge_ray.errors import ConfigError

name_option = click.option("--name", default=DEFAULT_CLUSTER, show_default=True, help="Which cluster.")


@click.command("up")
@name_option
@click.option("--num-cpus", type=click.IntRange(min=0), help="CPUs the local head offers (default: all).")
@click.option("--num-gpus", type=click.IntRange(min=0), help="GPUs the local head offers (default: all).")
@click.option("--port", type=click.IntRange(1024, 65535), help="GCS port (default: a free port).")
@click.option("--dashboard-port", type=click.IntRange(1024, 65535), help="Jobs API port on 127.0.0.1 (default: a free port).")
@click.option("--address", help="Register an existing cluster's Jobs API URL instead of starting one.")
@click.option("--token-file", type=click.Path(), help="With --address: that cluster's Ray auth token file.")
@click.option("--python", default="python", show_default=True, help="With --address: the interpreter job drivers use there.")
@click.option("--slurm", is_flag=True, help="Start the cluster in one SLURM allocation (options below).")
@click.option("--nodes", type=int, help="--slurm: nodes, one Ray node each (default 1, or slurm.nodes in the config file).")
@click.option("--gpus-per-node", type=int, help="--slurm: GPUs per node (default 0, or slurm.gpus_per_node).")
@click.option("--cpus-per-task", type=int, help="--slurm: CPUs per node for Ray (SLURM's default otherwise).")
@click.option("--partition", help="--slurm: the partition.")
@click.option("--nodelist", help="--slurm: use exactly these nodes, e.g. 'gpu[01-02]'.")
@click.option("--time", help="--slurm: time limit, e.g. 04:00:00; jobs checkpoint before it ends.")
@click.option("--account", help="--slurm: the account to charge.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, help="--slurm: another sbatch option, e.g. --sbatch-arg=--exclusive (repeatable).")
@click.option("--setup", "setup", multiple=True, help="--slurm: a shell line every node runs before Ray starts, e.g. "
              "--setup 'module load hpcx/2.18.1' (repeatable; replaces slurm.setup of the config file).")
@click.option("--setup-file", type=click.File("r"), help="--slurm: a file of such lines (after any --setup).")
@click.option("--join-timeout", "join_timeout_s", type=int, help="--slurm: seconds the head may take to start "
              "once allocated, then the other nodes to join (default 300, or slurm.join_timeout_s).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=600, show_default=True,
              help="--slurm: seconds the allocation may stay pending.")
@click.option("--keep-pending", is_flag=True, help="--slurm: leave a still-pending allocation queued instead of cancelling it.")
@click.option("--dry-run", is_flag=True, help="--slurm: print the sbatch script and submit nothing.")
@click.option("--check", is_flag=True, help="Then run `bridge-ray doctor` (probe + all-reduce); exit 1 on a FAIL.")
def up_command(name, num_cpus, num_gpus, port, dashboard_port, address, token_file, python, slurm, wait_s,
               keep_pending, dry_run, check, setup_file, **script_options):
    """Start a Ray cluster on this machine or in a SLURM allocation (or register one) and record where it is.

    With --slurm, options not given come from the config file (`bridge-ray config`).
    """
    from bridge_ray.cluster import slurm as slurm_lib

    ctx = click.get_current_context()
    given = [p for p in (*script_options, "wait_s", "keep_pending", "dry_run", "setup_file")
             if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if given and not slurm:
        flag = next(param.opts[0] for param in ctx.command.params if param.name == given[0])
        raise click.UsageError(f"{flag} needs --slurm")
    _check_backend_flags(ctx, address, slurm)
    if slurm:
        script_options = _with_settings(script_options, setup_file)
    if dry_run:
        click.echo(slurm_lib.render(name, **script_options), nl=False)
        return
    options = dict(script_options, wait_s=wait_s, keep_pending=keep_pending, progress=_print_phase) if slurm else None
    if num_gpus and not (slurm or address):
        _warn_missing_gpus(num_gpus)
    record = lib.up(name, address=address, token_file=token_file, python=python, num_cpus=num_cpus, num_gpus=num_gpus,
                    ports={"port": port, "dashboard-port": dashboard_port}, slurm=options)
    flag = name_flag(name)
    click.echo(format_status(lib.status(name)) if slurm else
               f"cluster {record.name!r} is up ({record.backend}): Jobs API {record.dashboard_url}")
    if not check:
        from bridge_ray.network import saved_profile_note

        note = saved_profile_note(name)
        if note:
            click.echo(note if note.startswith("warning: ") else f"note: {note}", err=note.startswith("warning: "))
    if check:
        from bridge_ray.network import render_table, run_doctor  # imports ray

        report = run_doctor(name)
        click.echo(render_table(report))
        if not report.ok:
            raise SystemExit(1)
    click.echo(f"Next: bridge-ray submit recipes/hello_cluster.py{flag} --follow | bridge-ray status{flag} "
               f"| bridge-ray down{flag}")


def _warn_missing_gpus(asked: int) -> None:
    from bridge_ray.cluster.local import missing_gpus_warning

    warning = missing_gpus_warning(asked)
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _check_backend_flags(ctx: click.Context, address: str | None, slurm: bool) -> None:
    """Refuse the flags of one backend given with another, before anything starts (they would be ignored)."""
    if address and slurm:
        raise ConfigError("--address registers a running cluster and --slurm starts one: give one of them")
    if address or slurm:
        other = "--address (the cluster is running already)" if address else "--slurm"
        instead = {"num_cpus": "--cpus-per-task", "num_gpus": "--gpus-per-node"} if slurm else {}
        for flag in ("num_cpus", "num_gpus", "port", "dashboard_port"):
            if ctx.get_parameter_source(flag) == click.core.ParameterSource.COMMANDLINE:
                option = flag.replace("_", "-")
                hint = f"use {instead[flag]}" if flag in instead else f"leave --{option} out"
                raise ConfigError(f"--{option} is for a cluster started on this machine, not with {other}: {hint}")
    for flag in ("token_file", "python"):
        if not address and ctx.get_parameter_source(flag) == click.core.ParameterSource.COMMANDLINE:
            option = flag.replace("_", "-")
            raise ConfigError(f"--{option} needs --address (it is for a cluster registered by its Jobs API URL): add "
                              f"--address http://HEAD:8265, or leave --{option} out")


def _with_settings(options: dict, setup_file) -> dict:
    """``up --slurm``'s options: each one not given on the command line from the config file."""
    from bridge_ray import settings

    found = settings.effective()
    try:
        from_file = [line.rstrip("\n") for line in setup_file if line.strip()] if setup_file else []
    except UnicodeDecodeError as err:
        raise ConfigError(f"--setup-file {setup_file.name} is not UTF-8 text (byte {err.start}): give a file of shell "
                          "lines") from None
    lines = list(options["setup"]) + from_file
    merged = dict(options, setup=tuple(lines))
    for key in ("partition", "account", "time", "nodes", "gpus_per_node", "cpus_per_task", "setup", "sbatch_args",
                "join_timeout_s"):
        if merged[key] in (None, ()):
            default = found[f"slurm.{key}"].value
            merged[key] = tuple(default) if isinstance(default, list) else default
    return merged


def _print_phase(phase: str, detail: str, when: float) -> None:
    click.echo(f"{datetime.datetime.fromtimestamp(when):%H:%M:%S} {phase:<10} {detail}")


@click.command("config")
def config_command():
    """Show the defaults `up --slurm` and `submit` take from the config files, and where each came from."""
    from bridge_ray import settings

    found = settings.effective()
    project = settings.project_file()
    click.echo(f"user file:    {settings.user_file()}{'' if settings.user_file().is_file() else ' (none)'}")
    click.echo(f"project file: {project or f'(none: {settings.PROJECT_FILE} here or in a folder above)'}")
    width = max(len(key) for key in found)
    for key, setting in found.items():
        shown = setting.value if not isinstance(setting.value, list) else ("; ".join(setting.value) or "[]")
        click.echo(f"{key:<{width}}  {'-' if shown is None else shown}  ({setting.source})")


@click.command("down")
@name_option
@click.option("--force", is_flag=True, help="Stop its running jobs first (recorded STOPPED); also clears an unreadable record.")
def down_command(name, force):
    """Stop exactly this cluster's processes and remove its record (safe to repeat); refuses while jobs run."""
    record = lib.down(name, force=force)
    if record is None:
        click.echo(f"cluster {name!r} is not recorded; nothing to do")
    elif record.backend == "unreadable":
        click.echo(f"cluster {name!r} is down: its unreadable record is removed and what was started for it stopped")
    else:
        click.echo(f"cluster {name!r} is down")


@click.command("status")
@click.argument("submission_id", required=False)
@name_option
def status_command(submission_id, name):
    """Show the cluster's nodes, resources and jobs; with an ID, that job's status."""
    if submission_id:
        from bridge_ray.jobs import Job

        click.echo(Job(submission_id, name).status())
        return
    st = lib.status(name)
    click.echo(format_status(st))
    if not st.alive and not st.pending:
        if not st.gone:
            raise health.unresponsive_error(st.record, "asked for its status")
        raise health.stale_error(st.record, f"its head at {st.record.dashboard_url} does not answer")


def format_status(st: lib.ClusterStatus) -> str:
    """The text ``bridge-ray status`` prints."""
    r = st.record
    created = datetime.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"cluster {r.name!r} ({r.backend}) created {created}", f"  Jobs API: {r.dashboard_url}"]
    if st.slurm_state is not None:
        lines.append(f"  SLURM job {r.slurm.get('job_id')}: {st.slurm_state}")
    if not st.alive:
        flag = name_flag(r.name)
        if st.pending:
            lines.append(f"  waiting for the allocation; `bridge-ray down{flag}` cancels it")
            return "\n".join(lines)
        if st.gone:
            lines.append(f"  STALE: the head does not answer; fix: `bridge-ray down{flag}` then `{health.up_again(r)}`")
        else:
            lines.append(f"  NOT ANSWERING for {health.UNRESPONSIVE_S:.0f} s, but not gone (busy or paused?): try again; "
                         f"`bridge-ray down{flag} --force` takes it down")
        return "\n".join(lines)
    alive = [n for n in st.nodes if n["state"] == "ALIVE"]
    lines.append(f"  nodes: {len(alive)} alive" + (f", {len(st.nodes) - len(alive)} dead" if len(alive) < len(st.nodes) else ""))
    for node in st.nodes:
        res = node["resources_total"]
        role = "head" if node.get("is_head_node") else "worker"
        lines.append(f"    {node['node_ip']:<16} {role:<6} {node['state']:<6} CPU {res.get('CPU', 0):g}  GPU {res.get('GPU', 0):g}")
    for key, (used, total) in sorted(st.usage.items()):
        lines.append(f"  {key}: {used:g}/{total:g} used")
    lines.append(f"  jobs: {len(st.jobs)}" + (" (the last 10; `bridge-ray list` shows all)" if len(st.jobs) > 10 else ""))
    shown = [(str(job.get("submission_id") or job.get("job_id")), job) for job in st.jobs[-10:]]
    width = max((len(job_id) for job_id, _ in shown), default=0)
    for job_id, job in shown:  # the entrypoint tells a submitted recipe from a driver such as `bridge-ray doctor`
        entry = " ".join(str(job.get("entrypoint") or "").split())
        lines.append(f"    {job_id:<{width}}  {job.get('status')!s:<9}  {entry[:77] + '...' if len(entry) > 80 else entry}")
    return "\n".join(lines)


COMMANDS = (up_command, down_command, status_command, config_command)
