"""Training data of the texture prior: views of hands with known geometry.

A *view* is one hand crop with everything the renderer gives for its mesh:
the photo, per-pixel uv, shading, view cosine and which pixels give samples.
Two sources make views:

* ``synthetic``: the project's renderer (handfit.train.synth) on random
  poses, shapes, lights, backgrounds and procedural skin textures, so the
  true UV texture is known;
* ``photos``: a folder of photos (and videos, every ``stride``-th frame),
  self-supervised. Each hand's geometry is fitted once with handfit.api and
  its mesh, crop camera and photo crop cached (one file per photo, written
  atomically), so an interrupted cache build resumes where it stopped.

:func:`make_batch` draws a batch: for each view a contiguous part of the
visible hand (a random half-plane cut holding ``hide`` of its pixels) is
hidden from the input samples; the loss supervises it.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.media import media_kind, read_frames
from ..texture.prior import pack_samples
from ..texture.unwrap import UVSamples, splat


@dataclass
class Views:
    """N views at crop side S (texture side T where known)."""

    photo: torch.Tensor     # (N,S,S,3) float in [0,1]
    uv: torch.Tensor        # (N,S,S,2)
    shading: torch.Tensor   # (N,S,S,3) what multiplies the texture in the image (ones for photos)
    weight: torch.Tensor    # (N,S,S) sample weight, 0 where a pixel gives no sample
    cos: torch.Tensor       # (N,S,S) view cosine
    texture: torch.Tensor   # (N,T,T,3) true UV texture (zeros where unknown)
    has_texture: torch.Tensor  # (N,) bool
    source: list            # N names ("synthetic" or a photo path)

    def __len__(self):
        return self.photo.shape[0]

    @staticmethod
    def cat(parts: list) -> "Views":
        parts = [p for p in parts if len(p)]
        T = max(p.texture.shape[1] for p in parts)
        tex = [p.texture if p.texture.shape[1] == T else
               F.interpolate(p.texture.permute(0, 3, 1, 2), size=(T, T)).permute(0, 2, 3, 1) for p in parts]
        return Views(*(torch.cat([getattr(p, k) for p in parts]) for k in
                       ("photo", "uv", "shading", "weight", "cos")), torch.cat(tex),
                     torch.cat([p.has_texture for p in parts]), sum((p.source for p in parts), []))


def render_buffers(model, vertices: torch.Tensor, K: torch.Tensor, size: int, min_cos: float = 0.3, erode: int = 1):
    """Rasterize B meshes in crop cameras. vertices (B,V,3), K (B,3,3) ->
    dict uv (B,S,S,2), normals (B,S,S,3) unit, cos (B,S,S), keep (B,S,S) bool
    (pixels that give samples: unwrap's rule, eroded silhouette and cos > min_cos),
    cover (B,S,S) bool and buffers, the :class:`~handfit.render.MeshBuffers` to shade."""
    from .. import render as R

    g = R.rasterize_mesh(vertices, model.faces, K, (size, size), uv=model.uv_coords, uv_faces=model.uv_faces,
                         points=True, backend="cpu")
    cos = (g.normals * F.normalize(-g.points, dim=-1)).sum(-1)
    cover = g.cover.permute(0, 3, 1, 2)
    uv, n = g.uv, g.normals
    k = 2 * erode + 1
    inner = (-F.max_pool2d(-cover, k, 1, erode))[:, 0] > 0.5
    return {"uv": uv, "normals": n, "cos": cos, "keep": inner & (cos > min_cos), "cover": cover[:, 0] > 0,
            "buffers": g}


def anatomy_maps(model, size: int = 256) -> torch.Tensor:
    """Where the hand's anatomy sits in its UV atlas: (size,size,3) maps in
    [0,1] of the palmar side, the nail beds and the dorsal knuckles.

    Found on the rest-pose mesh: a vertex is palmar when its normal points
    out of the palm, a nail when it is dorsal and within 1.2 cm of a
    fingertip, a knuckle when dorsal and within 1 cm of an MCP or PIP joint.
    The vertex values are baked into UV space by rasterizing the atlas.
    """
    from .. import render as R
    from ..render.shading import vertex_normals

    with torch.no_grad():
        o = model(**model.zero_params(1))
        v, k = o.vertices[0], o.keypoints[0]
        up = F.normalize(k[9] - k[0], dim=0)
        palm = F.normalize(torch.linalg.cross(k[5] - k[17], up), dim=0) * (1.0 if model.side == "right" else -1.0)
        n = vertex_normals(o.vertices, model.faces)[0]
        d = n @ palm
        palmar = torch.sigmoid(6 * d)
        dorsal = (d < -0.2).float()
        near = lambda idx, r: ((v[:, None] - k[idx][None]).norm(dim=-1).min(1).values < r).float()
        nail = dorsal * near([4, 8, 12, 16, 20], 0.012)
        knuckle = dorsal * near([5, 9, 13, 17, 6, 10, 14, 18], 0.010)
        attr = torch.stack([palmar, nail, knuckle], -1)[None]                 # (1,V,3)
        maps, cov = R.bake_uv(attr, model.faces, model.uv_coords.float(), model.uv_faces, size, backend="cpu")
        maps, cov = maps[0], cov[0]                                           # (T,T,3), row 0 at v = 0
        # Texels outside every chart take the nearest chart's value (bilinear lookups straddle edges).
        from ..texture.unwrap import fill_push_pull

        maps = fill_push_pull(maps[None] * cov[None], cov[None])[0]
        return F.avg_pool2d(maps.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(1, 2, 0).clamp(0, 1)


def anatomical_texture(gen: np.random.Generator, maps: torch.Tensor) -> np.ndarray:
    """skin_texture with the regions real hands show: a lighter, pinker palm,
    pale nails and darker, redder knuckles, each by a random amount.
    maps: (T,T,3) from :func:`anatomy_maps` -> (T,T,3) float32 in [0,1]"""
    from .synth import skin_texture

    T = maps.shape[0]
    tex = skin_texture(gen, T)
    m = maps.numpy()
    palm, nail, knuckle = m[..., :1], m[..., 1:2], m[..., 2:3]
    # Palms are lighter and pinker than the back of the hand, the more so the darker the skin.
    lift = gen.uniform(0.15, 0.4) * np.array([1.0, 0.85, 0.8])
    tex = tex + palm * lift * (1 - tex)
    nailc = np.array([0.92, 0.78, 0.76]) * gen.uniform(0.85, 1.0)
    tex = tex * (1 - nail * 0.6) + nail * 0.6 * nailc
    tex = tex * (1 - knuckle * gen.uniform(0.05, 0.15) * np.array([0.6, 1.0, 1.0]))
    return np.clip(tex, 0, 1).astype(np.float32)


def synthetic_views(model, n: int, seed: int, size: int = 128, tex_size: int = 256, deshade: float = 0.5,
                    progress: bool = False) -> Views:
    """``n`` random synthetic views (deterministic in ``seed``).

    Hands are posed inside their limits and cropped as the dense stage crops
    (square, 1.6× the keypoint box). ``deshade`` of them give samples divided
    by the true shading (so samples and the true texture agree, as after the
    dense stage's light fit); the rest keep the shading in (as photos do),
    and their UV target is not used.
    """
    from tqdm import tqdm

    from .. import render as R
    from ..camera import crop_intrinsics, default_focal, project, square_crop
    from .synth import background, default_light, random_params

    gen = np.random.default_rng(seed)
    W = H = 480
    f = default_focal(W, H, 60.0)
    K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
    out = {k: [] for k in ("photo", "uv", "shading", "weight", "cos", "texture", "has")}
    maps = anatomy_maps(model, tex_size)
    for _ in tqdm(range(n), desc="synthetic views", disable=not progress, leave=False, file=sys.stderr):
        params = random_params(model, gen, K, (H, W))
        with torch.no_grad():
            o = model(**{k: v[None] for k, v in params.items()})
            kp = project(o.keypoints, torch.as_tensor(K, dtype=torch.float32)[None])[0].numpy()
            crop = square_crop(np.concatenate([kp.min(0), kp.max(0)]) + gen.normal(0, 4, 4), scale=1.6, out_size=size)
            Kc = torch.as_tensor(crop_intrinsics(K, crop), dtype=torch.float32)[None]
            g = render_buffers(model, o.vertices, Kc, size)
            tex = torch.from_numpy(anatomical_texture(gen, maps))[None]
            light = default_light(gen)[None]
            bg = torch.from_numpy(background(gen, size, size))[None]
            r = R.shade(g["buffers"], texture=tex, sh=light, background=bg, antialias=False)
            shade = r["shading"]
            photo = r["rgb"].clamp(0, 1)
            photo = (photo * 255 + 0.5).floor() / 255          # 8-bit, like a photo
        ds = gen.random() < deshade
        out["photo"].append(photo[0])
        out["uv"].append(g["uv"][0])
        out["shading"].append(shade[0] if ds else torch.ones_like(shade[0]))
        out["weight"].append(((g["cos"][0] - 0.3) / 0.7).clamp(min=0) * g["keep"][0])
        out["cos"].append(g["cos"][0])
        out["texture"].append(tex[0])
        out["has"].append(bool(ds))
    return Views(torch.stack(out["photo"]), torch.stack(out["uv"]), torch.stack(out["shading"]),
                 torch.stack(out["weight"]), torch.stack(out["cos"]), torch.stack(out["texture"]),
                 torch.tensor(out["has"]), ["synthetic"] * n)


# -- photos ------------------------------------------------------------------------------

def list_media(folder) -> list[Path]:
    """Images and videos under ``folder`` (recursive), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if media_kind(p) is not None)


def fit_hands(image, dense: bool = True) -> list[dict]:
    """Fit every hand of one photo (path or (H,W,3) uint8) and keep what
    training needs: per hand the side, the full-photo intrinsics K (3,3),
    vertices (V,3) camera frame and fitted 2D keypoints (21,2). ``dense``: run the dense stage."""
    from .. import api
    from ..options import FitOptions

    opts = FitOptions(device="cpu")
    opts.dense.enabled = dense
    r = api.fit(image, options=opts)
    return [{"side": h.side, "K": torch.as_tensor(r.K, dtype=torch.float32),
             "vertices": torch.as_tensor(h.vertices, dtype=torch.float32),
             "kp2d": torch.as_tensor(h.keypoints_2d_fitted, dtype=torch.float32)} for h in r.hands]


def photo_cache(folder, cache: Path, dense: bool = True, stride: int = 15, max_items: int | None = None,
                progress: bool = True) -> list[Path]:
    """Fit the geometry of every photo (and video frame) in ``folder`` once.

    One file per photo or frame under ``cache`` (named by a hash of the path,
    frame and fit mode) holding its hands and the photo crop around each; a
    file already there is reused, so an interrupted build resumes.
    -> the cache files, in order
    """
    from tqdm import tqdm

    from ..cache import atomic_save
    from ..errors import HandfitError
    from ..io.image import load_image

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc="fitting photos (cached)", disable=not progress, file=sys.stderr, unit="photo")
    items = []
    for p in list_media(folder):
        if media_kind(p) == "video":
            try:  # decoded without pixel conversion: only the frame numbers are needed here
                end = None if max_items is None else max_items * stride
                for i, _, _ in read_frames(p, stride, 0, end, pixels=False):
                    items.append((p, i))
            except Exception as exc:  # noqa: BLE001 - any PyAV failure: the frames listed before it are kept
                bar.write(f"handfit train: {p}: cannot read the video ({type(exc).__name__}: {exc})",
                          file=sys.stderr)
        else:
            items.append((p, None))
    if max_items is not None:
        items = items[:max_items]

    def cache_file(p, frame):
        return cache / (hashlib.sha1(f"{p.resolve()}|{frame}|{dense}".encode()).hexdigest()[:16] + ".pt")

    def fit_and_save(p, frame, rgb, f):
        """rgb None: unreadable (already reported); its empty result is cached too."""
        hands = []
        if rgb is not None:
            try:
                hands = fit_hands(rgb, dense)
            except HandfitError as exc:  # no hand, ...: cache the empty result too
                bar.write(f"handfit train: {p}: {exc}", file=sys.stderr)
        entry = {"path": str(p), "frame": -1 if frame is None else frame, "hands": hands,
                 "image": torch.from_numpy(np.ascontiguousarray(rgb)) if rgb is not None and hands else torch.zeros(0)}
        atomic_save(entry, f, torch.save)
        bar.update(1)

    files = [cache_file(p, frame) for p, frame in items]
    todo: dict = {}  # path -> {frame: cache file} still to fit, in order
    for (p, frame), f in zip(items, files):
        if not f.is_file():
            todo.setdefault(p, {})[frame] = f
    bar.reset(total=len(items))
    bar.update(len(items) - sum(map(len, todo.values())))
    for p, wanted in todo.items():
        if None in wanted:  # a photo
            try:
                rgb = load_image(p).rgb
            except HandfitError as exc:
                bar.write(f"handfit train: {p}: {exc}", file=sys.stderr)
                rgb = None
            fit_and_save(p, None, rgb, wanted[None])
            continue
        # A video is decoded once, front to back, for all its frames still to fit.
        frames = read_frames(p, stride, 0, (max(wanted) // stride + 1) * stride)
        try:
            while wanted:
                try:
                    i, _, rgb = next(frames)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 - a PyAV failure: the frames not reached are unreadable
                    bar.write(f"handfit train: {p}: cannot decode ({type(exc).__name__}: {exc})", file=sys.stderr)
                    break
                if i in wanted:
                    fit_and_save(p, i, rgb, wanted.pop(i))
        finally:
            frames.close()
        for i, f in list(wanted.items()):  # not decoded (a truncated video): cached as empty
            fit_and_save(p, i, None, f)
    bar.close()
    return files


def photo_views(files: list[Path], size: int = 128, tex_size: int = 256) -> Views:
    """Views of the hands cached by :func:`photo_cache` (no true texture).

    Samples are weighted like the dense stage's unwrap: view cosine, and the
    photo's colour-model hand probability (keeps sleeves and occluders out).
    """
    from ..camera import crop_image, crop_intrinsics, square_crop
    from ..fitting.scene import hand_side_of_wrist
    from ..fitting.photo_mask import hand_probability
    from ..models import load_model
    from ..camera import to_crop

    out = {k: [] for k in ("photo", "uv", "weight", "cos")}
    names = []
    for f in files:
        e = torch.load(f, map_location="cpu", weights_only=True)
        for h in e["hands"]:
            model = load_model("anny", side=h["side"], device=torch.device("cpu"), dtype=torch.float32)
            kp = h["kp2d"].numpy()
            crop = square_crop(np.concatenate([kp.min(0), kp.max(0)]), scale=1.6, out_size=size)
            img, ok = crop_image(e["image"].numpy(), crop)
            photo = torch.from_numpy(np.ascontiguousarray(img)).float()[None] / 255
            valid = torch.from_numpy(np.ascontiguousarray(ok)).bool() & torch.from_numpy(
                hand_side_of_wrist(to_crop(kp, crop), size))
            Kc = torch.as_tensor(crop_intrinsics(h["K"].numpy(), crop), dtype=torch.float32)[None]
            with torch.no_grad():
                g = render_buffers(model, h["vertices"][None], Kc, size)
                skin = hand_probability(photo, g["cover"], valid[None])[0]
            keep = g["keep"][0] & valid
            w = ((g["cos"][0] - 0.3) / 0.7).clamp(min=0) * keep * skin
            out["photo"].append(photo[0])
            out["uv"].append(g["uv"][0])
            out["weight"].append(w * (w > 0.05))
            out["cos"].append(g["cos"][0])
            names.append(e["path"] + ("" if e["frame"] < 0 else f"#{e['frame']}"))
    n = len(names)
    if n == 0:
        return Views(*(torch.zeros(0, size, size, c) for c in (3, 2, 3)), torch.zeros(0, size, size),
                     torch.zeros(0, size, size), torch.zeros(0, tex_size, tex_size, 3),
                     torch.zeros(0, dtype=torch.bool), [])
    photo = torch.stack(out["photo"])
    return Views(photo, torch.stack(out["uv"]), torch.ones_like(photo), torch.stack(out["weight"]),
                 torch.stack(out["cos"]), torch.zeros(n, tex_size, tex_size, 3), torch.zeros(n, dtype=torch.bool),
                 names)


# -- batches -----------------------------------------------------------------------------

def hide_region(weight: torch.Tensor, frac: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A contiguous part of each view's sampled pixels: a half-plane cut in a
    random direction holding ``frac`` (B,) of them. weight (B,S,S) -> (B,S,S) bool"""
    B, S, _ = weight.shape
    ang = torch.rand(B, generator=generator) * 2 * torch.pi
    yy, xx = torch.meshgrid(torch.arange(S, dtype=weight.dtype), torch.arange(S, dtype=weight.dtype), indexing="ij")
    proj = xx[None] * ang.cos()[:, None, None].to(weight.dtype) + yy[None] * ang.sin()[:, None, None].to(weight.dtype)
    seen = weight > 0
    hidden = torch.zeros_like(seen)
    for b in range(B):
        v = proj[b][seen[b]]
        if v.numel() < 2:
            continue
        thr = torch.quantile(v, 1 - float(frac[b]))
        hidden[b] = seen[b] & (proj[b] > thr)
    return hidden


def make_batch(views: Views, idx: torch.Tensor, generator: torch.Generator, hide=(0.2, 0.5), max_tokens: int = 512,
               jitter: float = 0.1) -> dict:
    """A training batch of the views ``idx`` (B,).

    Random per-view colour gain (±``jitter``, the same on photo, samples and
    texture), and a hidden part of ``hide`` = (lo, hi) of the sampled pixels.
    -> dict: the packed input samples (see pack_samples), photo, uv, shading
    (B,S,S,·), seen / hidden (B,S,S) float, texture (B,T,T,3), has_texture (B,),
    unseen (B,T,T) float: texels no given sample touches
    """
    B = idx.numel()
    gain = 1 + (torch.rand(B, 1, 1, 3, generator=generator) * 2 - 1) * jitter
    photo = (views.photo[idx] * gain).clamp(0, 1)
    shading = views.shading[idx]
    weight, uv, cos = views.weight[idx], views.uv[idx], views.cos[idx]
    frac = hide[0] + (hide[1] - hide[0]) * torch.rand(B, generator=generator)
    hidden = hide_region(weight, frac, generator) if hide[1] > 0 else torch.zeros_like(weight, dtype=torch.bool)
    given = (weight > 0) & ~hidden
    b, y, x = given.nonzero(as_tuple=True)
    albedo = photo / shading.clamp(min=0.05)
    s = UVSamples(batch=b, uv=uv[b, y, x], rgb=albedo[b, y, x].clamp(0, 1), cos=cos[b, y, x], weight=weight[b, y, x])
    packed = pack_samples(s, B, max_tokens=max_tokens, generator=generator)
    T = views.texture.shape[1]
    _, conf = splat(s, B, T)
    return {**packed, "unseen": (conf[..., 0] <= 0).to(photo.dtype), "photo": photo, "uv_image": uv, "shading": shading,
            "seen": given.to(photo.dtype), "hidden": hidden.to(photo.dtype),
            "texture": (views.texture[idx] * gain).clamp(0, 1), "has_texture": views.has_texture[idx]}
