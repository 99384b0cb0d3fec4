"""Hand detection with MediaPipe's Tasks ``HandLandmarker``, fully offline.

The ``.task`` bundle the Tasks API wants is built once from the two models
that the mediapipe 0.10.21 wheel ships (palm detection and hand landmarks),
zipped uncompressed into the cache folder (``$HANDFIT_CACHE`` or
``~/.cache/handfit``). Nothing is ever downloaded.

Coordinates
-----------
MediaPipe returns landmarks normalised by the image size, with ``x = 0`` at
the left *edge* of the image and ``x = 1`` at its right edge, so pixel centres
sit at ``(i + 0.5) / W``. :class:`Detection` gives them in OpenCV pixel
coordinates (centre of the top-left pixel at ``(0, 0)``):
``u = x * W - 0.5``, ``v = y * H - 0.5``. Landmark ``z`` (depth relative to
the wrist, smaller is closer, "roughly the scale of x") becomes
``z * W`` pixels.

Handedness
----------
The Tasks API labels the hand's anatomical side as seen in an ordinary
(non-mirrored) photo, and that is what :attr:`Detection.side` holds: a person
facing the camera has their right hand on the image's left. (The legacy
``mp.solutions.hands`` assumes mirrored selfie input and swaps the labels; it
is not used here.) Checked on the dev photos: ``hamer/test5.jpg`` and the
labelled ``panoptic/ex2_2.flv_000040`` hands.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import BackendError, UsageError

__all__ = ["Detection", "Detector", "task_file", "DEFAULT_MAX_SIDE", "HAND_CAP", "MODES"]

#: Detection modes: ``fast`` is MediaPipe's single full-image pass;
#: ``thorough`` adds the extra passes of :mod:`handfit.detect_passes`.
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

_PALM_MODEL = "modules/palm_detection/palm_detection_full.tflite"
_LANDMARK_MODEL = "modules/hand_landmark/hand_landmark_full.tflite"
_TASK_MEMBERS = {
    "hand_detector.tflite": _PALM_MODEL,
    "hand_landmarks_detector.tflite": _LANDMARK_MODEL,
}


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
        }


# ---------------------------------------------------------------- cache / task file


def _cache_dir() -> Path:
    """``handfit.cache.cache_dir()`` (``$HANDFIT_CACHE`` or ``~/.cache/handfit``)."""
    env = os.environ.get("HANDFIT_CACHE")
    fallback = Path(env).expanduser() if env else Path.home() / ".cache" / "handfit"
    try:
        from .cache import cache_dir
    except ImportError:
        return fallback
    try:
        return Path(cache_dir())
    except OSError:  # not creatable: task_file() falls back to a temp folder
        return fallback


def _mediapipe_root() -> tuple[Path, str]:
    try:
        import mediapipe
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise BackendError(f"mediapipe is not installed: {e}") from None
    return Path(mediapipe.__file__).resolve().parent, getattr(mediapipe, "__version__", "unknown")


def _task_ok(path: Path, sizes: dict[str, int]) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return all(
        n in infos and infos[n].file_size == s and infos[n].compress_type == zipfile.ZIP_STORED
        for n, s in sizes.items()
    )


def task_file(cache: str | os.PathLike | None = None) -> Path:
    """Path of the offline ``hand_landmarker`` ``.task`` bundle, built if needed.

    The bundle zips (stored, uncompressed) the wheel's
    ``palm_detection_full.tflite`` as ``hand_detector.tflite`` and
    ``hand_landmark_full.tflite`` as ``hand_landmarks_detector.tflite``. It is
    written atomically (temporary file + rename) into ``cache`` (default: the
    handfit cache folder; a temporary folder when that is not writable) and
    reused while it matches the installed models.

    Raises:
        BackendError: the installed mediapipe does not ship the models
            (mediapipe >= 1.0 dropped them; handfit pins 0.10.21).
    """
    root, version = _mediapipe_root()
    sources = {name: root / rel for name, rel in _TASK_MEMBERS.items()}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise BackendError(
            f"mediapipe {version} does not ship the hand models ({', '.join(missing)}); "
            "install mediapipe==0.10.21"
        )
    sizes = {name: p.stat().st_size for name, p in sources.items()}
    fname = f"hand_landmarker-mediapipe-{version}.task"
    dirs = [Path(cache)] if cache is not None else [_cache_dir()]
    if cache is None:
        dirs.append(Path(tempfile.gettempdir()) / f"handfit-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    last_err: Exception | None = None
    for d in dirs:
        path = d / fname
        if _task_ok(path, sizes):
            return path
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".hand_landmarker-", suffix=".tmp", dir=d)
            try:
                with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                    for name, src in sources.items():
                        z.write(src, name)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            last_err = e
            continue
        if _task_ok(path, sizes):
            return path
    raise BackendError(f"cannot write the MediaPipe .task file to {dirs[0]}: {last_err}")


# ---------------------------------------------------------------- stderr noise


# Quiet blocks may overlap across threads (detection ahead in a worker while
# the side check re-detects in the main thread). fd 2 is process-wide, so the
# redirection is too: the first block in saves and redirects it, the last
# block out restores it. Each block saving and restoring on its own would let
# an overlapping block "restore" another block's temporary file for good.
_quiet_lock = threading.Lock()
_quiet = {"depth": 0, "saved": None, "sink": None}


def _quiet_enter() -> bool:
    with _quiet_lock:
        if _quiet["depth"] == 0:
            try:
                sys.stderr.flush()
            except Exception:  # noqa: BLE001
                pass
            try:
                saved = os.dup(2)
            except OSError:  # no fd 2 (embedded interpreters): nothing to silence
                return False
            sink = tempfile.TemporaryFile()
            os.dup2(sink.fileno(), 2)
            _quiet.update(saved=saved, sink=sink)
        _quiet["depth"] += 1
        return True


def _quiet_exit() -> None:
    with _quiet_lock:
        _quiet["depth"] -= 1
        if _quiet["depth"] == 0:
            os.dup2(_quiet["saved"], 2)
            os.close(_quiet["saved"])
            _quiet["sink"].close()
            _quiet.update(saved=None, sink=None)


def _quiet_log() -> str:
    """What native code wrote to fd 2 so far in the current quiet period."""
    with _quiet_lock:
        sink = _quiet["sink"]
        if sink is None:
            return ""
        sink.seek(0)
        return sink.read().decode("utf-8", "replace").strip()


@contextlib.contextmanager
def _quiet_stderr(enabled: bool = True):
    """Silence native (C++) writes to file descriptor 2 inside the block.

    glog/absl and TF Lite print INFO/WARNING lines straight to fd 2 whatever
    ``GLOG_minloglevel`` says. They are captured to a temporary file; if the
    block raises, the captured text is attached to the exception as a note.
    Python's ``sys.stderr`` is flushed first so nothing of ours is lost.
    Blocks may nest and overlap across threads (see ``_quiet_enter``).
    """
    if not enabled or not _quiet_enter():
        yield
        return
    try:
        yield
    except BaseException as e:
        text = _quiet_log()
        if text and hasattr(e, "add_note"):
            e.add_note("mediapipe log:\n" + text[-4000:])
        raise
    finally:
        _quiet_exit()


# ---------------------------------------------------------------- detector


class Detector:
    """Offline MediaPipe hand landmarker; create once, call :meth:`detect` often.

    Args:
        max_hands: most hands returned per image (``None``: every hand found,
            up to :data:`HAND_CAP`).
        mode: ``"fast"``, one pass over the full image (MediaPipe alone), or
            ``"thorough"``, the full pass followed by the cascade of extra
            passes of :mod:`handfit.detect_passes` (tiles and upscaled crops,
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
        quiet: silence MediaPipe's native log lines on stderr.

    The underlying landmarker is not thread-safe; calls are serialised with a
    lock. Use as a context manager or call :meth:`close` to free it.

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
        self._conf = (float(min_detection_confidence), float(min_presence_confidence))
        self._strict_conf = float(strict_confidence)

        if self.quiet:
            # MediaPipe / TF Lite log through glog/absl on the C++ side; ask them to be
            # quiet before mediapipe is first imported (some lines ignore these; see
            # ``_quiet_stderr``). Done here, when a quiet detector is made, not at import.
            os.environ.setdefault("GLOG_minloglevel", "2")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _quiet_stderr(self.quiet):
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
            obj = getattr(self, attr, None)
            setattr(self, attr, None)
            if obj is not None:
                with self._lock, _quiet_stderr(self.quiet):
                    obj.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- one landmarker call
    def _landmark(self, rgb: np.ndarray, strict: bool = False) -> list[Detection]:
        """Run one landmarker on ``rgb`` as is; detections in ``rgb``'s pixels, unsorted."""
        H, W = rgb.shape[:2]
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with self._lock:
            if self._landmarker is None:
                raise BackendError("the detector is closed")
            if strict and self._strict is None:
                with _quiet_stderr(self.quiet):
                    self._strict = self._create(4, self._strict_conf, self._strict_conf)
            lm = self._strict if strict else self._landmarker
            with _quiet_stderr(self.quiet):
                result = lm.detect(image)

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
                box_xyxy=_box(kp, self.box_margin, W, H),
                keypoints=kp,
                keypoints_z=norm[:, 2] * W,
                world=np.array([[p.x, p.y, p.z] for p in world], dtype=np.float64),
                image_size=(W, H),
            ))
        return dets

    def _full_pass(self, rgb: np.ndarray) -> list[Detection]:
        H, W = rgb.shape[:2]
        small = _downscale(rgb, self.max_side)
        h, w = small.shape[:2]
        dets = self._landmark(small)
        if (w, h) == (W, H):
            return dets
        # Normalised landmark coordinates refer to the whole image extent, which
        # resizing preserves exactly.
        out = []
        for d in dets:
            norm = (d.keypoints + 0.5) / np.array([w, h])
            kp = norm * np.array([W, H]) - 0.5
            out.append(Detection(side=d.side, score=d.score, box_xyxy=_box(kp, self.box_margin, W, H),
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
                :data:`handfit.detect_passes.PASSES`) instead of the mode's;
                for benchmarks.

        Returns:
            At most ``max_hands`` :class:`Detection` objects sorted by score,
            highest first; ``[]`` when there is no hand. Each records the pass
            that found it in :attr:`Detection.pass_name`.
        """
        from . import detect_passes as dp

        rgb = _as_rgb8(rgb)
        mode = mode or self.mode
        if mode not in MODES:
            raise UsageError(f"detection mode must be one of {', '.join(MODES)}, not {mode!r}")
        if passes is None:
            passes = dp.FAST_PASSES if mode == "fast" else dp.PASSES
        dets = self._full_pass(rgb) if "full" in passes else []
        extra = [p for p in passes if p != "full"]
        if extra:
            dets = dets + dp.run_extra_passes(self, rgb, extra)
            dets = dp.merge(dets)
        else:
            dets = _dedupe(dets)
        dets.sort(key=lambda d: -d.score)
        return dets[: self.max_hands]

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
        from . import detect_passes as dp

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
            d = dp.detect_in_box(self, rgb, (x0, y0, x1, y1), "box", strict=False)
            if d is None:
                continue
            if side is not None:
                d = replace(d, side=side, side_source="user")
            out.append(d)
        return out

def _as_rgb8(rgb) -> np.ndarray:
    if isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            from .errors import ImageError

            raise ImageError(f"zero-size image ({rgb.shape[1]}x{rgb.shape[0]})")
        return np.ascontiguousarray(rgb)
    from .io.image import load_image

    return load_image(rgb).rgb


def _downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    H, W = rgb.shape[:2]
    long_side = max(H, W)
    if long_side <= max_side:
        return rgb
    import cv2

    r = max_side / long_side
    size = (max(1, round(W * r)), max(1, round(H * r)))
    # Normalised landmark coordinates refer to the whole image extent, which
    # resizing preserves exactly, so the rounding of ``size`` does not matter.
    return np.ascontiguousarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))


def _box(kp: np.ndarray, margin: float, W: int, H: int) -> np.ndarray:
    lo, hi = kp.min(axis=0), kp.max(axis=0)
    m = margin * float(max(hi - lo))
    box = np.array([lo[0] - m, lo[1] - m, hi[0] + m, hi[1] + m], dtype=np.float64)
    box[[0, 2]] = np.clip(box[[0, 2]], -0.5, W - 0.5)
    box[[1, 3]] = np.clip(box[[1, 3]], -0.5, H - 0.5)
    return box


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
