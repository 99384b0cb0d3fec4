"""``handfit batch INPUTS``: photos and videos at scale (a thin layer over :mod:`handfit.batch`)."""

from __future__ import annotations

import sys

import click

from .common import common_options, fail, fit_options

BATCH_HELP = """Fit every photo and video in INPUTS (folders, walked recursively; photos;
videos; text files listing paths), batching hands across photos.

\b
Outputs in OUT:
  OUT/<path relative to the input, without extension>/   one folder per photo
  OUT/<video>/frame_000123/, tracks.npz, overlay.mp4     per video
  OUT/summary.jsonl   one line per input: path, status (ok, no_hand, error),
                      hands, seconds, message
  OUT/index.html      gallery of the overlays with per-hand metrics (offline)
A rerun skips inputs whose results are complete (--overwrite redoes them);
after a kill it finishes the rest. One bad file never stops the batch.

\b
Exit codes: 0 any hand fitted; 3 inputs read but no hand found;
4 no input could be read (or none found); 2 usage error; 1 other error;
5 compute backend unavailable.
"""


@click.command(help=BATCH_HELP)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@common_options(out_help="Output folder; each input gets OUT/<its path relative to its input folder, "
                         "without extension>/.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Photos optimised together (all their hands form one batch per side).")
@click.option("--glob", "pattern", default=None, metavar="PATTERN",
              help="Only files in folders whose name or relative path matches, e.g. '*.jpg' or 'cam1/*'.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(min=1),
              help="Videos: fit one frame in N (the output frame rate is the source's divided by N).")
@click.option("--start", default=0, show_default=True, type=click.IntRange(min=0), help="Videos: first frame.")
@click.option("--end", default=None, type=click.IntRange(min=1), help="Videos: stop before this frame.")
@click.option("--no-smooth", is_flag=True, help="Videos: no temporal smoothness on pose and translation.")
@click.option("--overwrite", is_flag=True, help="Recompute inputs whose results are already complete.")
@click.option("--shard", "shard_spec", default=None, metavar="K/N",
              help="Only the K-th of N disjoint parts of the inputs (Slurm arrays); "
                   "writes summary-K-of-N.jsonl; join them with `handfit merge OUT`.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: threads in this process. ray: a Ray Data pipeline (pip install 'handfit[ray]'); "
                   "a local Ray instance, or the cluster in RAY_ADDRESS.")
@click.option("--no-gallery", is_flag=True,
              help="Do not write OUT/index.html (with --shard it is never written: `handfit merge` writes it).")
@click.option("--boxes", "boxes_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help='Your own hand boxes: a JSON file {"photo path": [[x0,y0,x1,y1(,"left"|"right")], ...]} '
                   "(paths relative to the JSON file); listed photos are searched only inside their boxes. "
                   "Photos only: videos are searched whole.")
def batch(inputs, outdir, quiet, batch_size, pattern, every, start, end, no_smooth, overwrite, shard_spec, engine,
          no_gallery, boxes_file, **params):
    from dataclasses import replace

    from ..batch.records import VideoOptions
    from ..batch.runner import environ_progress, run_batch, summary_line
    from ..batch.stages import load_boxes
    from ..errors import HandfitError

    try:
        opts = fit_options(params)
        if no_smooth:
            opts = replace(opts, track=replace(opts.track, smooth=0.0))
        boxes = load_boxes(boxes_file) if boxes_file else None
        report = run_batch(inputs, outdir, opts, batch_size=batch_size, overwrite=overwrite, shard_spec=shard_spec,
                           glob=pattern, video=VideoOptions(every=every, start=start, end=end),
                           engine=engine, progress=not quiet and environ_progress(), gallery=not no_gallery,
                           boxes=boxes)
    except HandfitError as exc:
        fail(exc)
    for r in report.records:
        if r["status"] == "error":
            msg = r["message"] if r["path"] in r["message"] else f"{r['path']}: {r['message']}"
            click.echo(f"handfit: error: {msg}", err=True)
    click.echo(summary_line(report, outdir), err=True)
    if not report.records:
        click.echo("handfit: no photo or video found in the inputs" if report.summary.name == "summary.jsonl"
                   else "handfit: this shard holds no input", err=True)
        sys.exit(4 if report.summary.name == "summary.jsonl" else 0)
    sys.exit(report.exit_code)
