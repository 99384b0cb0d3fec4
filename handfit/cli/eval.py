"""``handfit eval DATA``: 3D accuracy on labelled photos (a thin layer over :mod:`handfit.eval`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import common_options, fail, fit_options

EVAL_OUT_HELP = "Output folder for metrics.json, per_image.csv, pck.json, predictions.json and pck.png."


@click.command("eval")
@click.argument("data", type=click.Path(exists=True))
@common_options(out_default="handfit_eval", out_help=EVAL_OUT_HELP)
@click.option("--compare", is_flag=True,
              help="Measure the keypoint-only and the dense fit on the same detections in one run "
                   "(the keypoint result is kept from before the dense stage; nothing is fitted twice).")
@click.option("--sequence", is_flag=True,
              help="DATA holds runs (one subfolder of dev3d-layout frames per run, e.g. dev3d_seq): fit each "
                   "run as one track (one shape, warm starts, temporal terms, each frame with its own K) and "
                   "also report the acceleration error (accel_mm). With --compare: the single-frame keypoint "
                   "and dense fits and the sequence_keypoint and sequence_dense fits, on the same detections.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N images (with --sequence: the first N runs).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Take every N-th image (before --limit), e.g. to thin out video frames (with --sequence: "
                   "every N-th frame of each run).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "dev3d", "freihand", "ho3d", "interhand", "rhd"]),
              help="Dataset layout; auto recognises each from its files.")
@click.option("--split", default=None,
              help="Dataset split (freihand: training|evaluation, ho3d: train, interhand: train|val|test, "
                   "rhd: training|evaluation). Default: freihand evaluation (training when its labels are "
                   "absent), ho3d train (its evaluation labels are hidden), interhand test, rhd evaluation.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Images fitted together. 1 fits each image alone, as `handfit fit` does; larger is "
                   "faster on a GPU and changes results slightly (a batch converges as a whole).")
@click.option("--save-fits", is_flag=True, help="Also write every fit's files (meshes, overlay) to OUT/fits/.")
@click.option("--texture-gap", default=4, show_default=True, type=click.IntRange(min=0),
              help="With --sequence: score each texture on the frames this many source frames away "
                   "(tex_novel; counted in source frames, also with --every); 0: no texture scores.")
def eval_command(data, outdir, quiet, compare, sequence, limit, every, fmt, split, batch_size, save_fits,
                 texture_gap, **params):
    """Measure 3D accuracy on labelled photos: fit every image of DATA with its own camera.

    DATA is a folder of images with `<image>.gt.json` labels (the dev3d format:
    K and 21 3D keypoints per hand), or a FreiHAND, HO3D, InterHand2.6M or RHD
    folder as distributed. Each image is detected once; the detections that
    match a labelled hand are fitted with the image's ground-truth intrinsics
    (K with its principal point; --focal or --intrinsics replace it for every
    image).

    Reported per hand and on average, for MediaPipe's own world landmarks and
    for the fit (or, with --compare, for the keypoint and the dense fit):
    PA-MPJPE and root-relative MPJPE (mm), the AUC of the 3D PCK curve over
    0-50 mm, 2D error (px), detection recall, wrong-side fits and seconds per
    hand. With --sequence, each subfolder of DATA is a run fitted as one
    track (frames in name order), and the acceleration error of the
    root-relative keypoints (accel_mm, mm/frame²) is reported too, and so are
    texture scores of the variants that make textures: each texture's albedo
    render against the photo (0-1, a least-squares gain per colour channel, then
    the mean absolute error inside the eroded silhouette) on its own frame
    (tex_seen), on the frames --texture-gap away (tex_novel), built without the
    frame (a track's, tex_loo), and one flat colour on the same frames (tex_flat).
    Writes OUT/metrics.json, OUT/per_image.csv, OUT/pck.json,
    OUT/predictions.json (each hand's truth and every variant's 2D and 3D
    keypoints, for other metrics) and OUT/pck.png (all but the plot are
    rewritten after every --batch-size images, so an interrupted run
    leaves the results of the batches done).
    """
    from ..errors import HandfitError, UsageError
    from ..eval import summary_table, texture_table, write_report

    try:
        # --focal/--intrinsics replace every label's camera
        own_camera = params.get("fit_focal") is not None or params.get("fit_intrinsics") is not None
        opts = fit_options(params)
        if compare and not opts.dense.enabled:
            raise UsageError("--compare measures the dense fit too; drop --no-dense")
        if sequence and save_fits:
            raise UsageError("--save-fits does not apply to --sequence (its fits are not written)")
        shared = {"batch_size": batch_size, "use_label_camera": not own_camera, "progress": not quiet}
        if sequence:
            ev, counts = _eval_sequences(data, opts, compare, limit, every, fmt, split, outdir,
                                         {**shared, "texture_gap": texture_gap})
        else:
            ev, counts = _eval_images(data, opts, compare, limit, every, fmt, split, outdir, save_fits, shared)
        paths = write_report(ev, outdir)
    except HandfitError as exc:
        fail(exc)
    click.echo(summary_table(ev.summary))
    if any("tex_seen" in m for m in ev.summary.values()):
        click.echo(texture_table(ev.summary))
    click.echo(f"{counts}, {len(ev.hands)} labelled hands -> {', '.join(str(p) for p in paths.values())}", err=True)
    if not any(e.detected for e in ev.hands):
        sys.exit(3)


def _eval_images(data, opts, compare, limit, every, fmt, split, outdir, save_fits, shared: dict) -> tuple:
    """Every labelled image fitted alone -> (Evaluation, "<n> images"). ``shared``: the
    keyword arguments both evaluations take (batch size, camera, progress)."""
    from ..errors import UsageError
    from ..eval import VARIANTS, evaluate, open_dataset, select, write_report

    records = select(open_dataset(data, fmt, split), limit=limit, every=every)
    if not records:
        raise UsageError(f"{data}: no labelled images found")
    variants = VARIANTS if compare else ("mediapipe", "dense" if opts.dense.enabled else "keypoint")
    on_fit = None
    if save_fits:
        fits = Path(outdir) / "fits"

        def on_fit(rec, res):
            res.save(fits, Path(rec.name).with_suffix("").as_posix().replace("/", "__"))

    ev = evaluate(records, opts, variants, on_fit=on_fit,
                  on_chunk=lambda partial: write_report(partial, outdir, plot=False), **shared)
    return ev, f"{len(records)} images"


def _eval_sequences(data, opts, compare, limit, every, fmt, split, outdir, shared: dict) -> tuple:
    """Every run fitted as one track (and, with --compare, each frame alone)
    -> (Evaluation, "<n> runs, <m> frames")."""
    from ..errors import UsageError
    from ..eval import SEQUENCE_VARIANTS, evaluate_sequences, read_runs, write_report

    if fmt not in ("auto", "dev3d") or split is not None:
        raise UsageError("--sequence reads the dev3d layout (one folder per run); drop --format/--split")
    runs = read_runs(data, every)[:limit]
    variants = SEQUENCE_VARIANTS if compare else \
        ("mediapipe", "sequence_dense" if opts.dense.enabled else "sequence_keypoint")
    ev = evaluate_sequences(runs, opts, variants, on_run=lambda partial: write_report(partial, outdir, plot=False),
                            **shared)
    n_runs = len({e.run for e in ev.hands})
    return ev, f"{n_runs} runs, {sum(len(frames) for _, frames in runs)} frames"
