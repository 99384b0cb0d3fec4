""":class:`Detector`: MediaPipe's Tasks ``HandLandmarker``, fully offline; :class:`Detection`.

The landmarker runs on the offline ``.task`` bundle of :mod:`.bundle`.
:meth:`Detector.landmarks` is one landmarker run on one image (a view);
:meth:`Detector.detect` is the full pass plus, in ``thorough`` mode, the
extra passes of :mod:`.passes`, which get :meth:`Detector.landmarks` and
:meth:`Detector.pose_landmarks` as callables.

Coordinates and handedness: see :mod:`handfit.detect`.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import BackendError, UsageError
from ..parallel import each, workers
from . import passes as dp
from .bundle import task_file
from .passes import downscale, hand_box
from .quiet import quiet_stderr

__all__ = ["Detection", "Detector", "DEFAULT_MAX_SIDE", "HAND_CAP", "MODES", "STRICT_CONFIDENCE",
           "POSE_MAX_SIDE"]

#: Detection modes: ``fast`` is MediaPipe's single full-image pass;
#: ``thorough`` adds the extra passes of :mod:`handfit.detect.passes`.
MODES = ("fast", "thorough")

#: With no ``max_hands``, at most this many hands are returned (and fitted):
#: it bounds the time a crowded photo can take.
HAND_CAP = 12

#: Palm-detection and presence thresholds of the extra passes (the full pass
#: uses MediaPipe's 0.5).
STRICT_CONFIDENCE = 0.7

#: Images whose longer side exceeds this many pixels are downscaled for
#: detection; landmarks are mapped back to full resolution.
DEFAULT_MAX_SIDE = 1280

#: The pose model (the pose-guided pass) sees the photo downscaled to this longer side.
POSE_MAX_SIDE = 640


@dataclass
class Detection:
    """One detected hand, in full-image pixel coordinates.

    Attributes:
        side: ``"left"`` or ``"right"``, the person's anatomical side.
        score: MediaPipe's handedness confidence in ``[0, 1]`` (the Tasks API
            reports no separate per-hand detection score; hands below the
            detection/presence thresholds are not returned at all).
        box_xyxy: ``(4,)`` float64 ``(x1, y1, x2, y2)``: the landmarks'
            bounding box grown by a margin on every side, clipped to the image.
        keypoints: ``(21, 2)`` float64 OpenCV pixel coordinates of the 21
            MediaPipe landmarks (MediaPipe order).
        keypoints_z: ``(21,)`` float64 relative depth in pixels, MediaPipe's
            ``z`` scaled like ``x`` (``z * W``); the wrist is about 0 and
            negative is closer to the camera.
        world: ``(21, 3)`` float64 MediaPipe world landmarks in metres
            (origin near the hand's centre, not camera coordinates).
        image_size: ``(W, H)`` of the full image the pixels refer to.
        pass_name: which pass of the detection cascade found it (``"full"``,
            ``"tiles"``, ``"rotate"``, ``"mirror"``, ``"contrast"``, ``"pose"``
            or ``"box"``); ``pass`` in JSON.
        side_source: ``"detector"`` (MediaPipe's handedness), ``"user"``
            (the side given with a box) or ``"fit"`` (decided by fitting both hand models,
            :mod:`handfit.fitting.side`).
        side_losses: ``{"left": loss, "right": loss}`` when both were fitted.
        detector_side: MediaPipe's side when ``side_source == "fit"``.
        keypoint_spread: ``(21,)`` float64 pixels or ``None``: after multi-view
            refinement (:func:`handfit.detect.multiview.refine`), each fused
            keypoint's median distance from the views' keypoints (a per-keypoint
            confidence: small is sure).
        views: how many views were fused into :attr:`keypoints` (0: none, the
            single landmarker run).
        candidates: after the evidence step (:func:`handfit.detect.evidence.gather`),
            ``{side: Detection}``: the views that called the hand each side, fused
            (this detection's own side is itself); ``None`` before it.
        votes: ``{side: summed score}`` of those views, or ``None``.
    """

    side: str
    score: float
    box_xyxy: np.ndarray
    keypoints: np.ndarray
    keypoints_z: np.ndarray
    world: np.ndarray
    image_size: tuple[int, int] = (0, 0)
    pass_name: str = "full"
    side_source: str = "detector"
    side_losses: dict | None = None
    detector_side: str | None = None
    keypoint_spread: np.ndarray | None = None
    views: int = 0
    candidates: dict | None = None
    votes: dict | None = None

    def __repr__(self) -> str:
        b = ", ".join(f"{v:.1f}" for v in self.box_xyxy)
        return (f"Detection(side={self.side!r}, score={self.score:.3f}, box_xyxy=[{b}], "
                f"pass={self.pass_name!r})")

    def to_dict(self) -> dict:
        """The ``handfit detect --json`` form: lists of floats, ``pass`` for :attr:`pass_name`."""
        return {
            "side": self.side, "score": float(self.score),
            "bbox_xyxy": [float(v) for v in self.box_xyxy],
            "keypoints_2d": np.asarray(self.keypoints, float).tolist(),
            "keypoints_3d_world": np.asarray(self.world, float).tolist(),
            "pass": self.pass_name,
        } | ({"keypoint_spread": np.asarray(self.keypoint_spread, float).tolist(), "views": int(self.views)}
             if self.keypoint_spread is not None else {})


# ---------------------------------------------------------------- detector


class Detector:
    """Offline MediaPipe hand landmarker; create once, call :meth:`detect` often.

    Args:
        max_hands: most hands returned per image (``None``: every hand found,
            up to :data:`HAND_CAP`).
        mode: ``"fast"``, one pass over the full image (MediaPipe alone), or
            ``"thorough"``, the full pass followed by the cascade of extra
            passes of :mod:`handfit.detect.passes` (tiles and upscaled crops,
            rotations, a mirror, a contrast-normalised copy, crops at the
            wrists the pose model finds), merged so that each hand is reported
            once.
        min_detection_confidence: palm-detector score threshold (full pass).
        min_presence_confidence: landmark-model hand-presence threshold (full pass).
        strict_confidence: both thresholds for the extra passes, which see
            many more image regions and so need a stricter acceptance.
        max_side: images with a longer side above this are downscaled (area
            interpolation) before detection; results are in full resolution.
        box_margin: :attr:`Detection.box_xyxy` grows the landmarks' bounding
            box by this fraction of its longer side on every side.
        task_path: an existing ``.task`` bundle to use instead of building one.
        views: after detection, refine each hand with this many views of its
            crop (:func:`handfit.detect.multiview.refine`; 0: off).
        quiet: silence MediaPipe's native log lines on stderr.

    The underlying landmarkers and the pose model are not thread-safe; calls
    are serialised with a lock, under which the strict landmarker and the pose
    model are also created, lazily, on first use. Use as a context manager or
    call :meth:`close` to free them.

    With ``quiet`` (the default) file descriptor 2 is redirected for the
    duration of each MediaPipe call, process-wide: native stderr output of
    other threads during those milliseconds is dropped too.
    """

    def __init__(
        self,
        max_hands: int | None = None,
        mode: str = "fast",
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        strict_confidence: float = STRICT_CONFIDENCE,
        max_side: int = DEFAULT_MAX_SIDE,
        box_margin: float = 0.1,
        task_path: str | os.PathLike | None = None,
        quiet: bool = True,
        views: int = 0,
    ):
        if max_hands is None:
            max_hands = HAND_CAP
        if int(max_hands) < 1:
            raise UsageError(f"max_hands must be at least 1, got {max_hands}")
        if mode not in MODES:
            raise UsageError(f"detection mode must be one of {', '.join(MODES)}, not {mode!r}")
        for name, v in (("min_detection_confidence", min_detection_confidence),
                        ("min_presence_confidence", min_presence_confidence),
                        ("strict_confidence", strict_confidence)):
            if not (0.0 <= float(v) <= 1.0):
                raise UsageError(f"{name} must be in [0, 1], got {v}")
        if int(max_side) < 32:
            raise UsageError(f"max_side must be at least 32 pixels, got {max_side}")
        from .multiview import VIEW_SET

        if not 0 <= int(views) <= len(VIEW_SET):
            raise UsageError(f"views must be in 0..{len(VIEW_SET)}, got {views}")
        self.views = int(views)
        self.max_hands = int(max_hands)
        self.mode = mode
        self.max_side = int(max_side)
        self.box_margin = float(box_margin)
        self.quiet = bool(quiet)
        self._lock = threading.Lock()
        self.task_path = Path(task_path) if task_path is not None else task_file()
        if not self.task_path.is_file():
            raise BackendError(f"{self.task_path}: no such .task file")
        self._pose = None
        self._strict = None
        self._twins = []   # [(lock, landmarker)]: more full-pass landmarkers for landmarks_each
        self._conf = (float(min_detection_confidence), float(min_presence_confidence))
        self._strict_conf = float(strict_confidence)

        if self.quiet:
            # MediaPipe / TF Lite log through glog/absl on the C++ side; ask them to be
            # quiet before mediapipe is first imported (some lines ignore these; see
            # ``quiet_stderr``). Done here, when a quiet detector is made, not at import.
            os.environ.setdefault("GLOG_minloglevel", "2")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet_stderr(self.quiet):
            import mediapipe as mp

            self._mp = mp
            self._landmarker = self._create(max(self.max_hands, 2), *self._conf)

    def _create(self, num_hands: int, det_conf: float, presence_conf: float):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.HandLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.task_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_hands=int(num_hands),
            min_hand_detection_confidence=det_conf,
            min_hand_presence_confidence=presence_conf,
        )
        try:
            return vision.HandLandmarker.create_from_options(options)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"cannot create the MediaPipe hand landmarker: {e}") from e

    # -- lifetime
    def close(self) -> None:
        """Release the landmarkers; later :meth:`detect` calls raise."""
        for attr in ("_landmarker", "_strict", "_pose"):
            with self._lock:
                obj = getattr(self, attr, None)
                setattr(self, attr, None)
                if obj is not None:
                    with quiet_stderr(self.quiet):
                        obj.close()
        with self._lock:
            twins, self._twins = getattr(self, "_twins", []), []
        for lock, lm in twins:
            with lock, quiet_stderr(self.quiet):
                lm.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- one landmarker call, one pose call
    def landmarks(self, rgb, strict: bool = False) -> list[Detection]:
        """Run the landmarker once on ``rgb`` as is (no downscaling, no extra passes).

        This is the per-view call the passes of :mod:`handfit.detect.passes`
        take (:data:`~handfit.detect.passes.LandmarkFn`).

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB (or anything :meth:`detect` accepts).
            strict: use the extra passes' landmarker (both thresholds
                ``strict_confidence``, up to 4 hands) instead of the full pass's.

        Returns:
            :class:`Detection` objects in ``rgb``'s pixels (``image_size`` is
            its ``(W, H)``), unsorted, not deduplicated, ``pass_name == "full"``.
        """
        def pick():
            if strict and self._strict is None:
                with quiet_stderr(self.quiet):
                    self._strict = self._create(4, self._strict_conf, self._strict_conf)
            return self._strict if strict else self._landmarker

        return self._run(self._lock, pick, _as_rgb8(rgb))

    def _run(self, lock, pick, rgb: np.ndarray) -> list:
        """One landmarker call on uint8 ``rgb`` under ``lock``, the landmarker ``pick()``'s
        (called under the lock). -> its :class:`Detection` objects"""
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with lock:
            if self._landmarker is None:
                raise BackendError("the detector is closed")
            lm = pick()
            with quiet_stderr(self.quiet):
                result = lm.detect(image)
        return self._detections(result, *rgb.shape[:2])

    def landmarks_each(self, images: list) -> list:
        """:meth:`landmarks` on each image (the full pass's landmarker), the calls spread over
        :func:`handfit.parallel.workers` landmarkers in threads: each call is independent
        (IMAGE mode), so the detections are those of one call after another.

        -> per image its list of :class:`Detection`."""
        images = [_as_rgb8(im) for im in images]
        n = min(workers(), len(images))
        if n < 2:
            return [self.landmarks(im) for im in images]
        with self._lock:
            if self._landmarker is None:
                raise BackendError("the detector is closed")
            while len(self._twins) < n - 1:   # the full pass's landmarker, once more per extra worker
                with quiet_stderr(self.quiet):
                    self._twins.append((threading.Lock(), self._create(max(self.max_hands, 2), *self._conf)))
            pool = [(self._lock, self._landmarker)] + self._twins[: n - 1]

        def run(k):
            lock, lm = pool[k]
            return [self._run(lock, lambda: lm, im) for im in images[k::n]]

        parts = each(run, range(n))
        return [parts[i % n][i // n] for i in range(len(images))]

    def _detections(self, result, H: int, W: int) -> list:
        """A landmarker result on an (H, W) image as :class:`Detection` objects."""
        dets = []
        for lms, world, handed in zip(result.hand_landmarks, result.hand_world_landmarks, result.handedness):
            norm = np.array([[p.x, p.y, p.z] for p in lms], dtype=np.float64)  # (21,3)
            kp = np.stack([norm[:, 0] * W - 0.5, norm[:, 1] * H - 0.5], axis=1)
            cat = max(handed, key=lambda c: c.score)
            side = (cat.category_name or cat.display_name or "").strip().lower()
            if side not in ("left", "right"):
                continue
            dets.append(Detection(
                side=side,
                score=float(cat.score),
                box_xyxy=hand_box(kp, self.box_margin, W, H),
                keypoints=kp,
                keypoints_z=norm[:, 2] * W,
                world=np.array([[p.x, p.y, p.z] for p in world], dtype=np.float64),
                image_size=(W, H),
            ))
        return dets

    def pose_landmarks(self, rgb, max_side: int = POSE_MAX_SIDE) -> np.ndarray | None:
        """MediaPipe Pose on ``rgb`` (downscaled to ``max_side`` for the model).

        The pose-guided pass's call (:data:`~handfit.detect.passes.PoseFn`).
        The pose model (the legacy ``solutions.pose`` graph with the full
        landmark model the mediapipe 0.10.21 wheel ships, model_complexity=1:
        nothing is downloaded) is created on the first call, under the
        detector's lock, so concurrent first calls build it once.

        Returns:
            ``(33, 3)`` float64 ``(u, v, visibility)`` per pose landmark, in
            ``rgb``'s pixels; ``None`` when no person is found.
        """
        rgb = _as_rgb8(rgb)
        H, W = rgb.shape[:2]
        small = downscale(rgb, max_side)
        with self._lock:
            if self._landmarker is None:
                raise BackendError("the detector is closed")
            pose = self._pose_model_locked()
            with quiet_stderr(self.quiet):
                res = pose.process(small)
        if res.pose_landmarks is None:
            return None
        return np.array([[p.x * W - 0.5, p.y * H - 0.5, p.visibility] for p in res.pose_landmarks.landmark],
                        dtype=np.float64)

    def _pose_model_locked(self):
        """The pose model, created on first use; the caller holds ``self._lock``."""
        if self._pose is None:
            self._pose = _make_pose(self.quiet)
            # The legacy graph must be closed while the interpreter still runs: left
            # to the garbage collector at shutdown, its WaitUntilDone deadlocks.
            atexit.register(_close_pose, weakref.ref(self))
        return self._pose

    def _full_pass(self, rgb: np.ndarray) -> list[Detection]:
        H, W = rgb.shape[:2]
        small = downscale(rgb, self.max_side)
        h, w = small.shape[:2]
        dets = self.landmarks(small)
        if (w, h) == (W, H):
            return dets
        # Normalised landmark coordinates refer to the whole image extent, which
        # resizing preserves exactly.
        out = []
        for d in dets:
            norm = (d.keypoints + 0.5) / np.array([w, h])
            kp = norm * np.array([W, H]) - 0.5
            out.append(Detection(side=d.side, score=d.score, box_xyxy=hand_box(kp, self.box_margin, W, H),
                                 keypoints=kp, keypoints_z=d.keypoints_z * (W / w), world=d.world,
                                 image_size=(W, H)))
        return out

    # -- detection
    def detect(self, rgb, mode: str | None = None, passes=None) -> list[Detection]:
        """Detect hands in an RGB image.

        Args:
            rgb: ``(H, W, 3)`` ``uint8`` RGB array (other arrays, PIL images,
                paths and :class:`handfit.io.Photo` objects go through
                :func:`handfit.io.load_image` first).
            mode: ``"fast"`` or ``"thorough"``; default: the detector's mode.
            passes: run exactly these passes (names of
                :data:`handfit.detect.passes.PASSES`) instead of the mode's;
                for benchmarks.

        Returns:
            At most ``max_hands`` :class:`Detection` objects sorted by score,
            highest first; ``[]`` when there is no hand. Each records the pass
            that found it in :attr:`Detection.pass_name`.
        """
        rgb = _as_rgb8(rgb)
        mode = mode or self.mode
        if mode not in MODES:
            raise UsageError(f"detection mode must be one of {', '.join(MODES)}, not {mode!r}")
        if passes is None:
            passes = dp.FAST_PASSES if mode == "fast" else dp.PASSES
        dets = self._full_pass(rgb) if "full" in passes else []
        extra = [p for p in passes if p != "full"]
        if extra:
            dets = dets + dp.run_extra_passes(self.landmarks, rgb, extra, self.box_margin, self.pose_landmarks)
            dets = dp.merge(dets)
        else:
            dets = _dedupe(dets)
        dets.sort(key=lambda d: -d.score)
        dets = dets[: self.max_hands]
        if self.views:
            dets = self.evidence(rgb, dets)
        return dets

    def evidence(self, rgb, dets: list, views: int | None = None) -> list:
        """The evidence step for an image's detections: each hand's crop seen in ``views``
        (default: the detector's ``views``) views, once, for its side's candidates and its
        fused evidence (:func:`handfit.detect.evidence.gather` with :meth:`landmarks`)."""
        from .evidence import gather_all

        views = self.views if views is None else int(views)
        return gather_all(self.landmarks, _as_rgb8(rgb), list(dets), views, box_margin=self.box_margin)

    def refine(self, rgb, det: Detection, views: int | None = None) -> Detection:
        """One detection through :meth:`evidence`."""
        return self.evidence(rgb, [det], views)[0]

    def detect_in_boxes(self, rgb, boxes) -> list[Detection]:
        """Run the landmarker inside given boxes (your own detector's or annotations).

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB (or anything :meth:`detect` accepts).
            boxes: sequence of ``(x0, y0, x1, y1)`` or ``(x0, y0, x1, y1, side)``
                in full-image pixels; ``side`` (``"left"``/``"right"``) overrides
                MediaPipe's handedness.

        Returns:
            One :class:`Detection` per box where a hand was found (``pass_name
            == "box"``), in the order of ``boxes``; boxes without a hand are
            skipped. Each box is cropped square (1.6 times its longer side),
            and the landmarker runs on the crop and, if it finds nothing, on
            the crop turned by 90, 270 and 180 degrees. The hand nearest the
            box centre is kept.
        """
        rgb = _as_rgb8(rgb)
        out = []
        for box in boxes:
            box = list(box)
            side = None
            if len(box) == 5:
                side = str(box[4]).strip().lower()
                if side not in ("left", "right"):
                    raise UsageError(f"box side must be left or right, not {box[4]!r}")
            if len(box) not in (4, 5):
                raise UsageError(f"a box is x0,y0,x1,y1[,side], got {box!r}")
            x0, y0, x1, y1 = (float(v) for v in box[:4])
            if not (x1 > x0 and y1 > y0):
                raise UsageError(f"box {box!r}: need x1 > x0 and y1 > y0")
            d = dp.detect_in_box(self.landmarks, rgb, (x0, y0, x1, y1), "box", strict=False,
                                 box_margin=self.box_margin)
            if d is None:
                continue
            if side is not None:
                d = replace(d, side=side, side_source="user")
            out.append(d)
        return out


def _make_pose(quiet: bool):
    """A new MediaPipe Pose model (static images, full landmark model, no segmentation)."""
    with quiet_stderr(quiet):
        from mediapipe.python.solutions import pose as mp_pose

        return mp_pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                            min_detection_confidence=0.5)


def _close_pose(ref) -> None:
    """At exit: close a detector's pose model (best effort)."""
    det = ref()
    pose = getattr(det, "_pose", None) if det is not None else None
    if pose is not None:
        det._pose = None
        try:
            pose.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _as_rgb8(rgb) -> np.ndarray:
    if isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            from ..errors import ImageError

            raise ImageError(f"zero-size image ({rgb.shape[1]}x{rgb.shape[0]})")
        return np.ascontiguousarray(rgb)
    from ..io.image import load_image

    return load_image(rgb).rgb


def _dedupe(dets: list[Detection]) -> list[Detection]:
    """Drop a detection whose landmarks nearly coincide with a better one's.

    MediaPipe occasionally returns the same hand twice (once per side label).
    Two hands count as one when their mean landmark distance is under 10% of
    the larger landmark-box size; the higher score wins.
    """
    keep: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        size = float(np.ptp(d.keypoints, axis=0).max())
        dup = False
        for k in keep:
            ref = max(size, float(np.ptp(k.keypoints, axis=0).max()), 1.0)
            if np.linalg.norm(d.keypoints - k.keypoints, axis=1).mean() < 0.1 * ref:
                dup = True
                break
        if not dup:
            keep.append(d)
    return keep
