"""``bridge-ray data ...`` and ``bridge-ray assets ...``: training files and offline models."""
from __future__ import annotations

import click

from bridge_ray.errors import ConfigError


@click.group("data")
def data_group():
    """Make verl's SFT/RL parquet files."""


@data_group.command("gsm8k")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the parquet files.")
@click.option("--synthetic", is_flag=True, help="Generate GSM8K-style problems offline.")
@click.option("--source", help="Real GSM8K: a local .parquet/.jsonl file, or openai/gsm8k (needs the Hub).")
@click.option("--val", "val_source", help="With --source: a separate validation file.")
@click.option("--num-train", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--num-val", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def gsm8k_command(out_dir, synthetic, source, val_source, num_train, num_val, seed):
    """Write train/val SFT parquet (messages) and RL parquet (prompt, reward_model, ...)."""
    from bridge_ray.data import convert_gsm8k, generate_synthetic

    if synthetic == bool(source):
        raise ConfigError("give exactly one of --synthetic or --source PATH|openai/gsm8k")
    if synthetic:
        paths = generate_synthetic(out_dir, num_train=num_train, num_val=num_val, seed=seed)
    else:
        paths = convert_gsm8k(source, out_dir, val_source=val_source, num_val=num_val)
    for name, path in paths.items():
        click.echo(f"{name:<9} {path}")


@data_group.command("to-messages")
@click.argument("source")
@click.argument("out_path")
@click.option("--prompt-key", required=True,
              help="Column of the prompt: a string, or a list of chat turns such as the RL files' `prompt`; dotted for nested.")
@click.option("--response-key", required=True, help="Column of the response, e.g. extra_info.answer.")
@click.option("--system-prompt", help="Optional system message for every row.")
def to_messages_command(source, out_path, prompt_key, response_key, system_prompt):
    """Convert a prompt/response parquet or jsonl into verl's `messages` parquet."""
    from bridge_ray.data import convert_to_messages

    click.echo(convert_to_messages(source, out_path, prompt_key, response_key, system_prompt=system_prompt))


@click.group("assets")
def assets_group():
    """Build offline model assets (tokenizer + random-initialised Llama)."""


@assets_group.command("demo")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--shape", type=click.Choice(["tiny", "llama-3.2-1b"]), default="tiny", show_default=True)
@click.option("--num-train", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--num-val", type=click.IntRange(min=1), default=128, show_default=True)
def demo_assets_command(out_dir, shape, num_train, num_val):
    """Tokenizer, model and synthetic GSM8K data in OUT_DIR (reused when already built)."""
    from bridge_ray.models.assets import build_demo_assets

    for name, path in build_demo_assets(out_dir, shape=shape, num_train=num_train, num_val=num_val).items():
        click.echo(f"{name:<9} {path}")


COMMANDS = (data_group, assets_group)
