"""``handfit fit IMAGE``: fit every hand of one photo."""

from __future__ import annotations

import sys

import click

from .common import Progress, common_options, fail, fit_options, parse_boxes


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@common_options()
@click.option("--json", "as_json", is_flag=True, help="Also print result.json to stdout.")
@click.option("--box", "boxes", multiple=True, metavar="X0,Y0,X1,Y1[,SIDE]", callback=lambda c, p, v: parse_boxes(v),
              help="A hand box in pixels (optionally with its side, left or right); the landmark model "
                   "runs inside each box instead of the detection cascade. Repeatable.")
def fit(image, outdir, quiet, as_json, boxes, **params):
    """Fit every hand in IMAGE and write OUT/<stem>/ (result.json, meshes, overlay.png)."""
    from ..errors import HandfitError

    progress = Progress(not quiet)
    try:
        opts = fit_options(params)
        from .. import api

        result = api.fit(image, progress=progress, options=opts, boxes=list(boxes) or None)
        progress.close()
        folder = result.save(outdir)
    except HandfitError as exc:
        progress.close()
        fail(exc)
    if as_json:
        click.echo((folder / "result.json").read_text(), nl=False)
    if not result.hands:
        click.echo(f"handfit: no hand found in {image}; wrote {folder / 'result.json'}", err=True)
        sys.exit(3)
    sides = ", ".join(h.side for h in result.hands)
    secs = sum(h.seconds for h in result.hands)
    click.echo(f"{image}: {result.hands_found} hand(s) found, {len(result.hands)} fitted ({sides}) "
               f"in {secs:.1f}s -> {folder}", err=as_json)
