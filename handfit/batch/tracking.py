"""Linking a video's per-frame detections into tracks, one per hand.

Each live track predicts where its 21 keypoints will be in the next chosen
frame: constant velocity from its last two observations, per chosen frame,
times the chosen frames since its last one (so ``--every N`` never
overshoots: the velocity was measured in the same steps). A detection's cost
for a track is the mean distance between its keypoints and the track's
prediction, in the track's hand size (the larger side of its last keypoints'
box); the hypothesis that the hand stood still (its last keypoints) is
tried too and the lower cost kept, so a hand that turns back between sparse
frames is not lost. Pairs above ``gate`` are never linked; within the gate,
one optimal assignment per frame (:func:`scipy.optimize.linear_sum_assignment`)
rather than greedy. Comparing all 21 keypoints rather than boxes is what keeps
two crossing hands apart: where their boxes coincide, their fingers don't.

MediaPipe's side label takes no part in the linking: a track's side is the
score-weighted majority of its detections' sides, decided once at the end, so
a frame MediaPipe called the other side stays in its track (the fit then
decides the side once per track: :func:`handfit.fitting.pipeline.fit_track`).
A track missing from more than ``max_missed`` chosen frames in a row ends; the
hand, seen again, starts a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BIG = 1e9   # the cost of a pair outside the gate, so the assignment never takes it if it can help it


@dataclass(frozen=True)
class TrackerOptions:
    gate: float = 1.0      # the most mean keypoint distance, in hand sizes, that still links
    max_missed: int = 3    # chosen frames in a row a track may miss and go on


@dataclass
class Track:
    side: str
    frames: list = field(default_factory=list)   # indices into the chosen frames
    dets: list = field(default_factory=list)     # handfit.detect.Detection per frame

    @property
    def last_box(self):
        return self.dets[-1].box_xyxy


def hand_size(kp: np.ndarray) -> float:
    """The larger side of the box of (21,2) keypoints, in pixels (at least 1)."""
    return max(float(np.ptp(kp, axis=0).max()), 1.0)


def predict(trk: Track, f: int) -> np.ndarray:
    """A track's (21,2) keypoints at chosen frame f: constant velocity from its last two frames."""
    last = np.asarray(trk.dets[-1].keypoints, np.float64)
    if len(trk.frames) < 2:
        return last
    prev = np.asarray(trk.dets[-2].keypoints, np.float64)
    v = (last - prev) / (trk.frames[-1] - trk.frames[-2])       # per chosen frame
    return last + v * (f - trk.frames[-1])


def cost(trk: Track, f: int, det) -> float:
    """Mean keypoint distance of a detection from the track's prediction at frame f (or,
    if lower, from its last keypoints), in the track's hand sizes."""
    last = np.asarray(trk.dets[-1].keypoints, np.float64)
    kp = np.asarray(det.keypoints, np.float64)
    d = min(np.linalg.norm(kp - guess, axis=-1).mean() for guess in (predict(trk, f), last))
    return float(d) / hand_size(last)


def majority_side(dets: list) -> str:
    """The side with the larger sum of handedness scores (the first detection's on a tie)."""
    votes: dict = {}
    for d in dets:
        votes[d.side] = votes.get(d.side, 0.0) + float(d.score)
    return max(votes, key=lambda s: (votes[s], s == dets[0].side))


def track(detections: list, options: TrackerOptions | None = None) -> list[Track]:
    """Link per-frame detections into tracks by predicted keypoints (not by side).

    detections: one list of Detection per chosen frame. -> tracks, in order of first
    appearance (new ones within a frame in detection order), each with its majority side
    """
    from scipy.optimize import linear_sum_assignment

    o = options or TrackerOptions()
    tracks: list[Track] = []
    for f, dets in enumerate(detections):
        live = [t for t in tracks if f - t.frames[-1] - 1 <= o.max_missed]   # frames missed since its last
        used = set()
        if live and dets:
            c = np.array([[cost(t, f, d) for d in dets] for t in live])
            c = np.where(c <= o.gate, c, BIG)
            for ti, di in zip(*linear_sum_assignment(c)):
                if c[ti, di] < BIG:
                    live[ti].frames.append(f)
                    live[ti].dets.append(dets[di])
                    used.add(di)
        tracks += [Track(d.side, [f], [d]) for di, d in enumerate(dets) if di not in used]
    for t in tracks:
        t.side = majority_side(t.dets)
    return tracks
