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
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import metrics as M
from .run import Evaluation, score
from .session import EvalSession, drop_fits, known_variants, make_job, verdict_of, with_dense

__all__ = ["SEQUENCE_VARIANTS", "evaluate_sequences", "fit_run", "accel_scores"]

#: Every variant :func:`evaluate_sequences` can measure, in report order.
SEQUENCE_VARIANTS = ("mediapipe", "keypoint", "dense", "sequence_keypoint", "sequence_dense")


def fit_run(items: list, opts, res, dense: bool) -> tuple:
    """Fit one track's hands through the pipeline, as ``handfit batch`` fits a video's track.

    items: T :class:`handfit.fitting.pipeline.HandItem` in frame order, each with its K, photo
    and detection (with its evidence, :class:`handfit.detect.tracking.Follower`).
    -> (keypoint, final): T :class:`HandResult` each, ``keypoint`` assembled from the
    track before the dense stage, ``final`` after :func:`finish_track` (None when not ``dense``).
    Seconds are the pipeline's (each frame's share of the track's optimisation)."""
    from ..fitting.pipeline import assemble, finish_track, fit_track

    fit = fit_track(items, opts, res)
    keypoint = assemble(fit, 1, opts.quality)   # numpy copies: the dense stage below changes fit.params
    return keypoint, (finish_track(fit, opts, res) if dense else None)


def evaluate_sequences(runs: list, options=None, variants=SEQUENCE_VARIANTS, batch_size: int = 1,
                       fit_sequence: Callable | None = None, on_run: Callable | None = None,
                       **session) -> Evaluation:
    """Fit and measure every run.

    Args:
        runs: [(run name, [Record, ...] in frame order)] (:func:`handfit.eval.datasets.read_runs`).
        options: :class:`handfit.FitOptions`; ``dense.enabled`` is set per variant.
        variants: some of :data:`SEQUENCE_VARIANTS`.
        batch_size: frames fitted together by the single-frame variants (see
            :func:`handfit.eval.run.evaluate`).
        fit_sequence: ``fit_sequence(items, opts, dense) -> (keypoint, final)`` as
            :func:`fit_run` (default: :func:`fit_run` with the session's ``resources``).
        on_run: called as ``on_run(Evaluation)`` with the runs done so far after each run.
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
    hands: list = []
    with EvalSession(options, sum(len(frames) for _, frames in runs), **session) as s:
        if fit_sequence is None:
            def fit_sequence(items, opts, dense):
                return fit_run(items, opts, s.resources, dense)
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
            keypoint, final = fit_sequence(items, opts, "sequence_dense" in variants)
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


def _evaluation(hands: list, variants: tuple) -> Evaluation:
    rows, summary, curves = score(hands, variants)
    per_hand, mean = accel_scores(hands, variants)
    rows = [{"run": e.run or "", **r, **{f"{v}_accel_mm": per_hand[v][i] for v in variants}}
            for i, (e, r) in enumerate(zip(hands, rows))]
    for v in variants:
        summary[v]["accel_mm"] = mean[v]
    return Evaluation(variants, hands, rows, summary, curves, M.PCK_THRESHOLDS_MM.copy())
