"""Texture scores: how well a hand's texture predicts a photo of it (``handfit eval --sequence``).

A texture is scored on one fitted mesh and one photo (:func:`texture_scores`): the mesh is
rendered with the texture's albedo (no light), inside its silhouette eroded by ``erode``
pixels; each colour channel of the render is scaled by one least-squares gain, which takes
out the global light and the camera's colour balance; the score is the mean absolute RGB
error of what is left, 0-1 (:func:`gain_errors`). Lower is better.

:func:`run_scores` scores every frame of one run (a short clip of one hand):

* ``seen``: the frame's own texture on its own mesh (small by construction: the texture was
  painted from that photo);
* ``novel``: the frame's texture on the mesh of every frame exactly ``gap`` source frames
  away, against that photo: does the texture predict how the hand looks elsewhere?
* ``flat``: the same targets rendered with one flat colour, the texture's median. Under the
  per-channel gain a flat colour scores the photo's spread about its mean, whatever the
  colour: the baseline any texture should beat;
* ``loo``: for a track, its texture built without the frame (leave one out), on that frame.

Shapes: ``B`` renders, ``H×W`` pixels, ``V`` vertices, ``F`` faces, ``T×T`` texels; colours
in [0,1] unless stated (uint8 textures and photos are accepted where named).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["erode", "gain_errors", "median_colour", "render_albedo", "texture_scores", "run_scores",
           "TEXTURE_KEYS"]

#: Per-hand keys :func:`run_scores` gives (each a float, NaN where not measured).
TEXTURE_KEYS = ("tex_seen", "tex_seen_flat", "tex_novel", "tex_novel_flat", "tex_loo", "tex_loo_flat")


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    """(B,H,W) bool -> (B,H,W) bool: the pixels at least ``px`` pixels (a square
    neighbourhood, Chebyshev distance) inside ``mask``; pixels outside the image count
    as outside the mask."""
    if px <= 0:
        return mask
    outside = F.pad((~mask).float()[:, None], (px, px, px, px), value=1.0)
    return F.max_pool2d(outside, 2 * px + 1, stride=1)[:, 0] == 0


def gain_errors(render: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The score of B renders against their photos.

    render, photo: (B,H,W,3) in [0,1]; mask: (B,H,W) bool, the pixels scored.
    Each channel c of render b is scaled by ``g = sum(r p) / sum(r r)`` over the mask;
    -> (B,): the mean of ``|g r - p|`` over the mask's pixels and the three channels (NaN
    where the mask is empty)."""
    m = mask[..., None].to(render.dtype)
    rr = (render * render * m).sum((1, 2))                                # (B,3)
    rp = (render * photo * m).sum((1, 2))
    gain = rp / rr.clamp(min=1e-12)
    err = ((render * gain[:, None, None] - photo).abs() * m).sum((1, 2, 3))
    n = m.sum((1, 2, 3)) * 3
    return torch.where(n > 0, err / n.clamp(min=1), torch.full_like(err, float("nan")))


def median_colour(texture: np.ndarray, uv: np.ndarray, uv_faces: np.ndarray) -> np.ndarray:
    """The median colour (3,) in [0,1] of a texture (T,T,3) uint8 over the texels its UV
    charts cover (uv (U,2), uv_faces (F,3)); over all texels when they cover none."""
    from ..render.mesh import bake_uv

    T = texture.shape[0]
    uv_t = torch.as_tensor(uv, dtype=torch.float32)
    ones = torch.ones(int(np.max(uv_faces)) + 1, 1)
    _, cover = bake_uv(ones, torch.as_tensor(uv_faces), uv_t, torch.as_tensor(uv_faces), T, backend="cpu")
    inside = cover[0, ..., 0].numpy() > 0
    px = texture[inside] if inside.any() else texture.reshape(-1, 3)
    return np.median(px.astype(np.float64), axis=0) / 255.0


def _box(vertices: np.ndarray, K: np.ndarray, H: int, W: int, margin: int) -> tuple | None:
    """The pixel box (x0, y0, x1, y1) around a mesh's projection, ``margin`` wider, within the
    photo; None when the mesh is behind the camera or off the photo."""
    z = vertices[:, 2]
    if not (z > 1e-3).all():
        return None
    uv = (vertices[:, :2] / z[:, None]) * np.diag(K)[:2] + K[:2, 2]
    x0, y0 = np.floor(uv.min(0)).astype(int) - margin
    x1, y1 = np.ceil(uv.max(0)).astype(int) + margin + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    return (x0, y0, x1, y1) if x1 - x0 > 2 and y1 - y0 > 2 else None


def render_albedo(photo: np.ndarray, K: np.ndarray, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                  uv_faces: np.ndarray, textures: list, erode_px: int = 4) -> dict | None:
    """N textures' albedo rendered on one fitted mesh, in a crop of its photo around the mesh.

    photo: (H,W,3) uint8; K: (3,3) its intrinsics; vertices: (V,3) camera frame, metres;
    faces (F,3); uv (U,2) and uv_faces (F,3) as a HandResult's; textures: N (T,T,3) uint8.
    -> None when the mesh is behind the camera or off the photo, else a dict: ``box``
    (x0, y0, x1, y1) the crop; ``photo`` (1,h,w,3) and ``albedo`` (N,h,w,3) in [0,1];
    ``mask`` (1,h,w) bool, the silhouette eroded by ``erode_px``: the pixels scored."""
    from ..render.mesh import rasterize_mesh, shade

    H, W = photo.shape[:2]
    box = _box(np.asarray(vertices, np.float64), np.asarray(K, np.float64), H, W, erode_px + 2)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    Kc = torch.as_tensor(K, dtype=torch.float32).clone()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    buf = rasterize_mesh(torch.as_tensor(vertices, dtype=torch.float32)[None], torch.as_tensor(faces), Kc[None],
                         (y1 - y0, x1 - x0), uv=torch.as_tensor(uv, dtype=torch.float32),
                         uv_faces=torch.as_tensor(uv_faces), backend="cpu")
    tex = torch.from_numpy(np.stack(textures).astype(np.float32)) / 255.0           # (N,T,T,3)
    albedo = torch.cat([shade(buf, texture=t[None], antialias=False)["albedo"] for t in tex])
    target = torch.from_numpy(np.array(photo[y0:y1, x0:x1], np.float32))[None] / 255.0
    return {"box": box, "photo": target, "albedo": albedo, "mask": erode(buf.cover[..., 0] > 0, erode_px)}


def texture_scores(photo: np.ndarray, K: np.ndarray, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                   uv_faces: np.ndarray, textures: list, erode_px: int = 4) -> tuple[np.ndarray, float]:
    """N textures scored on one fitted mesh against its photo (arguments as :func:`render_albedo`).
    -> (scores (N,), flat): each texture's score (:func:`gain_errors`) and that of one flat
    colour; NaN when the mesh shows no pixel ``erode_px`` inside its silhouette."""
    nan = (np.full(len(textures), np.nan), float("nan"))
    r = render_albedo(photo, K, vertices, faces, uv, uv_faces, textures, erode_px) if len(textures) else None
    if r is None or not bool(r["mask"].any()):
        return nan
    mask = r["mask"]
    # one texture at a time: a texture's score does not depend on the others scored with it
    scores = torch.cat([gain_errors(a[None], r["photo"], mask) for a in r["albedo"]])
    flat = gain_errors(mask[..., None].float().expand(-1, -1, -1, 3), r["photo"], mask)
    return scores.numpy().astype(np.float64), float(flat[0])


def run_scores(frames: list, gap: int = 4, erode_px: int = 4) -> list[dict]:
    """The texture scores of every frame of one run.

    frames: per frame None (not fitted) or a dict with ``number`` (its source frame index),
    ``photo`` (H,W,3) uint8, ``K`` (3,3), ``vertices`` (V,3), ``faces``, ``uv``, ``uv_faces``,
    ``texture`` (T,T,3) uint8 and optionally ``loo`` (T,T,3) uint8, the texture of its track
    built without it.
    -> per frame a dict of :data:`TEXTURE_KEYS` (``tex_novel``: the mean over the frames
    exactly ``gap`` source frames away of this frame's texture rendered there; ``*_flat``: the
    flat colour on the same targets), ``pairs``: [(novel, flat)] of each target and
    ``targets``: their source frame numbers (both empty for a frame not fitted).
    Each frame's mesh is rendered once, with its own textures and those of the frames that
    are scored on it."""
    by_number = {f["number"]: i for i, f in enumerate(frames) if f is not None and f.get("number") is not None}

    def near(f) -> list:
        """The frames ``gap`` source frames before and after f, those there are."""
        n = f.get("number")
        if n is None or gap <= 0:
            return []
        return [by_number[o] for o in (n - gap, n + gap) if o in by_number]

    rows = [{**{k: float("nan") for k in TEXTURE_KEYS}, "pairs": [], "targets": []} for _ in frames]
    novel: dict = {}   # (source, target) -> (source texture's score on the target, flat's there)
    for j, t in enumerate(frames):
        if t is None:
            continue
        own = [t["texture"]] + ([t["loo"]] if t.get("loo") is not None else [])
        sources = near(t)
        s, flat = texture_scores(t["photo"], t["K"], t["vertices"], t["faces"], t["uv"], t["uv_faces"],
                                 own + [frames[i]["texture"] for i in sources], erode_px)
        rows[j]["tex_seen"], rows[j]["tex_seen_flat"] = float(s[0]), flat
        if len(own) > 1:
            rows[j]["tex_loo"], rows[j]["tex_loo_flat"] = float(s[1]), flat
        for i, score in zip(sources, s[len(own):]):
            if np.isfinite(score) and np.isfinite(flat):
                novel[(i, j)] = (float(score), flat)
    for i, f in enumerate(frames):
        if f is None:
            continue
        row = rows[i]
        for j in near(f):
            if (i, j) in novel:
                row["pairs"].append(novel[(i, j)])
                row["targets"].append(frames[j]["number"])
        if row["pairs"]:
            row["tex_novel"] = float(np.mean([p[0] for p in row["pairs"]]))
            row["tex_novel_flat"] = float(np.mean([p[1] for p in row["pairs"]]))
    return rows
