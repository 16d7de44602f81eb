"""``bridge-ray data ...`` and ``bridge-ray assets ...``: training files and offline models."""
from __future__ import annotations

from pathlib import Path

import click

from bridge_ray.data.gsm8k import HUB_ID
from bridge_ray.errors import ConfigError


@click.group("data")
def data_group():
    """Make verl's SFT/RL parquet files."""


def _contradictions(ctx: click.Context, synthetic: bool, source: str | None, val_source: str | None) -> list[str]:
    """Options given on the command line that the chosen source would silently ignore."""
    given = {name for name in ("num_train", "num_val", "seed")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    if synthetic:
        return ["--val FILE is a validation file for --source; --synthetic makes its own validation rows "
                "(--num-val N): drop --val"] if val_source else []
    problems = [f"--{name.replace('_', '-')} applies to --synthetic only: drop it"
                for name in ("num_train", "seed") if name in given]
    if source == HUB_ID and not Path(source).exists() and (val_source or "num_val" in given):
        problems.append(f"{source} brings its own validation rows (its test split): drop --val and --num-val, "
                        "or pass local train and validation files")
    elif val_source and "num_val" in given:
        problems.append("--num-val N holds rows of --source out for validation when there is no --val FILE: "
                        "drop one of them")
    return problems


_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace output files that exist already.")


@data_group.command("gsm8k")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the parquet files.")
@click.option("--synthetic", is_flag=True, help="Generate GSM8K-style problems offline.")
@click.option("--source", help="Real GSM8K: a local .parquet/.jsonl file, or openai/gsm8k (needs the Hub).")
@click.option("--val", "val_source", help="With --source: a separate validation file.")
@click.option("--num-train", type=click.IntRange(min=1), default=2000, show_default=True,
              help="With --synthetic: training problems.")
@click.option("--num-val", type=click.IntRange(min=1), default=128, show_default=True,
              help="Validation rows: made by --synthetic, or held out of --source when there is no --val.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --synthetic: same seed, same files.")
@_OVERWRITE
@click.pass_context
def gsm8k_command(ctx, out_dir, synthetic, source, val_source, num_train, num_val, seed, overwrite):
    """Write train/val SFT parquet (messages) and RL parquet (prompt, reward_model, ...)."""
    from bridge_ray.data import convert_gsm8k, generate_synthetic

    if synthetic == bool(source):
        raise ConfigError("give exactly one of --synthetic or --source PATH|openai/gsm8k")
    problems = _contradictions(ctx, synthetic, source, val_source)
    if problems:
        raise ConfigError(problems)
    if synthetic:
        paths = generate_synthetic(out_dir, num_train=num_train, num_val=num_val, seed=seed, overwrite=overwrite)
    else:
        paths = convert_gsm8k(source, out_dir, val_source=val_source, num_val=num_val, overwrite=overwrite)
    for name, path in paths.items():
        click.echo(f"{name:<9} {path}")


@data_group.command("to-messages")
@click.argument("source")
@click.argument("out_path")
@click.option("--prompt-key", required=True,
              help="Column of the prompt: a string, or a list of chat turns such as the RL files' `prompt`; dotted for nested.")
@click.option("--response-key", required=True, help="Column of the response, e.g. extra_info.answer.")
@click.option("--system-prompt", help="Optional system message for every row.")
@_OVERWRITE
def to_messages_command(source, out_path, prompt_key, response_key, system_prompt, overwrite):
    """Convert a prompt/response parquet or jsonl SOURCE into verl's `messages` parquet OUT_PATH (*.parquet)."""
    from bridge_ray.data import convert_to_messages

    click.echo(convert_to_messages(source, out_path, prompt_key, response_key, system_prompt=system_prompt,
                                   overwrite=overwrite))


@click.group("assets")
def assets_group():
    """Build offline model assets (tokenizer + random-initialised Llama)."""


@assets_group.command("demo")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--shape", type=click.Choice(["tiny", "llama-3.2-1b"]), default="tiny", show_default=True)
@click.option("--num-train", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--num-val", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--overwrite", is_flag=True, help="Rebuild assets built in OUT_DIR with other options.")
def demo_assets_command(out_dir, shape, num_train, num_val, overwrite):
    """Tokenizer, model and synthetic GSM8K data in OUT_DIR (reused when already built alike)."""
    from bridge_ray.models.assets import build_demo_assets

    for name, path in build_demo_assets(out_dir, shape=shape, num_train=num_train, num_val=num_val,
                                        overwrite=overwrite).items():
        click.echo(f"{name:<9} {path}")


COMMANDS = (data_group, assets_group)
