"""Linking detections into tracks (handfit/detect/tracking.py), on synthetic detection sequences."""

from __future__ import annotations

import numpy as np

from handfit.detect.evidence import majority_side
from handfit.detect.tracking import predict, track
from handfit.options import TrackStage
from handfit.detect import Detection

W, H = 640, 480
# A right hand, in hand sizes around its centre: wrist, then 4 joints per finger fanning out.
_ANGLES = np.radians([-65, -25, -5, 15, 35])     # thumb to little finger, from straight up
_LENGTHS = np.array([0.45, 0.6, 0.65, 0.6, 0.5])


def _shape(curl: float = 0.0) -> np.ndarray:
    """(21,2) keypoints of a right hand of size about 1 around (0, 0); curl 0 open .. 1 a fist."""
    pts = [np.array([0.0, 0.5])]
    for a, n in zip(_ANGLES, _LENGTHS):
        base = np.array([0.0, 0.5]) + 0.35 * np.array([np.sin(a), -np.cos(a)])
        for j in range(1, 5):
            r = n * j / 4 * (1 - 0.7 * curl)
            pts.append(base + r * np.array([np.sin(a), -np.cos(a)]))
    return np.array(pts)


def hand(x, y=240.0, side="right", label=None, curl=0.0, size=80.0, score=0.95) -> Detection:
    """A detection of a `side` hand, its keypoints' mean at (x, y), that MediaPipe called `label` (default: its side)."""
    kp = _shape(curl)
    if side == "left":
        kp[:, 0] *= -1
    kp = (kp - kp.mean(0)) * size + [x, y]      # (x, y): the keypoints' mean
    lo, hi = kp.min(0) - 0.1 * size, kp.max(0) + 0.1 * size
    return Detection(side=label or side, score=score, box_xyxy=np.r_[lo, hi], keypoints=kp,
                     keypoints_z=np.zeros(21), world=np.zeros((21, 3)), image_size=(W, H))


def _look_near(at, frame, within: float | None = None):
    """A stand-in for ``evidence.look``: the current frame's true hand (``at(frame["f"])``) nearest
    the predicted keypoints, None when it is ``within`` pixels or further from them."""
    def look(landmarks_fn, rgb, keypoints, views, **kw):
        d = min(at(frame["f"]), key=lambda d: np.linalg.norm(d.keypoints - keypoints, axis=-1).mean())
        if within is not None and np.linalg.norm(d.keypoints - keypoints, axis=-1).mean() >= within:
            return None
        return d
    return look


def _owners(tracks, truth: dict) -> list:
    """Per track, the hands (truth: id(detection) -> hand name) its detections belong to."""
    return [sorted({truth[id(d)] for d in t.dets}) for t in tracks]


def test_crossing_hands_keep_their_tracks_with_noisy_sides():
    """Two hands at one height cross, their paths swapping sides of the image; MediaPipe's
    side labels flip at random, and near the crossing one hand or the other is hidden. At
    frame 10 only hand a is seen, a little behind its own prediction: its centre is closer
    to hidden b's predicted centre than to a's, so only the keypoints (an open right hand,
    a half-closed left one) give it to a."""
    rng = np.random.default_rng(0)
    frames, truth = [], {}
    for f in range(21):
        flip = lambda s: {"left": "right", "right": "left"}[s] if rng.random() < 0.3 else s  # noqa: E731
        a = hand(100 + 20 * f - 7 * (f == 10), 240, "right", flip("right"))
        b = hand(495 - 20 * f, 240, "left", flip("left"), curl=0.5)
        dets = [d for d, hidden in ((a, f == 11), (b, f in (9, 10))) if not hidden]
        truth.update({id(a): "a", id(b): "b"})
        frames.append(dets[::-1] if f % 2 else dets)    # the detector's order means nothing
    tracks = track(frames)
    assert _owners(tracks, truth) == [["a"], ["b"]]
    assert [t.side for t in tracks] == ["right", "left"]      # the majority, despite 30% flips
    assert tracks[0].frames == [f for f in range(21) if f != 11]
    assert tracks[1].frames == [f for f in range(21) if f not in (9, 10)]


def test_a_missed_hand_is_found_where_it_went():
    """A hand moving 30 px (a third of its size) per frame, missed for max_missed frames, has moved more
    than the gate from where it was last seen: the prediction, scaled by the frames missed,
    still finds it; one frame more and it starts a new track (a hand gone that long is a
    new hand, say one that left the frame and came back)."""
    k = TrackStage().max_missed
    seen = lambda f: hand(100 + 30 * f)  # noqa: E731
    frames = [[seen(f)] for f in range(3)] + [[] for _ in range(k)] + [[seen(3 + k)], [seen(4 + k)]]
    assert [t.frames for t in track(frames)] == [[0, 1, 2, 3 + k, 4 + k]]
    frames = [[seen(f)] for f in range(3)] + [[] for _ in range(k + 1)] + [[seen(4 + k)]]
    assert [t.frames for t in track(frames)] == [[0, 1, 2], [4 + k]]
    # the prediction counts chosen frames (never overshoots with --every N): last + velocity * frames since
    t = track([[hand(100)], [], [hand(160)]])[0]
    assert np.allclose(predict(t, 3), hand(190).keypoints)


def test_a_side_flip_does_not_split_a_track():
    frames = [[hand(100 + 5 * f, label="left" if f in (4, 5) else "right", score=0.6 if f in (4, 5) else 0.9)]
              for f in range(10)]
    tracks = track(frames)
    assert len(tracks) == 1 and tracks[0].frames == list(range(10)) and tracks[0].side == "right"
    assert [d.side for d in tracks[0].dets][3:7] == ["right", "left", "left", "right"]   # MediaPipe's, kept for the fit
    # the side is the score-weighted majority: 2 confident calls outweigh 3 unsure ones
    assert majority_side([hand(0, label="left", score=0.5)] * 3 + [hand(0, score=0.95)] * 2) == "right"


def test_a_hand_leaving_and_coming_back():
    """A hand leaves the frame for longer than max_missed and comes back elsewhere: a new track."""
    k = TrackStage().max_missed
    frames = [[hand(500 + 40 * f)] for f in range(4)] + [[] for _ in range(k + 2)] + [[hand(600 - 40 * f)]
                                                                                      for f in range(4)]
    tracks = track(frames)
    assert [t.frames for t in tracks] == [[0, 1, 2, 3], list(range(k + 6, k + 10))]


def test_a_spurious_detection_takes_no_frames_from_a_real_hand():
    """A one-frame false detection becomes its own short track, whether it is far away or
    right beside the real hand (then with other keypoints: the real hand's are closer)."""
    frames = [[hand(100 + 10 * f)] for f in range(8)]
    far = hand(500, 100, curl=1.0, score=0.6)
    near = hand(135, 250, "left", curl=1.0, score=0.6)
    frames[3] = [far, frames[3][0]]
    frames[5] = [near, frames[5][0]]
    tracks = track(frames)
    assert [t.frames for t in tracks] == [list(range(8)), [3], [5]]
    assert tracks[1].dets == [far] and tracks[2].dets == [near]


def test_mirrored_two_hand_layout():
    """np.hstack([f, f[:, ::-1]]): a right hand and, mirrored, a left hand, moving mirror-
    symmetrically (towards each other and apart); one half blanked every 7th frame."""
    frames, truth = [], {}
    for f in range(40):
        x = 200 + 80 * np.sin(f / 4)
        a, b = hand(x, 240 + 30 * np.cos(f / 5)), hand(W - x, 240 + 30 * np.cos(f / 5), "left")
        truth.update({id(a): "a", id(b): "b"})
        frames.append([a] if f % 7 == 6 else [a, b])
    tracks = track(frames)
    assert _owners(tracks, truth) == [["a"], ["b"]] and [t.side for t in tracks] == ["right", "left"]
    assert len(tracks[0].frames) == 40 and len(tracks[1].frames) == 40 - 40 // 7


def test_a_hand_that_comes_back_continues_its_track():
    """relink: a track that starts after another of its side ended joins it, unless another hand of
    that side was seen in between or it came back too late."""
    from handfit.detect.tracking import Track, relink

    def t(side, frames):
        return Track(side, list(frames), [hand(100.0 + f, side=side) for f in frames])

    left_out, back, other = t("left", range(0, 5)), t("left", range(25, 30)), t("right", range(0, 30))
    got = relink([left_out, other, back], 50)
    assert [(x.side, x.frames[0], len(x.frames)) for x in got] == [("left", 0, 10), ("right", 0, 30)]
    assert len(relink([t("left", range(5)), t("left", range(25, 30))], 10)) == 2              # too late
    busy = [t("left", range(0, 10)), t("left", range(5, 40)), t("left", range(25, 30))]   # a second left hand
    assert [len(x.frames) for x in relink(busy, 50)] == [10, 35, 5]                        # was seen meanwhile
    assert relink([t("left", range(5)), t("left", range(25, 30))], 0)[1].frames[0] == 25      # 0: never


def test_the_follower_looks_for_a_hand_whose_neighbour_is_within_its_gate(monkeypatch):
    """Two hands 0.7 hand sizes apart: the cascade finds both on the first frame; after that
    each is looked for where it is predicted. A hand's look is not skipped because the other
    hand's find lies within its gate: both tracks keep every frame (the crossing clip's
    every-other-frame gaps came from that)."""
    import handfit.detect.evidence as E
    from handfit.detect.tracking import Follower

    from stand_ins import StandIn

    def at(f):   # the two hands drift right together
        return [hand(300 + 4 * f, label="right", size=100), hand(370 + 4 * f, side="left", size=100)]

    frame = {"f": 0}

    class Cascade(StandIn):
        calls = 0

        def detect(self, rgb, mode=None):
            Cascade.calls += 1
            return at(frame["f"]) if frame["f"] == 0 else []

    monkeypatch.setattr(E, "look", _look_near(at, frame))
    monkeypatch.setattr(E, "gather", lambda fn, rgb, d, views, **kw: d)
    fol = Follower(Cascade(), views=4, redetect=100)
    for f in range(8):
        frame["f"] = f
        assert len(fol.step(np.zeros((H, W, 3), np.uint8))) == 2, f
    tracks = fol.finish()
    assert [t.frames for t in tracks] == [list(range(8))] * 2
    assert sorted(t.side for t in tracks) == ["left", "right"]
    assert Cascade.calls == 1 and fol.passes == {"cascade": 1, "look": 14}


def test_a_hand_that_comes_out_from_behind_another_is_found_beside_it(monkeypatch):
    """A hand hidden for a while (its track ended) comes out beside the hand that hid it,
    where the pass over the whole frame does not see it: while its track waits to be
    continued, the crop around the found hand is looked in, and the hand continues its track."""
    import handfit.detect.evidence as E
    from handfit.detect import passes
    from handfit.detect.tracking import Follower

    from stand_ins import StandIn

    frame = {"f": 0}

    def at(f):   # A stays; B is hidden in frames 3-9
        return [hand(300, label="right")] + ([hand(400, side="left")] if not 3 <= f <= 9 else [])

    class Hands(StandIn):
        def detect(self, rgb, mode=None):           # the whole frame: B not seen once it was hidden
            return at(frame["f"]) if frame["f"] < 3 else at(frame["f"])[:1]

        def landmarks(self, rgb, strict=False):     # a crop's view (here the frame itself) shows both
            return at(frame["f"])

    whole = lambda rgb, box, name, grow=1.6, tag="": passes.View(name, rgb, np.eye(3)[:2], False, "frame")  # noqa: E731
    monkeypatch.setattr(E, "look", _look_near(at, frame, 40))
    monkeypatch.setattr(E, "gather", lambda fn, rgb, d, views, **kw: d)
    monkeypatch.setattr(passes, "square_box_view", whole)
    fol = Follower(Hands(), views=4, redetect=100, relink=50)
    for f in range(14):
        frame["f"] = f
        fol.step(np.zeros((H, W, 3), np.uint8))
    tracks = fol.finish()
    assert sorted((t.frames for t in tracks), key=len) == [[0, 1, 2, 10, 11, 12, 13], list(range(14))]
    assert fol.passes["beside"] == 1
    fol.relink = 0                                 # without a track waiting, nothing is looked for beside
    assert fol._beside(np.zeros((H, W, 3), np.uint8), fol._waiting(14), at(14)[:1]) == []


def test_a_piece_of_a_hand_is_a_fragment_of_the_hand_around_it():
    from handfit.detect.tracking import fragment

    whole, piece = hand(300, size=100), hand(305, size=30)
    assert fragment(piece, whole)
    assert not fragment(whole, piece)                   # the whole is not a piece of its piece
    assert not fragment(hand(460, size=30), whole)      # a small hand beside it is a hand
    assert not fragment(hand(305, size=70), whole)      # a hand near its size, in front of it, too


def test_a_track_on_a_piece_of_a_hand_continues_on_the_whole_hand(monkeypatch):
    """On a blurred, small clip the landmark model can answer with the fingers alone, a few
    times smaller than the hand, and a track then follows that piece. When a later pass finds
    the whole hand around it, the track continues on the whole hand: no second track starts
    there (the hard clip's hand 0 had two, 85% of its frames on the first)."""
    import handfit.detect.evidence as E
    from handfit.detect.tracking import Follower, hand_size

    from stand_ins import StandIn

    frame = {"f": 0}

    def at(f):   # the piece in frames 0-4; from frame 5 on, the whole hand around it as well
        piece = hand(300, size=30)
        return [piece] if f < 5 else [piece, hand(300, size=100)]

    class Cascade(StandIn):
        def detect(self, rgb, mode=None):
            return at(frame["f"])

    monkeypatch.setattr(E, "look", _look_near(at, frame))
    monkeypatch.setattr(E, "gather", lambda fn, rgb, d, views, **kw: d)
    fol = Follower(Cascade(), views=4, redetect=5)
    for f in range(8):
        frame["f"] = f
        fol.step(np.zeros((H, W, 3), np.uint8))
    tracks = fol.finish()
    assert [t.frames for t in tracks] == [list(range(8))]
    whole = round(hand_size(hand(300, size=100).keypoints))
    assert [round(hand_size(d.keypoints)) for d in tracks[0].dets[5:]] == [whole] * 3


def test_a_hand_that_left_is_found_soon_after_it_comes_back(monkeypatch):
    """A hand leaves the frame (frames 3-12) and comes back at 13. While its track waits to be
    continued, the cascade runs every ``wait_redetect`` frames instead of every ``redetect``:
    the hand is found at 14 and continues its track. With the cascade every ``redetect`` (here
    100) frames it would not be found again in this clip."""
    import handfit.detect.evidence as E
    from handfit.detect.tracking import Follower

    from stand_ins import StandIn

    frame = {"f": 0}

    def at(f):   # A stays; B is away in frames 3-12
        return [hand(300, label="right")] + ([hand(450, side="left")] if not 3 <= f <= 12 else [])

    class Cascade(StandIn):
        def detect(self, rgb, mode=None):
            return at(frame["f"])

    monkeypatch.setattr(E, "look", _look_near(at, frame, 40))
    monkeypatch.setattr(E, "gather", lambda fn, rgb, d, views, **kw: d)

    def follow(wait_redetect):
        fol = Follower(Cascade(), views=4, redetect=100, relink=50, wait_redetect=wait_redetect)
        for f in range(20):
            frame["f"] = f
            fol.step(np.zeros((H, W, 3), np.uint8))
        return sorted((t.frames for t in fol.finish()), key=len)

    assert follow(2) == [[0, 1, 2] + list(range(14, 20)), list(range(20))]
    assert follow(None) == [[0, 1, 2], list(range(20))]     # None: every ``redetect`` frames
