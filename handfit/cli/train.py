"""``handfit train CONFIG``: train the learned texture prior."""

from __future__ import annotations

import os

import click

from .common import fail


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "outdir", default=None, type=click.Path(file_okay=False),
              help="Output folder (checkpoint.pt, texture_prior.pt, log.jsonl, loss.png). "
                   "Default: train_out/<config name>.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt to the config's final step.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train(config, outdir, resume, quiet):
    """Train the learned texture prior as the YAML file CONFIG says.

    Data sources (synthetic scenes with known textures, folders of photos),
    model size, losses, optimiser, checkpoints: see examples/configs/. Runs
    under torchrun for several processes (rank 0 writes).
    """
    from ..errors import HandfitError

    try:
        from ..train.trainer import train as run_training

        out = run_training(config, outdir, resume=resume, progress=not quiet)
    except HandfitError as exc:
        fail(exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        click.echo(f"handfit: trained texture prior -> {out}", err=True)
