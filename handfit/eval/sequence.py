"""Sequences with 3D truth: every run of a dataset fitted as one track (``handfit eval --sequence``).

A run is a short clip of one hand (a folder of frames, :func:`handfit.eval.datasets.read_runs`),
each frame with its own K. :func:`evaluate_sequences` measures some of these variants:

* ``mediapipe``: MediaPipe's own world landmarks and 2D landmarks;
* ``keypoint`` / ``dense``: every frame fitted alone, as ``handfit fit`` would (one fit gives
  both: the keypoint result is kept from before the dense stage);
* ``sequence_keypoint``: the run's hands followed through its frames exactly as ``handfit batch``
  follows a video's (:func:`follow_run`: the cascade, then each hand looked for where it is
  predicted, every hand's evidence step), each track fitted
  (:func:`handfit.fitting.pipeline.fit_track`: side decided once, warm starts, one shape,
  temporal terms), measured before the dense stage;
* ``sequence_dense``: the same track through the dense stage with the track's texture and the
  settling (:func:`handfit.fitting.pipeline.finish_track`), as a video's tracks.

The first three are measured on each frame's own detection (the cascade, matched to the labels,
:func:`handfit.eval.session.detect_record`); a track's frame counts for the labelled hand its
detection matches.

So ``--compare`` fits each frame twice in all: once alone, once in its track. Besides the
per-hand metrics of :func:`handfit.eval.run.score`, every variant gets the acceleration error of
its root-relative keypoints against the truth (:func:`handfit.eval.metrics.accel_errors`,
``accel_mm``, mm/frame²), over the frames whose neighbours were fitted too.

The variants that make textures (``dense``: a texture per frame; ``sequence_dense``: one per
track) also get texture scores (:mod:`handfit.eval.texture`, ``texture_gap`` > 0): ``tex_seen``
(a frame's texture on its own photo), ``tex_novel`` (a frame's texture on the frames
``texture_gap`` source frames away), ``tex_loo`` (a track's texture built without the frame, on
it) and ``tex_flat`` / ``tex_loo_flat`` (one flat colour on the same frames), with the
fraction of pairs where the texture loses to the flat colour (``tex_novel_loses``,
``tex_loo_loses``).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from . import metrics as M
from .run import Evaluation, score
from .session import EvalSession, drop_fits, known_variants, make_job, mesh_of, verdict_of, with_dense
from .texture import TEXTURE_KEYS, run_scores

__all__ = ["SEQUENCE_VARIANTS", "TEXTURE_VARIANTS", "evaluate_sequences", "fit_run", "accel_scores",
           "texture_summary"]

#: Every variant :func:`evaluate_sequences` can measure, in report order.
SEQUENCE_VARIANTS = ("mediapipe", "keypoint", "dense", "sequence_keypoint", "sequence_dense")


def fit_run(items: list, opts, res, dense: bool, leave_one_out: bool = False) -> tuple:
    """Fit one track's hands through the pipeline, as ``handfit batch`` fits a video's track.

    items: T :class:`handfit.fitting.pipeline.HandItem` in frame order, each with its K, photo
    and detection (with its evidence, :class:`handfit.detect.tracking.Follower`).
    -> (keypoint, final, loo): T :class:`HandResult` each, ``keypoint`` assembled from the
    track before the dense stage, ``final`` after :func:`finish_track` (None when not ``dense``),
    and with ``leave_one_out`` per frame the track's texture built without it (else None).
    Seconds are the pipeline's (each frame's share of the track's optimisation)."""
    from ..fitting.pipeline import assemble, finish_track, fit_track

    fit = fit_track(items, opts, res)
    keypoint = assemble(fit, 1, opts.quality)   # numpy copies: the dense stage below changes fit.params
    if not dense:
        return keypoint, None, None
    if not leave_one_out:
        return keypoint, finish_track(fit, opts, res), None
    return (keypoint, *finish_track(fit, opts, res, leave_one_out=True))


def evaluate_sequences(runs: list, options=None, variants=SEQUENCE_VARIANTS, batch_size: int = 1,
                       fit_sequence: Callable | None = None, on_run: Callable | None = None,
                       texture_gap: int = 4, on_textures: Callable | None = None, **session) -> Evaluation:
    """Fit and measure every run.

    Args:
        runs: [(run name, [Record, ...] in frame order)] (:func:`handfit.eval.datasets.read_runs`).
        options: :class:`handfit.FitOptions`; ``dense.enabled`` is set per variant.
        variants: some of :data:`SEQUENCE_VARIANTS`.
        batch_size: frames fitted together by the single-frame variants (see
            :func:`handfit.eval.run.evaluate`).
        fit_sequence: ``fit_sequence(items, opts, dense) -> (keypoint, final[, loo])`` as
            :func:`fit_run` (default: :func:`fit_run` with the session's ``resources``, and
            the leave-one-out textures when the texture scores are on).
        on_run: called as ``on_run(Evaluation)`` with the runs done so far after each run.
        texture_gap: the source frames between a texture's frame and the frames it is scored on
            (``tex_novel``); 0: no texture scores.
        on_textures: called as ``on_textures(run name, variant, frames, rows)`` with the frames
            (meshes, textures and photos) and rows of :func:`handfit.eval.texture.run_scores` of
            each labelled hand, before the meshes are dropped (``bench/texture_strips.py`` draws them).
        session: the keyword arguments of :class:`~handfit.eval.session.EvalSession`:
            ``use_label_camera`` (fit with each frame's K, else the options' camera),
            ``match_threshold``, ``progress``, ``detector``, ``fit_batch`` (the
            single-frame fitting function), ``warmup`` and ``resources``.

    A frame that cannot be read, detected or fitted, or a run whose track fit fails,
    never ends the evaluation: the hands concerned record the ``error``.
    -> :class:`Evaluation` whose summary has ``accel_mm`` besides the usual keys and whose
    rows carry each hand's ``run``.
    """
    variants = known_variants(variants, SEQUENCE_VARIANTS)
    single = tuple(v for v in ("keypoint", "dense") if v in variants)
    sequence = tuple(v for v in ("sequence_keypoint", "sequence_dense") if v in variants)
    bs = max(1, int(batch_size))
    gap = max(0, int(texture_gap))
    hands: list = []
    with EvalSession(options, sum(len(frames) for _, frames in runs), keep_meshes=gap > 0, **session) as s:
        if fit_sequence is None:
            def fit_sequence(items, opts, dense):
                return fit_run(items, opts, s.resources, dense, leave_one_out=gap > 0)
        single_opts = with_dense(s.options, "dense" in single)
        seq_opts = with_dense(s.options, "sequence_dense" in sequence)
        for name, frames in runs:
            done = []  # (record, photo, pairs, its HandEvals) per frame of this run
            for rec in frames:
                evs, photo, pairs = s.detect(rec)
                for e in evs:
                    e.run = name
                hands.extend(evs)
                done.append((rec, photo, pairs, evs))
            jobs = [make_job(rec, photo, pairs) for rec, photo, pairs, _ in done if pairs]
            if jobs:  # the single-frame fit warms up the track fit too
                s.warm_up(jobs[0], single_opts)
            if single:
                for start in range(0, len(jobs), bs):
                    s.fit(jobs[start:start + bs], single, single_opts)
            if sequence:
                _fit_track_safe(done, sequence, seq_opts, s, fit_sequence)
            _score_textures(done, gap, None if on_textures is None else functools.partial(on_textures, name))
            s.advance(len(frames), hands, variants)
            if on_run is not None:
                on_run(_evaluation(hands, variants))
    return _evaluation(hands, variants)


def frame_number(rec) -> int | None:
    """A run's frame index from its file name ("00042.jpg" -> 42), or None when it has none."""
    import re

    digits = re.findall(r"\d+", rec.image.stem)
    return int(digits[-1]) if digits else None


def follow_run(photos: list, opts, detector) -> tuple:
    """The run's hands followed through its frames as ``handfit batch`` follows a video's
    (:meth:`handfit.detect.tracking.Follower.for_options`: ``opts.track``'s views and linking).
    photos: per frame its rgb (H,W,3) uint8, or None (a frame that could not be read).
    -> (tracks, per frame [(track index, Detection)])"""
    from ..detect.tracking import Follower

    follower = Follower.for_options(detector, opts)
    steps = [follower.step(rgb) if rgb is not None else follower.skip() for rgb in photos]
    return follower.finish(), steps


def _fit_track_safe(done: list, variants: tuple, opts, s, fit_sequence: Callable) -> None:
    """Follow the run's hands (:func:`follow_run`), fit each track, and store the sequence
    variants of every labelled hand a track's frame shows; a failure is recorded, not raised."""
    from ..fitting.pipeline import HandItem
    from .session import match_hands

    tracks, _ = follow_run([photo.rgb if photo is not None else None for _, photo, _, _ in done], opts, s.detector)
    for trk in tracks:
        items, shown = [], []   # shown: per frame of the track, the labelled hand its detection is, or None
        for f, d in zip(trk.frames, trk.dets):
            rec, photo, _, evs = done[f]
            items.append(HandItem(rec.K if s.use_label_camera else _own_camera(photo, opts), d, photo.rgb,
                                  frame_number(rec)))
            j = match_hands([e.gt2d for e in evs], [e.visible for e in evs], [d], s.match_threshold)
            hit = [e for e, a in zip(evs, j) if a is not None]
            shown.append(hit[0] if hit and not any(v in hit[0].preds for v in variants) else None)
        if not any(shown):
            continue
        try:
            keypoint, final, *extra = fit_sequence(items, opts, "sequence_dense" in variants)
            loo = extra[0] if extra else None
            if len(keypoint) != len(items) or (final is not None and len(final) != len(items)):
                raise RuntimeError(f"the track fit gave {len(keypoint)} results for {len(items)} frames")
        except Exception as exc:  # noqa: BLE001 - one bad track must not end the evaluation
            drop_fits([e for e in shown if e is not None], variants, "track fit failed", exc)
            continue
        for b, e in enumerate(shown):
            if e is None:
                continue
            if "sequence_keypoint" in variants:
                e.preds["sequence_keypoint"] = _pred(keypoint[b])
            if final is not None:
                e.preds["sequence_dense"] = _pred(final[b])
                mesh = mesh_of(final[b], items[b].K) if s.keep_meshes else None
                if mesh is not None:
                    e.preds["sequence_dense"]["mesh"] = {**mesh, "loo": None if loo is None else loo[b]}


#: The variants whose textures are scored: a texture per frame, and one per track.
TEXTURE_VARIANTS = ("dense", "sequence_dense")


def _score_textures(done: list, gap: int, show: Callable | None) -> None:
    """Score the textures of one run's fitted hands (:func:`handfit.eval.texture.run_scores`),
    each labelled hand along the run and each texture variant alone, show them
    (``show(variant, frames, rows)``) and drop their meshes.
    done: per frame (record, photo, pairs, its HandEvals), in frame order."""
    if gap <= 0:   # no meshes were kept
        return
    chains: dict = {}
    for rec, photo, _, evs in done:
        for e in evs:
            chains.setdefault(e.hand, []).append((rec, photo, e))
    for chain in chains.values():
        for v in TEXTURE_VARIANTS:
            frames = []
            for rec, photo, e in chain:
                mesh = e.preds.get(v, {}).pop("mesh", None)
                ok = mesh is not None and photo is not None
                frames.append({**mesh, "photo": photo.rgb, "number": frame_number(rec)} if ok else None)
            if not any(f is not None for f in frames):
                continue
            # a track has one texture: only a texture per frame is scored on other frames
            rows = run_scores(frames, gap if v == "dense" else 0)
            if show is not None:
                show(v, frames, rows)
            for (_, _, e), row in zip(chain, rows):
                if v in e.preds:
                    e.preds[v]["texture"] = row


def _own_camera(photo, opts) -> np.ndarray:
    """The options' camera for a photo (``--focal``/``--intrinsics``/EXIF/default FOV)."""
    from ..fitting.pipeline import frame_intrinsics

    return frame_intrinsics(photo.width, photo.height, opts, photo.exif_focal_px)


def _pred(h) -> dict:
    return {"kp3d": h.keypoints_3d, "kp2d": h.keypoints_2d_fitted, "seconds": h.seconds, "side": h.side,
            **verdict_of(h)}


def accel_scores(hands: list, variants) -> tuple:
    """Acceleration errors of every variant along every run.

    hands: :class:`~handfit.eval.run.HandEval` in frame order within each run (``e.run``).
    -> (per_hand, mean): per_hand[variant] a (len(hands),) array in mm/frame² (NaN where
    a frame or one of its neighbours has no prediction or no 3D truth); mean[variant] the
    mean over every frame that has one, pooled over the runs."""
    groups: dict = {}
    for i, e in enumerate(hands):
        groups.setdefault((e.run, e.hand), []).append(i)
    per_hand = {v: np.full(len(hands), np.nan) for v in variants}
    for idx in groups.values():
        gt = np.stack([hands[i].gt3d if hands[i].gt3d is not None else np.full((21, 3), np.nan) for i in idx])
        for v in variants:
            pred = np.full((len(idx), 21, 3), np.nan)
            for k, i in enumerate(idx):
                p = hands[i].preds.get(v, {}).get("kp3d")
                if p is not None:
                    pred[k] = p
            valid = np.isfinite(pred).all((1, 2)) & np.isfinite(gt).all((1, 2))
            per_hand[v][idx] = M.accel_errors(pred * 1000.0, np.nan_to_num(gt) * 1000.0, valid)
    mean = {}
    for v in variants:
        a = per_hand[v][np.isfinite(per_hand[v])]
        mean[v] = float(a.mean()) if a.size else float("nan")
    return per_hand, mean


def texture_summary(rows: list) -> dict:
    """The texture scores of a variant's hands (rows of :func:`handfit.eval.texture.run_scores`)
    -> ``tex_seen``; ``tex_novel``, ``tex_flat`` (the flat colour on the same targets), their
    ratio ``tex_novel_vs_flat``, ``tex_novel_loses`` (the fraction of pairs where the texture
    scores worse than flat, beyond rounding) and ``tex_pairs``; ``tex_loo`` likewise, when
    there is one. Means over the hands or pairs that have the score; NaN without any."""
    def mean(xs):
        xs = [x for x in xs if np.isfinite(x)]
        return float(np.mean(xs)) if xs else float("nan")

    pairs = np.array([p for r in rows for p in r.get("pairs", [])], np.float64).reshape(-1, 2)
    out = {"tex_seen": mean([r["tex_seen"] for r in rows]), "tex_novel": mean(pairs[:, 0]),
           "tex_flat": mean(pairs[:, 1]), "tex_pairs": int(len(pairs))}
    out["tex_novel_vs_flat"] = out["tex_novel"] / out["tex_flat"] if len(pairs) else float("nan")
    out["tex_novel_loses"] = float(loses_to_flat(pairs).mean()) if len(pairs) else float("nan")
    loo = np.array([(r["tex_loo"], r["tex_loo_flat"]) for r in rows if np.isfinite(r["tex_loo"])
                    and np.isfinite(r["tex_loo_flat"])], np.float64).reshape(-1, 2)
    if len(loo):
        out.update({"tex_loo": float(loo[:, 0].mean()), "tex_loo_flat": float(loo[:, 1].mean()),
                    "tex_loo_vs_flat": float(loo[:, 0].mean() / loo[:, 1].mean()),
                    "tex_loo_loses": float(loses_to_flat(loo).mean())})
    return out


def loses_to_flat(pairs: np.ndarray) -> np.ndarray:
    """(N,2) (texture's score, flat's) -> (N,) bool: the texture scores worse than flat, by more
    than rounding (a flat texture ties with flat; float32 renders differ in the 7th digit)."""
    return pairs[:, 0] > pairs[:, 1] * (1 + 1e-5)


def _evaluation(hands: list, variants: tuple) -> Evaluation:
    rows, summary, curves = score(hands, variants)
    per_hand, mean = accel_scores(hands, variants)
    scored = [v for v in TEXTURE_VARIANTS if v in variants and any("texture" in e.preds.get(v, {}) for e in hands)]
    rows = [{"run": e.run or "", **r, **{f"{v}_accel_mm": per_hand[v][i] for v in variants},
             **{f"{v}_{k}": e.preds.get(v, {}).get("texture", {}).get(k, float("nan"))
                for v in scored for k in TEXTURE_KEYS}}
            for i, (e, r) in enumerate(zip(hands, rows))]
    for v in variants:
        summary[v]["accel_mm"] = mean[v]
    for v in scored:
        summary[v].update(texture_summary([e.preds[v]["texture"] for e in hands if "texture" in e.preds.get(v, {})]))
    return Evaluation(variants, hands, rows, summary, curves, M.PCK_THRESHOLDS_MM.copy())
