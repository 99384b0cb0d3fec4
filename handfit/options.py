"""Every option of a fit, with its default, allowed values and bounds, in one place.

Plain dataclasses with no torch import, so the CLI can build its flags and
``--help`` from them at start-up. :class:`FitOptions` holds the per-photo
options and one option object per stage (:class:`KeypointStage`,
:class:`DenseStage`), each with its loss weights. Bounds and choices live in
each field's metadata; :meth:`FitOptions.validate` checks the whole tree and
raises :class:`OptionError` naming the field by its dotted path
(``dense.photo_mask``), which the CLI translates into its flag.

    opts = FitOptions.from_values({"keypoint.iters": 200, "dense.weights.silhouette": 0})
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Iterable, Mapping

from .errors import UsageError


class OptionError(UsageError):
    """A bad option value; ``field`` is its dotted path in :class:`FitOptions`."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def opt(default, *, choices: tuple = None, min: float = None, min_open: bool = False, kind: str = None):
    """A dataclass field with its allowed values: ``choices``, or a lower bound
    ``min`` (exclusive with ``min_open``); ``kind`` names a type the default
    cannot show ("float" or "path" for options that default to None) or one
    checked beyond it ("bool": True or False only, None where the default is None)."""
    meta = {k: v for k, v in (("choices", choices), ("min", min), ("kind", kind)) if v is not None}
    if min_open:
        meta["min_open"] = True
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class KeypointWeights:
    """Weights of the keypoint stage (defaults documented in docs/fitting.md)."""

    kp2d: float = opt(1.0, min=0)         # robust 2D reprojection, residuals in units of the box side
    kp3d: float = opt(0.01, min=0)        # scale-free shape of MediaPipe's world landmarks
    depth: float = opt(0.01, min=0)       # MediaPipe's relative depths (keypoints_z), in palm lengths
    pose_limit: float = opt(1.0, min=0)   # squared hinge outside the anatomical limits
    pose_l2: float = opt(1e-3, min=0)     # weak pull to the rest pose
    shape: float = opt(1e-3, min=0)       # shape coefficients ~ N(0,1)


@dataclass
class KeypointStage:
    """The keypoint stage: Adam over pose, shape and translation against the detections."""

    iters: int = opt(100, min=1)          # maximum iterations (stops earlier on convergence)
    lr_orient: float = opt(0.02, min=0)
    lr_pose: float = opt(0.02, min=0)
    lr_shape: float = opt(0.05, min=0)
    lr_transl: float = opt(0.002, min=0)
    tol: float = opt(1e-4, min=0)
    patience: int = opt(20, min=1)
    # MediaPipe's relative depth (keypoints_z) in units of its x pixels: 1, as its documentation
    # states ("roughly the same scale as x"); the depth term's reference (fitting/hands.py:depth_refs)
    depth_scale: float = opt(1.0, min=0, min_open=True)
    weights: KeypointWeights = field(default_factory=KeypointWeights)


@dataclass
class StartStage:
    """Checking each hand's start (handfit/fitting/starts.py): one further than ``check`` box
    sides from its evidence (mean 2D error) is replaced by the best of several candidates --
    the start turned about the wrist (180° and ±90° about each axis of ``turns``) and the IK
    start, each with its translation solved from the 2D -- after ``iters`` keypoint iterations."""

    check: float = opt(0.5, min=0, min_open=True)
    iters: int = opt(20, min=1)
    turns: str = opt("xyz", choices=("", "x", "y", "z", "xy", "xz", "yz", "xyz"))
    ik: bool = opt(True, kind="bool")


@dataclass
class TrackStage:
    """A video track's keypoint stage and settling (handfit/fitting/temporal.py, docs/fitting.md).

    The first frame gets the full keypoint stage; each later one ``warm_iters`` iterations from
    the frame before; then all frames ``refine_iters`` together with one shape and, with
    ``smooth`` > 0, a penalty on accelerations. After the dense stage, ``settle_iters`` refine
    the frames together again against the accelerations of their joints' relative depth."""

    # Following the hands through a clip (handfit/detect/tracking.py): the most mean keypoint
    # distance from a track's prediction, in hand sizes, that still links a hand to it; the
    # chosen frames in a row a track may miss and go on; chosen frames between runs of the
    # detection cascade (in between, each tracked hand is looked for where it is predicted)
    gate: float = opt(1.0, min=0, min_open=True)
    max_missed: int = opt(3, min=0)
    redetect: int = opt(10, min=1)
    # A hand that leaves and comes back within this many chosen frames continues its track (the
    # same side, no other hand of that side seen in between); 0: it starts a new one
    relink: int = opt(50, min=0)
    # While such a hand is away (its track ended within ``relink`` chosen frames), the cascade
    # runs every this many chosen frames instead of every ``redetect``: the hand is found soon
    # after it comes back, not up to ``redetect`` frames later
    wait_redetect: int = opt(2, min=1)
    # The detection mode of those periodic runs (the first frame and a lost track's get
    # FitOptions.detect): they only look for new hands, the tracked ones are looked for anyway
    rescan: str = opt("fast", choices=("fast", "thorough"))
    # Views of each tracked hand's crop per frame, fused into its evidence (photos: FitOptions.views):
    # its neighbouring frames add their evidence through the temporal terms
    views: int = opt(4, min=0)
    # Frames warm-started together, each from the last frame fitted before them (1: one at a
    # time, each from the one before), and their keypoint iterations (times their gap, at
    # most keypoint.iters when that is more). On dev3d_seq 4 frames and 40 iterations fit as
    # well as one frame at a time and 60 (sequence keypoint fit 7.975 mm / 10.10 mm/frame²
    # against 7.977 / 10.11) in a third of the time; 8 frames cost 0.09 mm.
    warm_batch: int = opt(4, min=1)
    warm_iters: int = opt(40, min=1)
    # A warm-started frame whose joint ends this many box sides from its evidence (gross) is
    # fitted again from its own start: its neighbours may be far away in a sparse track. Lower,
    # refits replace warm fits that were only a little off, and the track jitters (dev3d_seq at
    # 0.15: sequence keypoint fit 8.00 mm / 10.20 mm/frame², against 7.98 / 10.10 without refits)
    refit_rel: float = opt(0.25, min=0, min_open=True)
    refine_iters: int = opt(150, min=1)     # the joint refinement of all frames
    # Weight of the temporal terms (the refinement's smoothness and the settling); 0: none
    smooth: float = opt(1.0, min=0)
    smooth_scale: float = opt(5e-5, min=0)  # the smoothness term against the 2D term
    sigma_pose: float = opt(0.3, min=0, min_open=True)      # radians of acceleration per frame costing as much as ...
    sigma_transl: float = opt(0.005, min=0, min_open=True)  # ... metres of acceleration
    joint_scale: float = opt(6e-3, min=0)   # the joint-acceleration term against the 2D term
    refine_joint: float = opt(0.0, min=0)   # that term's weight in the joint refinement (0: settling only)
    # metres/frame² of a joint's root-relative acceleration that cost rho(1): in depth, across the image
    sigma_depth: float = opt(0.005, min=0, min_open=True)
    sigma_plane: float = opt(0.01, min=0, min_open=True)
    # The image-plane part's weight against the depth part's: across the image plane the photo
    # pins the joints, and smoothing there removes true motion.
    plane_ratio: float = opt(0.0, min=0)
    settle_iters: int = opt(150, min=0)     # iterations of the settling after the dense stage (0: none)
    # its hold on each root-relative joint (squared change, palm lengths); after the short dense
    # stage of dense_iters on dense_crop, 4 holds best on dev3d_seq (64-pixel crops: 7.951 mm /
    # 9.87 mm/frame², 1: 7.962 / 9.97; 128-pixel crops: 7.936 / 9.81, at a fifth more time a frame)
    settle_3d: float = opt(4.0, min=0)
    settle_2d: float = opt(1.0, min=0)      # its hold on each keypoint's 2D position
    chunk: int = opt(16, min=1)             # frames per dense batch of a track (bounds memory, not results)
    # A track frame's dense stage (its shape and texture known, its start the smooth track's):
    # the geometry phase's coarse and fine iterations (photos: dense.iters and dense.fine_iters).
    # On dev3d_seq, 24 iterations on 128-pixel crops read 7.916 mm / 9.797 mm/frame² against
    # 7.951 / 9.867, at 1.2x the time of a 150-frame video (docs/history/issue-30-video-tracks.md)
    dense_iters: int = opt(16, min=1)
    dense_fine_iters: int = opt(0, min=0)
    # ... and the side of its crop, rendered at that size (no downsampling; 0: crop_size and
    # dense.geometry_downsample as a photo's). The track's texture is still observed at crop_size.
    dense_crop: int = opt(64, min=0)
    # A frame whose joint is this many box sides from its evidence gives its track's texture
    # no texels: it would paint its fingers where they are not
    texture_rel: float = opt(0.25, min=0, min_open=True)


@dataclass
class DenseWeights:
    """Weights of the dense stage (defaults documented in docs/fitting.md)."""

    photo: float = opt(1.0, min=0)        # robust colour error over the hand and a margin
    grad: float = opt(0.5, min=0)         # image-gradient (structure) term
    silhouette: float = opt(4.0, min=0)   # antialiased coverage vs the photo's hand mask
    kp2d: float = opt(0.2, min=0)         # 2D keypoints, lower than the keypoint stage's 1.0
    # Squared hinge keeping each 2D keypoint within trust_radius of where the keypoint fit put
    # it (DenseStage.trust_target): weaker, the image terms move the 2D off on real photos
    # (dev3d's 2D error above the keypoint fit's; docs/history/fitting-defaults.md).
    kp_trust: float = opt(1000.0, min=0)
    # Squared distance (radians) of the pose and global orientation from the
    # keypoint stage's. On real photos (dev3d) the image terms let weakly seen
    # joints drift; 1.0 stops that but costs most of the synthetic gain. 0.3 pulls a
    # perturbed start back to the same fit (on 103 dev3d hands the keypoints move
    # 0.87 mm, median, against 1.03 without) and leaves dev3d's 3D and 2D as they are
    # (docs/history/fitting-defaults.md).
    anchor: float = opt(0.3, min=0)
    # Squared change of each keypoint's depth relative to the wrist (in palm
    # lengths) from the keypoint stage's, leaving the 2D projection free. A
    # photo pins where the fingers are in the image but hardly how far they
    # reach towards the camera: on real photos (dev3d) the image terms bent
    # weakly seen joints in depth, which this stops.
    depth: float = opt(1.0, min=0)
    pose_limit: float = opt(1.0, min=0)
    pose_l2: float = opt(1e-3, min=0)
    shape: float = opt(1e-3, min=0)
    tex_tv: float = opt(0.02, min=0)
    tex_prior: float = opt(0.05, min=0)
    sh: float = opt(0.01, min=0)          # keep the lighting near the initial ambient light


@dataclass
class DenseStage:
    """The dense stage: the rendered hand against the photo (see handfit/fitting/dense.py and docs/fitting.md)."""

    enabled: bool = opt(True, kind="bool")  # run it (False: keypoint fit only)
    # Geometry phase (stops earlier on convergence); with fine_iters, 32 + 4 cost 0.03 mm on
    # dev3d against 40 + 5 and save about a tenth of the default fit's time
    # (docs/history/fitting-defaults.md).
    iters: int = opt(32, min=1)
    texture_iters: int = opt(10, min=0)   # texture phase, geometry fixed ("fitted" textures only)
    # The texture a photo's hand gets (docs/fitting.md, "The exported texture"). "observed": the photo
    # unwrapped onto the final mesh as a video track's frames are, each texel the mean of the
    # pixels that see it squarely and that the photo's hand mask is sure of, the texels it does
    # not show filled (texture_fill); no texture phase. "fitted": the texture phase's, fitted
    # to every pixel under the silhouette, which paints occluders, sleeves and background where
    # the mesh is off. On dev3d_seq "observed" predicts the hand 4 frames away better
    # (handfit eval --sequence, tex_novel; docs/history/issue-32-textures.md).
    texture_from: str = opt("observed", choices=("observed", "fitted"))
    # How "observed" fills the texels the photo does not show: push-pull towards the observed
    # mean colour ("mean"), or the learned texture prior's prediction ("prior")
    texture_fill: str = opt("mean", choices=("mean", "prior"))
    lr_orient: float = opt(0.005, min=0)
    lr_pose: float = opt(0.01, min=0)
    lr_shape: float = opt(0.02, min=0)
    lr_transl: float = opt(0.0005, min=0)
    lr_texture: float = opt(0.02, min=0)
    lr_light: float = opt(0.01, min=0)
    tol: float = opt(1e-3, min=0)
    patience: int = opt(15, min=1)
    # The geometry phase's learning rates fall linearly to this fraction of theirs by its
    # last iteration, so it settles instead of ending on whatever its last step was.
    lr_end: float = opt(0.1, min=0)
    # Adam's epsilon in the geometry phase, per tensor: the pose (finger angles, radians),
    # the global orientation, the shape coefficients and the translation (metres). Adam
    # steps about a learning rate whatever the gradient's size, so in the directions the
    # photo hardly pins (a finger's bend in depth, the hand's size) noise-sized gradients
    # made full-size steps and the fit ended wherever they had walked it. Where a gradient
    # is well below eps the step shrinks with it (momentum SGD at lr/eps); well above, it
    # is Adam's. Each sits near its tensor's flat directions' gradient size, as
    # measured on dev3d (docs/history/fitting-defaults.md): on 26 dev3d hands these halve
    # the keypoints' movement from a perturbed start (median 2.38 -> 1.29 mm), the dense fit
    # still better than the keypoint fit.
    adam_eps: float = opt(0.3, min=0, min_open=True)
    adam_eps_orient: float = opt(1e-8, min=0, min_open=True)
    adam_eps_shape: float = opt(0.01, min=0, min_open=True)
    adam_eps_transl: float = opt(10.0, min=0, min_open=True)
    # The fine iterations continue the coarse ones' Adam (moments and step count)
    # rather than starting a fresh one, whose first steps are about a learning rate
    # long on every coordinate: as large as the perturbations the stage should absorb.
    fine_keeps_adam: bool = opt(True, kind="bool")
    # One falling learning rate over the coarse and the fine iterations together (from
    # 1 to lr_end), instead of a constant rate in the coarse part and a fall from 1 in
    # the fine part: the fit settles instead of restarting its steps at full size. With
    # fine_keeps_adam, on 26 dev3d hands the keypoints' movement from a perturbed start is
    # 0.97 mm against 1.29 (median; docs/history/fitting-defaults.md).
    one_schedule: bool = opt(True, kind="bool")
    crop_scale: float = opt(1.6, min=0, min_open=True)  # crop side = scale x fitted-keypoint box side
    margin: int = opt(8, min=0)           # pixels around the rendered hand included in the photometric term
    # The geometry phase renders its crops at 1/geometry_downsample of crop_size (the texture
    # phase at the full size): fewer pixels per iteration, the same silhouette to a pixel or two.
    geometry_downsample: int = opt(2, min=1)
    # Coarse to fine: after the geometry phase's iters at 1/geometry_downsample, this many
    # more at the full crop size, where a pixel's worth of misalignment still shows (5: with
    # one_schedule and fine_keeps_adam, 10 cut PA-MPJPE by only 0.03 mm more on 26 dev3d hands).
    fine_iters: int = opt(4, min=0)
    mask_confidence: float = opt(0.6, min=0)  # silhouette only where the photo mask is this sure: |2p-1| >= it
    # Texels a side of the albedo optimised with the geometry: a sharper one,
    # unwrapped from a misaligned mesh, bakes the misalignment in.
    texture_detail: int = opt(4, min=1)
    # The geometry phase's appearance model: "coarse", the albedo above
    # optimised with the geometry, or "prior", the learned texture prior's
    # prediction from the samples the current mesh sees (the paper's
    # mechanism), area-averaged to prior_detail texels a side and re-predicted
    # every prior_every iterations. "prior" needs a texture prior (FitOptions.texture_prior).
    geometry_albedo: str = opt("coarse", choices=("coarse", "prior"))
    prior_detail: int = opt(16, min=1)
    prior_every: int = opt(10, min=1)
    # What the render is composited over: the photo, or the photo with its
    # confident hand pixels filled from around them.
    background: str = opt("photo", choices=("photo", "inpainted"))
    # The photo's hand mask (see fitting/photo_mask.py).
    photo_mask: str = opt("consensus", choices=("consensus", "grabcut", "colour"))
    # GrabCut's rounds (its colour mixtures re-fitted, the cut redone). Seeded by the keypoint
    # fit's mesh, the mask hardly changes after the second: on examples/hand.jpg 30 of 13960
    # hand pixels differ from 4 rounds', at 52 ms a hand instead of 83.
    grabcut_iters: int = opt(2, min=1)
    # Box sides around each detected keypoint the dense stage may move freely in.
    # 0: the hinge holds every keypoint to its (multi-view fused) detection; on
    # dev3d a free ball of 0.03 lets the image terms pull the 2D off (docs/history/fitting-defaults.md).
    trust_radius: float = opt(0.0, min=0)
    # What that hinge holds each keypoint to: the (fused) detections, or where the keypoint
    # fit put it in 2D (the dense stage then refines around the keypoint fit, whose 2D term
    # is robust to a detection's outliers; the 2D terms still see the detections).
    trust_target: str = opt("keypoint_fit", choices=("detections", "keypoint_fit"))
    # Robust scale of the 2D term (box sides); wider than the keypoint stage's
    # 0.1 so the detections keep anchoring the fit.
    kp2d_sigma: float = opt(0.3, min=0, min_open=True)
    weights: DenseWeights = field(default_factory=DenseWeights)


@dataclass
class QualityStage:
    """The verdict on every hand (handfit/fitting/quality.py): each signal beyond its
    threshold makes the hand ``suspect``, with that reason. Distances in box sides (the larger
    side of the box around the evidence keypoints)."""

    # A joint this far from its evidence: below the 0.25 that makes a hand gross, since the
    # evidence itself may be a little off the truth
    max_rel: float = opt(0.2, min=0)
    start_rel: float = opt(0.5, min=0)     # the kept start's mean 2D error (handfit/fitting/starts.py)
    spread_rel: float = opt(0.25, min=0)   # the views of the crop disagreeing on a keypoint by this much
    min_score: float = opt(0.0, min=0)     # the detection's score below this
    # This fraction of the pose's angles at their limits (a fist has up to a third: 0.33 on the asl clip)
    limit_frac: float = opt(0.35, min=0)
    # The fit's 3D keypoints this far (palm lengths, after the best similarity) from MediaPipe's
    # world landmarks: the 2D evidence contradicts the 3D (fingers mixed up in one of them)
    world_rel: float = opt(0.17, min=0)
    # Both hand models fit within this fraction of each other (the side check's losses)
    side_margin: float = opt(0.0, min=0)


@dataclass
class FitOptions:
    """Every option of :func:`handfit.fit`; the CLI flags map onto these fields."""

    device: str = opt("auto", choices=("auto", "cpu", "cuda"))  # "cuda:N" is accepted too
    max_hands: int | None = opt(None, min=1, kind="int")  # hands per photo, best first; None: all (detect.HAND_CAP)
    detect: str = opt("thorough", choices=("fast", "thorough"))  # detection cascade (handfit.detect.MODES)
    side_check_below: float = opt(0.95, min=0)  # fit both hand models when the handedness score is below this
    side_check_iters: int = opt(40, min=1)      # keypoint iterations of each model's fit in that check
    model: str = opt("anny", choices=("anny", "mano"))
    mano: str | None = opt(None, kind="path")   # MANO_RIGHT/LEFT (.pkl/.npz) or a folder holding them
    focal: float | None = opt(None, min=0, min_open=True, kind="float")  # pixels; overrides EXIF and the default FOV
    # (fx, fy, cx, cy) pixels: the full camera, principal point anywhere (a crop's may lie
    # outside the image); overrides focal and EXIF.
    intrinsics: tuple | None = opt(None, kind="intrinsics")
    renderer: str = opt("auto", choices=("auto", "cpu", "nvdiffrast"))
    # Deprecated alias of dense.enabled (it was the dense stage's on/off switch):
    # FitOptions(appearance=False) sets dense.enabled = False, then reads None.
    appearance: bool | None = opt(None, kind="bool")
    crop_size: int = opt(256, min=16)     # side of the square crop each hand is fitted in
    texture_size: int = opt(256, min=4)   # side of the UV texture
    # Unseen texels in the texture phase: "default" (the shipped learned prior,
    # handfit/weights/texture_prior_anny.pt), "none" (the coarse albedo) or a prior file.
    texture_prior: str = opt("default")
    # Multi-view 2D evidence: refine each detected hand with this many views of its crop
    # (mirror, small rotations, a zoomed-out copy; handfit.detect.multiview.VIEW_SET), fused per
    # keypoint, their spread weighting the 2D terms. 0: off. See bench/multiview.py.
    views: int = opt(8, min=0)
    # Relative spread between the views (hand sizes) at which a keypoint's 2D weight halves
    # (handfit.detect.multiview.spread_weight); 0: every keypoint weighs alike.
    spread_sigma: float = opt(0.02, min=0)
    start: StartStage = field(default_factory=StartStage)
    keypoint: KeypointStage = field(default_factory=KeypointStage)
    dense: DenseStage = field(default_factory=DenseStage)
    track: TrackStage = field(default_factory=TrackStage)
    quality: QualityStage = field(default_factory=QualityStage)

    def __post_init__(self):
        if self.mano is not None:
            self.model = "mano"
        if self.appearance is not None:
            _check("appearance", _field(self, "appearance", "appearance"), self.appearance)
            warnings.warn("FitOptions.appearance is deprecated; use dense.enabled (DenseStage(enabled=...))",
                          DeprecationWarning, stacklevel=3)
            # A copy: dataclasses.replace(opts, appearance=False) must not switch off the original's stage.
            self.dense = replace(self.dense, enabled=self.appearance)
            self.appearance = None
        self.validate()

    def validate(self) -> "FitOptions":
        """Check every field of the tree; raises :class:`OptionError` naming the first bad one."""
        for path, f, value in _walk(self):
            _check(path, f, value)
        if self.texture_prior not in ("default", "none"):
            from pathlib import Path

            if not Path(str(self.texture_prior)).is_file():
                raise OptionError("texture_prior", f"expected default, none or a prior file, not {self.texture_prior!r}")
        if self.views > 20:  # handfit.detect.multiview.VIEW_SET
            raise OptionError("views", f"must be at most 20, not {self.views!r}")
        if 0 < self.track.dense_crop < 16:
            raise OptionError("track.dense_crop", f"must be 0 (crop_size) or at least 16, not {self.track.dense_crop!r}")
        if self.track.views > 20:
            raise OptionError("track.views", f"must be at most 20, not {self.track.views!r}")
        if self.model == "mano" and self.mano is None:
            raise OptionError("mano", "the MANO model needs a MANO file (MANO's licence forbids shipping it)")
        if self.intrinsics is not None:
            self.intrinsics = _intrinsics(self.intrinsics)
        return self

    @classmethod
    def from_values(cls, values: Mapping[str, Any], weights: Iterable[str] = ()) -> "FitOptions":
        """Defaults with ``values`` ({dotted path: value}) and weight overrides
        (``"TERM=W"`` strings, see :func:`weight_override`) applied."""
        opts = cls.__new__(cls)
        for f in fields(cls):  # defaults without validating yet: values may complete them (mano)
            setattr(opts, f.name, f.default_factory() if f.default_factory is not MISSING else f.default)
        items = dict(values)
        items.update(weight_override(w) for w in weights)
        for path, value in items.items():
            _set(opts, path, value)
        opts.__post_init__()
        return opts

    def torch_device(self):
        """The torch.device to optimise on (raises OptionError if CUDA was asked for and is absent)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise OptionError("device", "cuda was asked for, but torch sees no CUDA GPU")
        return torch.device(self.device)


def _walk(obj, prefix: str = ""):
    """(dotted path, dataclass field, value) for every leaf option under ``obj``."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        path = prefix + f.name
        if is_dataclass(value):
            yield from _walk(value, path + ".")
        else:
            yield path, f, value


def _check(path: str, f, value) -> None:
    meta = f.metadata
    if path == "device" and isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return
    if meta.get("kind") == "bool" and not (isinstance(value, bool) or value is None and f.default is None):
        raise OptionError(path, f"must be true or false, not {value!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise OptionError(path, f"must be one of {', '.join(meta['choices'])}, not {value!r}")
    if "min" in meta and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(path, f"must be a number, not {value!r}")
        if f.type in ("int", int) and not isinstance(value, int):
            raise OptionError(path, f"must be a whole number, not {value!r}")
        low = meta["min"]
        if value < low or (meta.get("min_open") and value == low):
            raise OptionError(path, f"must be {'>' if meta.get('min_open') else '>='} {low}, not {value!r}")


def _intrinsics(value) -> tuple:
    """(fx, fy, cx, cy) as four floats, finite, with fx, fy > 0, from those four numbers or a
    3×3 K (nine numbers, row by row) without skew and with last row 0, 0, 1; else
    OptionError("intrinsics")."""
    import math

    try:
        vals = tuple(float(v) for row in value
                     for v in (row if hasattr(row, "__len__") and not isinstance(row, str) else (row,)))
    except (TypeError, ValueError):
        vals = ()
    if len(vals) == 9 and vals[1] == 0 and vals[3] == 0 and vals[6:] == (0.0, 0.0, 1.0):
        vals = (vals[0], vals[4], vals[2], vals[5])
    if len(vals) != 4 or not all(map(math.isfinite, vals)) or not (vals[0] > 0 and vals[1] > 0):
        raise OptionError("intrinsics", f"expected fx, fy, cx, cy in pixels with fx, fy > 0, or a 3x3 K "
                                        f"without skew, not {value!r}")
    return vals


def _field(obj, name: str, path: str):
    for f in fields(obj):
        if f.name == name:
            return f
    raise OptionError(path, "no such option")


def _set(obj, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        _field(obj, name, path)
        obj = getattr(obj, name)
        if not is_dataclass(obj):
            raise OptionError(path, "no such option")
    _field(obj, leaf, path)
    setattr(obj, leaf, value)


def option_field(path: str):
    """The dataclass field behind a dotted option path, and its default value."""
    cur = FitOptions
    *parents, leaf = path.split(".")
    for name in parents:
        f = _field(cur, name, path)
        cur = f.default_factory()
    f = _field(cur, leaf, path)
    default = f.default_factory() if f.default_factory is not MISSING else f.default
    return f, default


# Stage prefixes of weight overrides: "silhouette=0" is the dense stage's,
# "kp.kp3d=0.1" the keypoint stage's.
WEIGHT_STAGES = {"dense": "dense.weights", "kp": "keypoint.weights"}


def weight_names() -> dict:
    """{stage prefix: sorted term names} of every weight that can be overridden."""
    return {"dense": sorted(f.name for f in fields(DenseWeights)),
            "kp": sorted(f.name for f in fields(KeypointWeights))}


def weight_override(spec: str) -> tuple[str, float]:
    """``"TERM=W"`` or ``"kp.TERM=W"`` -> (dotted path, W). Raises OptionError("weights", ...)."""
    term, sep, w = str(spec).partition("=")
    stage, _, term = term.strip().rpartition(".")
    stage = stage or "dense"
    try:
        value = float(w)
    except ValueError:
        value = None
    names = weight_names()
    if not sep or value is None or value < 0 or stage not in names or term not in names[stage]:
        known = ", ".join(names["dense"]) + "; kp." + ", kp.".join(names["kp"])
        raise OptionError("weights", f"{spec!r}: expected TERM=W with W >= 0 and TERM one of {known}")
    return f"{WEIGHT_STAGES[stage]}.{term}", value


__all__ = ["FitOptions", "StartStage", "KeypointStage", "KeypointWeights", "DenseStage", "TrackStage", "QualityStage",
           "DenseWeights", "OptionError",
           "option_field", "weight_override", "weight_names"]
