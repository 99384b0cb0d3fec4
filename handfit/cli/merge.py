"""``handfit merge OUT``: join the summaries of a sharded batch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import fail


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--no-gallery", is_flag=True, help="Do not write OUT/index.html.")
def merge(out, extra, no_gallery):
    """Join the shard summaries OUT/summary-K-of-N.jsonl (and EXTRA summary files)
    into OUT/summary.jsonl and the gallery OUT/index.html. Exit codes as batch's."""
    from ..batch.merge import merge as merge_summaries
    from ..batch.records import exit_code
    from ..errors import HandfitError

    try:
        records, missing = merge_summaries(Path(out), [Path(p) for p in extra], gallery=not no_gallery)
    except HandfitError as exc:
        fail(exc)
    for problem in missing:  # shards without a summary, or killed before their end
        click.echo(f"handfit: warning: shard {problem}", err=True)
    click.echo(f"{len(records)} input(s) merged -> {Path(out) / 'summary.jsonl'}", err=True)
    sys.exit(exit_code(records))
