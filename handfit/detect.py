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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BackendError, UsageError

__all__ = ["Detection", "Detector", "task_file", "DEFAULT_MAX_SIDE"]

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
    """

    side: str
    score: float
    box_xyxy: np.ndarray
    keypoints: np.ndarray
    keypoints_z: np.ndarray
    world: np.ndarray
    image_size: tuple[int, int] = (0, 0)

    def __repr__(self) -> str:
        b = ", ".join(f"{v:.1f}" for v in self.box_xyxy)
        return f"Detection(side={self.side!r}, score={self.score:.3f}, box_xyxy=[{b}])"


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


@contextlib.contextmanager
def _quiet_stderr(enabled: bool = True):
    """Silence native (C++) writes to file descriptor 2 inside the block.

    glog/absl and TF Lite print INFO/WARNING lines straight to fd 2 whatever
    ``GLOG_minloglevel`` says. They are captured to a temporary file; if the
    block raises, the captured text is attached to the exception as a note.
    Python's ``sys.stderr`` is flushed first so nothing of ours is lost.
    """
    if not enabled:
        yield
        return
    try:
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException as e:
            os.dup2(saved, 2)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text and hasattr(e, "add_note"):
                e.add_note("mediapipe log:\n" + text[-4000:])
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# ---------------------------------------------------------------- detector


class Detector:
    """Offline MediaPipe hand landmarker; create once, call :meth:`detect` often.

    Args:
        max_hands: most hands returned per image.
        min_detection_confidence: palm-detector score threshold.
        min_presence_confidence: landmark-model hand-presence threshold.
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
        max_hands: int = 2,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        max_side: int = DEFAULT_MAX_SIDE,
        box_margin: float = 0.1,
        task_path: str | os.PathLike | None = None,
        quiet: bool = True,
    ):
        if int(max_hands) < 1:
            raise UsageError(f"max_hands must be at least 1, got {max_hands}")
        for name, v in (("min_detection_confidence", min_detection_confidence),
                        ("min_presence_confidence", min_presence_confidence)):
            if not (0.0 <= float(v) <= 1.0):
                raise UsageError(f"{name} must be in [0, 1], got {v}")
        if int(max_side) < 32:
            raise UsageError(f"max_side must be at least 32 pixels, got {max_side}")
        self.max_hands = int(max_hands)
        self.max_side = int(max_side)
        self.box_margin = float(box_margin)
        self.quiet = bool(quiet)
        self._lock = threading.Lock()
        self.task_path = Path(task_path) if task_path is not None else task_file()
        if not self.task_path.is_file():
            raise BackendError(f"{self.task_path}: no such .task file")

        if self.quiet:
            # MediaPipe / TF Lite log through glog/absl on the C++ side; ask them to be
            # quiet before mediapipe is first imported (some lines ignore these; see
            # ``_quiet_stderr``). Done here, when a quiet detector is made, not at import.
            os.environ.setdefault("GLOG_minloglevel", "2")
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _quiet_stderr(self.quiet):
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision

            self._mp = mp
            options = vision.HandLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(self.task_path)),
                running_mode=vision.RunningMode.IMAGE,
                num_hands=self.max_hands,
                min_hand_detection_confidence=float(min_detection_confidence),
                min_hand_presence_confidence=float(min_presence_confidence),
            )
            try:
                self._landmarker = vision.HandLandmarker.create_from_options(options)
            except Exception as e:  # noqa: BLE001
                raise BackendError(f"cannot create the MediaPipe hand landmarker: {e}") from e

    # -- lifetime
    def close(self) -> None:
        """Release the landmarker; later :meth:`detect` calls raise."""
        lm, self._landmarker = getattr(self, "_landmarker", None), None
        if lm is not None:
            with self._lock, _quiet_stderr(self.quiet):
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

    # -- detection
    def detect(self, rgb) -> list[Detection]:
        """Detect hands in an RGB image.

        Args:
            rgb: ``(H, W, 3)`` ``uint8`` RGB array (other arrays, PIL images,
                paths and :class:`handfit.io.Photo` objects go through
                :func:`handfit.io.load_image` first).

        Returns:
            At most ``max_hands`` :class:`Detection` objects sorted by score,
            highest first; ``[]`` when there is no hand.
        """
        rgb = _as_rgb8(rgb)
        H, W = rgb.shape[:2]
        small = _downscale(rgb, self.max_side)
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=small)
        with self._lock:
            if self._landmarker is None:
                raise BackendError("the detector is closed")
            with _quiet_stderr(self.quiet):
                result = self._landmarker.detect(image)

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
        dets = _dedupe(dets)
        dets.sort(key=lambda d: -d.score)
        return dets[: self.max_hands]


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
