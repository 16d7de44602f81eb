"""``bridge-ray doctor``: check the cluster's network and save the profile jobs will use."""
from __future__ import annotations

import sys

import click


@click.command("doctor")
@click.option("--name", default="default", show_default=True, help="Cluster to check.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--timeout", default=60.0, show_default=True, type=float,
              help="Seconds the all-reduce may take once its ranks run, above 0 and at most 3600 "
                   "(probes and ranks get 5 min to start).")
@click.option("--env", "env", multiple=True, metavar="KEY=VAL",
              help="Try this variable over the detected profile; saved if the all-reduce passes. "
                   "KEY= (empty) tries without a saved KEY and removes it. "
                   "Secrets (HF_TOKEN, ...) are refused: export them in your shell.")
@click.option("--shared-dir", "shared_dirs", multiple=True, metavar="PATH",
              help="Another existing, writable directory every node must see (e.g. the output dir).")
def doctor_command(name: str, as_json: bool, timeout: float, env: tuple[str, ...],
                   shared_dirs: tuple[str, ...]) -> None:
    """Probe every node, all-reduce across them, print a PASS/FAIL table; exit 1 on any FAIL.

    The derived NCCL/Gloo settings are saved beside the cluster record, so later nodes
    and jobs get them without anyone typing a variable.
    """
    from bridge_ray.network import parse_env_assignments, render_table, run_doctor, to_json  # imports ray

    report = run_doctor(name, timeout_s=timeout, env=parse_env_assignments(env), shared_dirs=shared_dirs)
    click.echo(to_json(report) if as_json else render_table(report))
    sys.exit(0 if report.ok else 1)


COMMANDS = [doctor_command]
