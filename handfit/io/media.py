"""Media files: which extensions are photos and videos, and video decoding.

The one list of photo and video extensions (:data:`PHOTO_EXTS`,
:data:`VIDEO_EXTS`, :func:`media_kind`) and the one video frame reader
(:func:`read_frames`, :func:`video_info`, with PyAV) of handfit: batches
(:mod:`handfit.batch`) and the training data (:mod:`handfit.train.data`)
both use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, UsageError

PHOTO_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTS = frozenset({".mp4", ".mov", ".avi", ".webm", ".mkv", ".m4v"})


def media_kind(path) -> str | None:
    """"photo", "video" or None, from the file name's extension (any case)."""
    ext = Path(path).suffix.lower()
    return "photo" if ext in PHOTO_EXTS else "video" if ext in VIDEO_EXTS else None


@dataclass
class VideoInfo:
    fps: float          # frames per second of the source
    width: int
    height: int
    frames: int         # frames in the container's header (0 when unknown)


def _av():
    try:
        import av
    except ImportError:
        raise UsageError("videos need PyAV: pip install 'handfit[video]'") from None
    return av


def video_info(path) -> VideoInfo:
    av = _av()

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            rate = s.average_rate or s.guessed_rate or 25
            return VideoInfo(float(rate), int(s.codec_context.width), int(s.codec_context.height), int(s.frames or 0))
    except Exception as e:  # noqa: BLE001 - any PyAV failure means an unreadable video
        raise ImageError(f"{path}: cannot read the video: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


def read_frames(path, every: int = 1, start: int = 0, end: int | None = None, pixels: bool = True):
    """Yield (frame index, seconds, (H,W,3) uint8 RGB) of frames start, start+every, ... < end.

    Frame indices count decoded frames from 0, so they match the source's
    numbering whatever ``every`` is; seconds come from the stream's timestamps.
    ``pixels=False`` yields None for the image (lists the frames without
    converting them). Raises ImageError when the video cannot be opened or
    decoded; a video whose tail cannot be decoded ends at its last good frame.
    """
    av = _av()
    if every < 1 or start < 0 or (end is not None and end <= start):
        raise UsageError("--every must be >= 1, --start >= 0 and --end > --start")
    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{path}: cannot open the video: {str(e).splitlines()[0] if str(e) else e!r}") from None
    with container:
        try:
            stream = container.streams.video[0]
        except IndexError:
            raise ImageError(f"{path}: no video stream") from None
        stream.thread_type = "AUTO"
        i = -1
        try:
            for frame in container.decode(stream):
                i += 1
                if end is not None and i >= end:
                    break
                if i < start or (i - start) % every:
                    continue
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 25)
                yield i, t, frame.to_ndarray(format="rgb24") if pixels else None
        except (av.error.FFmpegError, ValueError) as e:
            if i < 0:
                raise ImageError(f"{path}: cannot decode the video: {e}") from None
            # A truncated tail: keep the frames decoded so far.
