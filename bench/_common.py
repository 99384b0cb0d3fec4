"""What the benchmarks share: the data root, the import path, one ``--set`` override syntax,
a detector that remembers its answers, the pipeline composed from its public stages, and
the readers two scripts need.

Imported by every script of bench/ (bench/research/ adds bench/ to ``sys.path`` first).
Nothing here changes a library module: every setting is a :class:`handfit.FitOptions` field.

* Data: ``$HANDFIT_DATA``, else ``../shared/data`` beside the repository (:data:`DATA`).
* Import path: the repository, after any ``PYTHONPATH`` entries, so that
  ``PYTHONPATH=/other/checkout python bench/timing.py`` times that checkout's handfit.
* Settings: ``--set dotted.path=VALUE`` (repeatable), a :class:`FitOptions` field path
  (``dense.weights.silhouette=0``, ``keypoint.iters=200``, ``track.smooth=0``,
  ``spread_sigma=0.02``, ``dense.enabled=false``), read by :func:`fit_options`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ["HANDFIT_DATA"]) if os.environ.get("HANDFIT_DATA") else REPO.parent / "shared" / "data"
EXAMPLE = REPO / "examples" / "hand.jpg"
DEV_SETS = ("freihand", "onehand10k", "panoptic", "tfjs_models")   # the labelled sets of DATA/dev


def _import_path() -> None:
    """The repository on sys.path, after the PYTHONPATH entries (which may name another checkout)."""
    if str(REPO) in sys.path:
        return
    given = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    at = 0
    for i, p in enumerate(sys.path):
        if p and str(Path(p).resolve()) in given:
            at = i + 1
    sys.path.insert(at, str(REPO))


_import_path()


def checkout_env(checkout) -> dict:
    """This process's environment with ``checkout`` first on PYTHONPATH: a child started with it
    imports that checkout's handfit (run it from outside the repository: ``python -m`` puts the
    working directory first)."""
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(checkout)] + given))


def data(*parts: str) -> Path:
    """A path under the data root, e.g. ``data("dev3d")``."""
    return DATA.joinpath(*parts)


# -- settings --------------------------------------------------------------------------------------


def parse_value(text: str):
    """``--set`` values: int, float, true/false, none, else the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_sets(sets) -> dict:
    """``["dense.iters=32", ...]`` -> {"dense.iters": 32, ...}. Each string may hold several
    space-separated settings (one ``--try``); ``-`` stands for none (the defaults)."""
    out = {}
    for group in sets or ():
        for kv in str(group).split():
            if kv == "-":
                continue
            path, sep, value = kv.partition("=")
            if not sep or not path:
                raise SystemExit(f"--set wants dotted.path=VALUE (a FitOptions field), got {kv!r}")
            out[path.strip()] = parse_value(value)
    return out


def add_set_option(ap) -> None:
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="a FitOptions field by its dotted path, e.g. dense.weights.silhouette=0, keypoint.iters=200, "
                         "track.smooth=0, spread_sigma=0.02, dense.enabled=false; repeatable")


def fit_options(sets=(), base: dict | None = None):
    """:meth:`FitOptions.from_values` of ``base`` ({dotted path: value}) with the ``--set`` strings on top.
    A bad path or value ends the script with the option's message."""
    from handfit.options import FitOptions, OptionError

    try:
        return FitOptions.from_values({**(base or {}), **parse_sets(sets)})
    except OptionError as exc:
        raise SystemExit(f"--set {exc}") from None


def describe(sets) -> str:
    """The settings as one line, for tables ("defaults" when none)."""
    return " ".join(f"{k}={v}" for k, v in parse_sets(sets).items()) or "defaults"


# -- the detector, cached ---------------------------------------------------------------------------


def _image_key(rgb) -> str:
    a = np.ascontiguousarray(rgb)
    return hashlib.sha1(a.tobytes() + repr((a.shape, str(a.dtype))).encode()).hexdigest()


def _detector_class():
    from handfit.detect import Detector

    class CachedDetector(Detector):
        """A :class:`handfit.detect.Detector` that answers each image once: ``landmarks`` and
        ``detect`` are memoised by a hash of the image's bytes (MediaPipe is deterministic, so the
        answers are the ones it would give again). The multi-view refinement and the side check
        call ``landmarks`` on each view of a hand, so the views are cached too. Answers are copies:
        a caller may change its detections."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._seen: dict = {}

        def _cached(self, key, compute):
            if key not in self._seen:
                self._seen[key] = compute()
            return copy.deepcopy(self._seen[key])

        def landmarks(self, rgb, strict: bool = False):
            if not isinstance(rgb, np.ndarray):
                return super().landmarks(rgb, strict)
            return self._cached(("landmarks", _image_key(rgb), bool(strict)),
                                lambda: super(CachedDetector, self).landmarks(rgb, strict))

        def detect(self, rgb, mode: str | None = None, passes=None):
            if not isinstance(rgb, np.ndarray):
                return super().detect(rgb, mode, passes)
            key = ("detect", _image_key(rgb), mode or self.mode, None if passes is None else tuple(passes))
            return self._cached(key, lambda: super(CachedDetector, self).detect(rgb, mode, passes))

    return CachedDetector


def cached_resources():
    """A :class:`handfit.fitting.resources.Resources` whose detectors are :class:`CachedDetector`:
    for a benchmark that fits the same photos under several settings."""
    from handfit.fitting.resources import Resources

    return Resources(detector_class=_detector_class())


# -- the pipeline from its public stages ----------------------------------------------------------


def _hands_key(items, *parts) -> str:
    h = hashlib.sha1()
    for it in items:
        d = it.detection
        h.update(np.asarray(it.K, np.float64).tobytes())
        h.update(np.asarray(d.keypoints, np.float64).tobytes())
        h.update(f"{d.side}{d.score}".encode())
        if it.rgb is not None:
            h.update(_image_key(it.rgb).encode())
    h.update(repr(parts).encode())
    return h.hexdigest()


# FitOptions fields only the dense stage reads: a change of these keeps the keypoint fits.
DENSE_ONLY = ("dense", "texture_prior", "texture_size", "crop_size", "renderer", "track")


class StagedFit:
    """:func:`handfit.fit_batch`'s pipeline composed from the public stages of
    :mod:`handfit.fitting.pipeline` (the evidence step, ``decide_sides``, ``keypoint_fit``,
    ``finish``): the same numbers, with two things a benchmark needs.

    * ``cache``: side decisions, multi-view evidence and keypoint fits are kept, keyed by the
      hands and every option but the dense stage's (:data:`DENSE_ONLY`), so settings that change
      only the dense stage run only it (a reused keypoint fit's seconds are its first run's).
    * ``start``: ``start(fit, opts) -> params or None``, where the dense stage starts instead
      of the keypoint fit (its anchor and depth terms still hold the keypoint fit); it may also
      change ``fit.params`` in place, which moves that reference too.

    Call it as :func:`handfit.fit_batch` with ``detections`` (``handfit.eval.evaluate(...,
    fit_batch=StagedFit(res))``), or :meth:`hands` with :class:`HandItem` objects."""

    def __init__(self, res, cache: bool = True, start=None):
        self.res, self.cache, self.start = res, cache, start
        self._evidence: dict = {}
        self._keypoint: dict = {}

    def _key(self, items, opts, *extra) -> str:
        from dataclasses import fields

        return _hands_key(items, *extra, *[(f.name, getattr(opts, f.name)) for f in fields(opts)
                                           if f.name not in DENSE_ONLY])

    def evidence(self, items: list, opts) -> list:
        """The evidence step and stage 1, the side decision."""
        from handfit.fitting.pipeline import decide_sides

        key = self._key(items, opts)
        if not self.cache or key not in self._evidence:
            self._evidence[key] = decide_sides(with_evidence(items, opts, self.res), opts, self.res)
        return self._evidence[key]

    def keypoint(self, side: str, items: list, opts):
        """Stages 2 and 3 for one side's hands; a copy of the cached fit when there is one."""
        from handfit.fitting.pipeline import keypoint_fit

        if not self.cache:
            return keypoint_fit(side, items, opts, self.res)
        key = self._key(items, opts, side)
        if key not in self._keypoint:
            self._keypoint[key] = keypoint_fit(side, items, opts, self.res)
        fit = self._keypoint[key]
        return fit.select(range(len(fit.items)))  # a copy: the dense stage changes its params

    def hands(self, items: list, opts) -> list:
        """:func:`handfit.fitting.pipeline.fit_hands`: one HandResult per item, in order."""
        from handfit.fitting.pipeline import SIDE_ORDER, finish

        items = self.evidence(items, opts)
        out: list = [None] * len(items)
        for side in SIDE_ORDER:
            idx = [i for i, it in enumerate(items) if it.detection.side == side]
            if idx:
                fit = self.keypoint(side, [items[i] for i in idx], opts)
                start = self.start(fit, opts) if self.start is not None else None
                for i, hand in zip(idx, finish(fit, opts, self.res, start=start)):
                    out[i] = hand
                self.finished(fit, opts)
        return out

    def finished(self, fit, opts) -> None:
        """Called with each side's fit once its hands are finished (its params the final ones):
        a seam for probes that look at the final meshes. Does nothing here."""

    def __call__(self, images, detections=None, intrinsics=None, options=None, **_):
        """As :func:`handfit.fit_batch` (``options`` a FitOptions): one FitResult per image."""
        from handfit.fitting.pipeline import SIDE_ORDER, HandItem, frame_intrinsics
        from handfit.fitting.results import FitResult
        from handfit.io import load_image

        opts = options
        photos = []
        for i, image in enumerate(images):
            photo = load_image(image)
            K = (intrinsics[i] if intrinsics is not None and intrinsics[i] is not None
                 else frame_intrinsics(photo.width, photo.height, opts, exif_focal=photo.exif_focal_px))
            dets = list(detections[i] if detections is not None else self.res.detector(opts.detect).detect(photo.rgb))
            photos.append((photo, np.asarray(K, np.float64), dets[: opts.max_hands], len(dets)))
        items = [HandItem(K, d, photo.rgb) for photo, K, dets, _ in photos for d in dets]
        owner = [i for i, (_, _, dets, _) in enumerate(photos) for _ in dets]
        found = list(zip(owner, self.hands(items, opts)))
        out = []
        for i, (photo, K, _, n) in enumerate(photos):
            # as fit_batch orders them: by score, equal scores right hands first
            mine = [h for side in SIDE_ORDER for j, h in found if j == i and h.side == side]
            mine = [h for _, h in sorted(((h.score, h) for h in mine), key=lambda x: -x[0])]
            out.append(FitResult(image_path=str(photo.path) if photo.path else None, width=photo.width,
                                 height=photo.height, K=K, model=opts.model, hands=mine, image=photo.rgb,
                                 hands_found=n))
        return out


def texel_split(photo, target: dict, textures: list, held) -> tuple | None:
    """Textures scored on one fitted frame, and the first one's error split by what its source
    holds at the texels the scored pixels read (the texture probes of bench/research/).

    photo (H,W,3) uint8; target: ``K``, ``vertices``, ``faces``, ``uv``, ``uv_faces`` as
    :func:`handfit.eval.texture.render_albedo` takes them; textures: N (T,T,3) uint8; held
    (T,T,3) uint8: the source observation's weight, 255 for 1 (its caller's rounding).
    -> None when no pixel is scored, else (scores (N,) as ``texture_scores`` gives them, the flat
    colour's score, {"well" (weight >= 0.5), "weak" (0.01-0.5), "filled" (<= 0.01): (pixels,
    summed error of textures[0], summed error of the photo's mean colour without gain)})"""
    from handfit.eval.texture import gain_errors, render_albedo

    r = render_albedo(photo, target["K"], target["vertices"], target["faces"], target["uv"], target["uv_faces"],
                      [*textures, held])
    if r is None or not bool(r["mask"].any()):
        return None
    mask, ph = r["mask"], r["photo"]
    scores = np.array([float(gain_errors(a[None], ph, mask)[0]) for a in r["albedo"][:-1]])
    flat = float(gain_errors(mask[..., None].float().expand(-1, -1, -1, 3), ph, mask)[0])
    m, ph, alb, weight = mask[0], ph[0], r["albedo"][0], r["albedo"][-1][..., 0]
    mf = m[..., None].float()
    gain = (alb * ph * mf).sum((0, 1)) / (alb * alb * mf).sum((0, 1)).clamp(min=1e-12)
    err = (alb * gain - ph).abs().mean(-1)
    mean_err = (ph - (ph * mf).sum((0, 1)) / mf.sum()).abs().mean(-1)
    groups = {}
    for k, sel in (("well", weight >= 0.5), ("weak", (weight > 0.01) & (weight < 0.5)), ("filled", weight <= 0.01)):
        q = sel & m
        groups[k] = (float(q.sum()), float(err[q].sum()), float(mean_err[q].sum()))
    return scores, flat, groups


def shaken_pose(params: dict, sigma: float, rng) -> dict:
    """``params`` with Gaussian noise of ``sigma`` radians added to every pose value (a new dict;
    ``params`` unchanged). rng: a numpy Generator."""
    import torch

    p = params["pose"]
    eps = torch.from_numpy(rng.normal(0, sigma, tuple(p.shape))).to(p)
    return {**params, "pose": p + eps}


def batch_rng(fit):
    """A numpy Generator seeded by a SideFit's detected keypoints: the same hands get the same noise."""
    kp = fit.batch.kp2d.detach().cpu().numpy()
    return np.random.default_rng(int(hashlib.sha1(kp.tobytes()).hexdigest()[:8], 16))


# -- readers ---------------------------------------------------------------------------------------


def labelled_dev(root: Path | None = None):
    """(set, image path, its .gt.json document) of every labelled photo of the dev sets (:data:`DEV_SETS`)."""
    import json

    root = root or data("dev")
    for s in DEV_SETS:
        for gt in sorted((root / s).glob("*.gt.json")):
            yield s, gt.with_name(gt.name[: -len(".gt.json")]), json.loads(gt.read_text())


def read_predictions(out: Path) -> tuple:
    """The predictions.json of a ``handfit eval --sequence`` folder: (the variants it
    holds, in the usual order; {(run, hand): [its frames' records]})."""
    import json

    hands = json.loads((Path(out) / "predictions.json").read_text())["hands"]
    variants = [v for v in ("mediapipe", "keypoint", "dense", "sequence_keypoint", "sequence_dense")
                if any(v in h for h in hands)]
    runs: dict = {}
    for h in hands:
        runs.setdefault((h["run"], h["hand"]), []).append(h)
    return variants, runs


def with_evidence(items: list, opts, res) -> list:
    """HandItems whose detections went through the evidence step (:mod:`handfit.detect.evidence`,
    ``opts.views`` views), as every fit's detections do; items without a photo as they are."""
    from dataclasses import replace

    det = res.detector(opts.detect)
    return [replace(it, detection=det.evidence(it.rgb, [it.detection], opts.views)[0]) if it.rgb is not None else it
            for it in items]


def build_runs(root: Path, res, opts) -> list:
    """A sequence dataset's evidence: [(run, gt (F,21,3) metres, matched (F,) bool, HandItems of
    the matched frames)] per run (hand 0), detected, matched to the labels and refined from
    ``opts.views`` views as ``handfit eval --sequence`` does."""
    from handfit.eval.datasets import read_runs
    from handfit.eval.run import detect_record
    from handfit.fitting.pipeline import HandItem

    detector = res.detector(opts.detect, opts.max_hands)
    out = []
    for name, frames in read_runs(root):
        gt, matched, items = [], [], []
        for rec in frames:
            evs, photo, pairs = detect_record(rec, detector)
            gt.append(evs[0].gt3d)
            pair = [d for e, d in pairs if e.hand == 0]
            matched.append(bool(pair))
            if pair:
                items.append(HandItem(rec.K, pair[0], photo.rgb))
        out.append((name, np.stack(gt), np.array(matched), with_evidence(items, opts, res)))
        print(f"cached {name}: {len(items)}/{len(frames)} frames", file=sys.stderr, flush=True)
    return out


def load_runs(cache: Path, root: Path, res, opts) -> list | None:
    """:func:`build_runs` read from the pickle ``cache``, or built from ``root`` and written
    there; None (with a message) when neither exists."""
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    if not root.is_dir():
        print(f"no data at {root}", file=sys.stderr)
        return None
    runs = build_runs(root, res, opts)
    cache.write_bytes(pickle.dumps(runs))
    return runs


def pick_runs(runs: list, names) -> list:
    """The runs whose last path part starts with one of ``names`` (None: all); ``runs``' items
    are tuples or lists whose first element is the run's name."""
    return [r for r in runs if names is None or any(str(r[0]).split("/")[-1].startswith(n) for n in names)]
