"""``handfit detect IMAGE``: detection only, for users who want landmarks fast.

Prints one line per hand (or the JSON document with ``--json``) and, with
``-o``, writes ``OUT/<stem>/detections.json`` and an overlay of the
landmarks. Exit codes are those of ``fit``: 0 a hand found, 3 none, 4
unreadable input, 2 usage, 5 backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..io.jsonfile import dumps
from ..keypoints import SKELETON  # MediaPipe's 21-landmark skeleton, for the overlay
from .common import fail


def detection_document(photo, dets) -> dict:
    """The ``--json`` schema: {"image": {path, width, height}, "hands": [Detection.to_dict()]}."""
    return {"image": {"path": str(photo.path) if photo.path else None, "width": photo.width,
                      "height": photo.height},
            "hands": [d.to_dict() for d in dets]}


def draw_detections(rgb, dets):
    """(H,W,3) uint8 copy of ``rgb`` with each hand's box, skeleton, side and pass drawn."""
    import cv2
    import numpy as np

    img = np.ascontiguousarray(rgb.copy())
    t = max(1, round(max(img.shape[:2]) / 400))
    for d in dets:
        colour = (255, 80, 60) if d.side == "right" else (60, 140, 255)
        x0, y0, x1, y1 = (int(round(v)) for v in d.box_xyxy)
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, t)
        kp = np.round(d.keypoints).astype(int)
        for a, b in SKELETON:
            cv2.line(img, tuple(kp[a]), tuple(kp[b]), colour, t, cv2.LINE_AA)
        for p in kp:
            cv2.circle(img, tuple(p), t + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.putText(img, f"{d.side} {d.score:.2f} {d.pass_name}", (x0, max(12, y0 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t, colour, t, cv2.LINE_AA)
    return img


@click.command()
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the detections as JSON on stdout.")
@click.option("-o", "--out", "outdir", default=None, type=click.Path(file_okay=False),
              help="Also write OUT/<image stem>/detections.json and overlay.png.")
@click.option("--detect", "detect_mode", default="thorough", show_default=True,
              type=click.Choice(["fast", "thorough"]),
              help="fast: one MediaPipe pass; thorough: the whole detection cascade.")
@click.option("--max-hands", default=None, type=click.IntRange(min=1),
              help="At most this many hands (default: all found, at most handfit.detect.HAND_CAP).")
def detect(image, as_json, outdir, detect_mode, max_hands):
    """Detect the hands in IMAGE: side, score, box, 21 keypoints (px) and world landmarks (m)."""
    from ..errors import HandfitError

    try:
        from ..detect import Detector
        from ..io.image import load_image

        photo = load_image(image)
        with Detector(max_hands=max_hands, mode=detect_mode) as det:
            dets = det.detect(photo.rgb)
        doc = detection_document(photo, dets)
        folder = None
        if outdir is not None:
            import imageio.v3 as iio

            folder = Path(outdir) / Path(image).stem
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "detections.json").write_text(dumps(doc, indent=1))
            iio.imwrite(folder / "overlay.png", draw_detections(photo.rgb, dets))
    except HandfitError as exc:
        fail(exc)
    except OSError as exc:
        fail(HandfitError(str(exc)))
    if as_json:
        click.echo(dumps(doc))
    else:
        for d in dets:
            b = ", ".join(f"{v:.0f}" for v in d.box_xyxy)
            click.echo(f"{d.side}\t{d.score:.3f}\t[{b}]\t{d.pass_name}")
    where = f" -> {folder}" if folder else ""
    click.echo(f"{image}: {len(dets)} hand(s) found ({detect_mode}){where}", err=True)
    if not dets:
        sys.exit(3)
