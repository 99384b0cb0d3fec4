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

:func:`track` links given detections offline; :class:`Follower` finds them too, frame by
frame, looking for each tracked hand where it is predicted to be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import passes
from .evidence import majority_side

BIG = 1e9   # the cost of a pair outside the gate, so the assignment never takes it if it can help it
BESIDE = 2.5   # the square looked in around a found hand, while a track waits, in its box's longer sides
FRAGMENT = 0.6  # a hand this much smaller than another, its keypoints inside that one's box, is part of it


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
    return max(passes.hand_size(kp), 1.0)


def predict(trk: Track, f: int) -> np.ndarray:
    """A track's (21,2) keypoints at chosen frame f: constant velocity from its last two frames."""
    last = np.asarray(trk.dets[-1].keypoints, np.float64)
    if len(trk.frames) < 2:
        return last
    prev = np.asarray(trk.dets[-2].keypoints, np.float64)
    v = (last - prev) / (trk.frames[-1] - trk.frames[-2])       # per chosen frame
    return last + v * (f - trk.frames[-1])


def fragment(a, b) -> bool:
    """Detection ``a`` is a piece of hand ``b`` (the landmark model's answer on a blurred or cut
    crop: the fingers alone, a few times smaller than the hand around them): a's hand size is
    under :data:`FRAGMENT` of b's and a's keypoints lie within b's box."""
    if hand_size(a.keypoints) >= FRAGMENT * hand_size(b.keypoints):
        return False
    x0, y0, x1, y1 = b.box_xyxy
    kp = np.asarray(a.keypoints)
    return bool(((kp[:, 0] >= x0) & (kp[:, 0] <= x1) & (kp[:, 1] >= y0) & (kp[:, 1] <= y1)).all())


def cost(trk: Track, f: int, det) -> float:
    """Mean keypoint distance of a detection from the track's prediction at frame f (or,
    if lower, from its last keypoints), in the track's hand sizes."""
    last = np.asarray(trk.dets[-1].keypoints, np.float64)
    kp = np.asarray(det.keypoints, np.float64)
    d = min(np.linalg.norm(kp - guess, axis=-1).mean() for guess in (predict(trk, f), last))
    return float(d) / hand_size(last)


def assign(tracks: list, f: int, dets: list, gate: float = 1.0) -> list:
    """One optimal assignment of chosen frame f's detections to ``tracks`` by their
    predicted-keypoint costs, pairs above ``gate`` never. -> [(track's index, detection's index)]"""
    from scipy.optimize import linear_sum_assignment

    if not tracks or not dets:
        return []
    c = np.array([[cost(t, f, d) for d in dets] for t in tracks])
    c = np.where(c <= gate, c, BIG)
    return [(int(ti), int(di)) for ti, di in zip(*linear_sum_assignment(c)) if c[ti, di] < BIG]


def link(tracks: list, f: int, dets: list, gate: float = 1.0, max_missed: int = 3) -> list:
    """One frame of linking: each of chosen frame f's detections joins a live track (one
    optimal assignment of predicted-keypoint costs within ``gate``, :func:`assign`) or stays
    unlinked. Updates the linked tracks. -> per detection, its track's index in ``tracks`` or None"""
    live = [i for i, t in enumerate(tracks) if f - t.frames[-1] - 1 <= max_missed]   # frames missed since its last
    owner = [None] * len(dets)
    for ti, di in assign([tracks[i] for i in live], f, dets, gate):
        tracks[live[ti]].frames.append(f)
        tracks[live[ti]].dets.append(dets[di])
        owner[di] = live[ti]
    return owner


def track(detections: list, gate: float = 1.0, max_missed: int = 3) -> list[Track]:
    """Link per-frame detections into tracks by predicted keypoints (not by side), offline.

    detections: one list of Detection per chosen frame. -> tracks, in order of first
    appearance (new ones within a frame in detection order), each with its majority side
    """
    tracks: list[Track] = []
    for f, dets in enumerate(detections):
        owner = link(tracks, f, dets, gate, max_missed)
        tracks += [Track(d.side, [f], [d]) for d, o in zip(dets, owner) if o is None]
    for t in tracks:
        t.side = majority_side(t.dets)
    return tracks


def relink(tracks: list, within: int) -> list:
    """Tracks with a hand that left and came back joined into one: a track that starts at most
    ``within`` chosen frames after another of the same side ended, while no other track of that
    side was seen in between, continues it (the most recently ended one; 0: none joined).
    Tracks are taken in order of their first frame. -> the tracks left, in order of first frame"""
    if within <= 0:
        return tracks
    out: list[Track] = []
    for t in sorted(tracks, key=lambda t: t.frames[0]):
        start = t.frames[0]
        ended = [u for u in out if u.side == t.side and u.frames[-1] < start and start - u.frames[-1] <= within]
        if ended:
            u = max(ended, key=lambda u: u.frames[-1])
            busy = any(v is not u and v.side == t.side and any(u.frames[-1] < f < start for f in v.frames)
                       for v in out)
            if not busy:
                u.frames += t.frames
                u.dets += t.dets
                continue
        out.append(t)
    return out


class Follower:
    """Every hand of a clip followed frame by frame, online: :meth:`step` once per chosen frame.

    * The detection cascade (``detector.detect``) runs on the first frame, whenever a live
      track missed the frame before and on a frame where a tracked hand is not where it was
      predicted; every ``redetect`` chosen frames, ``detector.detect`` in the ``rescan`` mode
      (None: the detector's own) looks for new hands.
    * In between, each live track's hand is looked for where its keypoints are predicted to be
      (:func:`predict`), with the evidence step run on that crop
      (:func:`handfit.detect.evidence.look`: the crop upscaled when the hand is small).
    * While a track that ended waits to be continued (``relink``), the crops around the hands
      found are looked in too (:meth:`_beside`): a hand that was hidden behind another comes
      out beside it; and the cascade runs every ``wait_redetect`` chosen frames, so that a hand
      that left the frame is found soon after it comes back.
    * Detections are linked to tracks by predicted keypoints (:func:`link`), never by side.
    * Every hand that joins a track gets the evidence step (:func:`handfit.detect.evidence.gather`,
      ``views`` views of its crop), so a track carries the same evidence as a photo.

    detector: a :class:`handfit.detect.Detector` (its ``landmarks`` and ``detect``);
    ``gate``, ``max_missed``: as :func:`link`; ``redetect``: chosen frames between cascade
    passes (1: every frame). :attr:`tracks` holds the tracks so far (their ``side`` the
    majority once :meth:`finish` is called)."""

    def __init__(self, detector, views: int, gate: float = 1.0, max_missed: int = 3, redetect: int = 10,
                 max_hands: int | None = None, rescan: str | None = "fast", relink: int = 0,
                 wait_redetect: int | None = None):
        self.detector, self.views, self.rescan, self.relink = detector, int(views), rescan, int(relink)
        self.gate, self.max_missed, self.redetect = float(gate), int(max_missed), max(int(redetect), 1)
        self.wait_redetect = self.redetect if wait_redetect is None else max(int(wait_redetect), 1)
        self.max_hands = max_hands
        self.tracks: list[Track] = []
        self.f, self.last_full = 0, None
        self.passes = {"cascade": 0, "look": 0}   # how each frame's hands were found, for reports

    def step(self, rgb: np.ndarray) -> list:
        """Find and link the hands of the next chosen frame, rgb (H,W,3) uint8.
        -> [(track index, Detection with its evidence)] for this frame"""
        from .evidence import gather, look
        from .passes import same_hand

        f = self.f
        self.f += 1
        live = [i for i, t in enumerate(self.tracks) if f - t.frames[-1] - 1 <= self.max_missed]
        lost = not live or any(self.tracks[i].frames[-1] != f - 1 for i in live)
        waiting = self._waiting(f)
        every = self.wait_redetect if waiting else self.redetect
        full = lost or self.last_full is None or f - self.last_full >= every
        cands, mode = [], None
        if full:
            mode = None if lost or self.rescan is None else self.rescan
            cands = list(self.detector.detect(rgb, mode=mode) if mode else self.detector.detect(rgb))[: self.max_hands]
            self.last_full = f
            self.passes["cascade"] += 1
        looked, missing = set(), False
        # a track the cascade's hands are assigned to needs no look; a hand within the gate of a
        # track may still be another track's (two hands a hand size apart)
        assigned = {live[ti] for ti, _ in assign([self.tracks[i] for i in live], f, cands, self.gate)}
        for i in live:
            t = self.tracks[i]
            if i in assigned:
                continue
            # the evidence step on the predicted crop: centring its views on a found hand instead
            # costs a view more and made dev3d_seq's tracks jitter more (10.15 mm/frame² against 10.10)
            d = look(self.detector.landmarks, rgb, predict(t, f), self.views, box_margin=self.detector.box_margin)
            if d is None or any(same_hand(d, c) for c in cands):
                # not there, or another tracked hand in its place (two hands crossing): the cascade
                missing = True
            else:
                looked.add(len(cands))
                cands.append(d)
                self.passes["look"] += 1
        if missing and (not full or mode is not None):   # a tracked hand is not where predicted: the cascade
            found = list(self.detector.detect(rgb))[: self.max_hands]
            self.last_full = f
            self.passes["cascade"] += 1
            cands += [d for d in found if not any(same_hand(d, c) for c in cands)]
        cands += self._beside(rgb, waiting, cands)
        # a piece of a hand found beside the whole of it: a track that followed the piece then
        # continues on the hand instead of a new track starting there
        keep = [i for i, d in enumerate(cands) if not any(fragment(d, o) for o in cands if o is not d)]
        looked = {n for n, i in enumerate(keep) if i in looked}
        cands = [cands[i] for i in keep]
        cands = [d if i in looked else gather(self.detector.landmarks, rgb, d, self.views,
                                              box_margin=self.detector.box_margin) for i, d in enumerate(cands)]
        owner = link(self.tracks, f, cands, self.gate, self.max_missed)
        out = []
        for i, (d, o) in enumerate(zip(cands, owner)):
            if o is None and i not in looked:   # a hand the cascade found that no track had: a new track
                self.tracks.append(Track(d.side, [f], [d]))
                o = len(self.tracks) - 1
            if o is not None:
                out.append((o, d))
        return out

    def _beside(self, rgb: np.ndarray, waiting: set, cands: list) -> list:
        """While a hand's track waits to be continued (``waiting``: the sides :meth:`_waiting`
        gives), the hands found so far are looked around, ``BESIDE`` times their box: a hand that
        went behind another comes out beside it, where the pass over the whole frame may not see
        it yet. -> hands of a waiting track's side that are none of ``cands`` (each starts a track
        that :func:`relink` joins to the waiting one)"""
        from .passes import map_back, same_hand, square_box_view

        if not waiting or not cands:
            return []
        H, W = rgb.shape[:2]
        views = [square_box_view(rgb, c.box_xyxy, "beside", grow=BESIDE) for c in cands]
        new: list = []
        for view, dets in zip(views, passes.landmarks_each(self.detector.landmarks, [v.image for v in views])):
            for d in dets:
                d = map_back(d, view, W, H, self.detector.box_margin)
                if d.side in waiting and not any(same_hand(d, c) for c in cands + new):
                    new.append(d)
        self.passes["beside"] = self.passes.get("beside", 0) + len(new)
        return new

    def _waiting(self, f: int) -> set:
        """The sides of the tracks that ended (missed more than ``max_missed`` chosen frames)
        within ``relink`` chosen frames before chosen frame f, and that no track started since
        continues (a hand of that side found after the end): hands that may come back."""
        waiting = set()
        for t in self.tracks:
            if self.max_missed < f - t.frames[-1] - 1 and f - t.frames[-1] <= self.relink:
                side = majority_side(t.dets)
                if not any(u.frames[0] > t.frames[-1] and majority_side(u.dets) == side for u in self.tracks):
                    waiting.add(side)
        return waiting

    @classmethod
    def for_options(cls, detector, opts) -> "Follower":
        """A Follower with a :class:`handfit.FitOptions`' settings: ``track.views``, ``track.gate``,
        ``track.max_missed``, ``track.redetect``, ``track.rescan``, ``track.relink``, ``track.wait_redetect``
        and ``max_hands``. Every caller that follows a clip (``handfit batch``, ``handfit eval --sequence``)
        makes it here."""
        t = opts.track
        return cls(detector, t.views, gate=t.gate, max_missed=t.max_missed, redetect=t.redetect,
                   max_hands=opts.max_hands, rescan=t.rescan, relink=t.relink, wait_redetect=t.wait_redetect)

    def skip(self) -> list:
        """A chosen frame without its photo (it could not be read): every track misses it. -> []"""
        self.f += 1
        return []

    def finish(self) -> list[Track]:
        """The tracks, each with its majority side, a hand that came back joined to its track
        (:func:`relink`). -> :attr:`tracks`"""
        for t in self.tracks:
            t.side = majority_side(t.dets)
        self.tracks = relink(self.tracks, self.relink)
        return self.tracks
