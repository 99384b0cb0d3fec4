"""Why a photo's texture still loses to one flat colour on 15% of dev3d_seq's pairs: oracles,
and fills and shading corrections that use only the source photo, scored from a cache.

    python bench/research/texture_causes.py ../shared/data/dev3d_seq --cache C.pkl   # once (~11 min)
    python bench/research/texture_fills.py C.pkl [--only NAMES] [--patterns DIR ...]
    python bench/research/texture_fills.py CLIP.mp4 --video [--step 2 --end 150] [--only NAMES]

The cache holds every frame's final mesh, its observation (colour and weight, what
``dense.texture_from="observed"`` unwraps) and the dense texture. Printed:

1. the novel pairs split into those the texture loses to flat and those it wins, with the
   target's scored pixels grouped by what the source texture holds there (texels the source saw
   well, weakly, or filled);
2. oracles, each a source texture that borrows from the *target* frame (none can be built in
   use): ``fill oracle`` (the target's own texture where the source saw nothing),
   ``seen oracle`` (the target's own colours where both saw), ``side-mean oracle`` (the
   target's mean colour of the palm or the back where the source saw nothing),
   ``pp side-corrected oracle`` (the push-pull fill, its unseen part of each side scaled to the
   target's mean of that side);
3. variants made from the source alone, scored as ``handfit eval`` scores (:data:`VARIANTS`):
   shrinking, a fill that stops near the observation, a palm/back fill, the texel straight
   through the hand, ambient occlusion or SH shading divided out, an eroded observation, and
   with ``--patterns DIR`` (photos fitted with the default fit) a population pattern of
   observed colour about each hand's mean, filling the texels the source did not see
   (``--pattern-from-cache``: the same from the scored frames themselves, an upper bound).
"""

from __future__ import annotations

import argparse
import collections
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

import torch  # noqa: E402

from handfit.models import load_model  # noqa: E402
from handfit.render.mesh import bake_uv, rasterize_mesh  # noqa: E402
from handfit.render.shading import vertex_normals  # noqa: E402
from handfit.texture.unwrap import fill_push_pull  # noqa: E402

MODEL = load_model("anny")
FT = MODEL.faces


def u8(t) -> np.ndarray:
    return (np.clip(np.asarray(t), 0, 1) * 255 + 0.5).astype(np.uint8)


def cw(h):
    """A cached hand's observation -> colour (T,T,3), weight (T,T,1) float tensors."""
    return torch.from_numpy(h["colour"].astype(np.float32)), torch.from_numpy(h["weight"].astype(np.float32))[..., None]


def mean_of(c, w):
    return (c * w).sum((0, 1)) / w.sum().clamp(min=1e-8)


def pp(c, w, prior=None):
    """The default fill: push-pull towards the observed mean (fill_track without a prior)."""
    m = mean_of(c, w) if prior is None else prior
    return fill_push_pull(c[None] * (w[None] > 0), w[None], prior=m[None])[0]


# -- maps of the model's UV atlas, from its rest pose ------------------------------------------------


def rest_pose():
    z = lambda n: torch.zeros(1, n)  # noqa: E731
    shape_dim = MODEL.j_shapedirs.shape[0]
    return MODEL(global_orient=z(3), pose=z(MODEL.pose_dim), shape=z(shape_dim), transl=z(3))


def outward_normals(v):
    """(V,3) vertex normals pointing out of the hand (a mirrored hand's faces wind the other way)."""
    n = vertex_normals(v[None], FT)[0]
    return -n if float((n * (v - v.mean(0))).sum()) < 0 else n


def palm_map(T: int) -> torch.Tensor:
    """(T,T) the rest pose's vertex normal along the palm's normal: > 0 palm, < 0 back."""
    out = rest_pose()
    k, v = out.keypoints[0], out.vertices[0]
    pn = torch.cross(k[5] - k[0], k[17] - k[0], dim=-1)
    d = (outward_normals(v) @ (pn / pn.norm()))[None, :, None]
    return bake_uv(d, FT, MODEL.uv_coords.float(), MODEL.uv_faces, T, backend="cpu")[0][0, ..., 0]


def _cast(o, d, tri):
    """Nearest hits of rays o, d (R,3) on triangles tri (F,3,3) (Moller-Trumbore)
    -> t (R,) (inf: none), face (R,), barycentrics (R,3)."""
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = torch.cross(d[:, None].expand(-1, len(tri), -1), e2[None].expand(len(d), -1, -1), dim=-1)
    det = (e1[None] * p).sum(-1)
    inv = 1 / torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
    s = o[:, None] - tri[None, :, 0]
    u = (s * p).sum(-1) * inv
    q = torch.cross(s, e1[None].expand_as(s), dim=-1)
    v = (d[:, None] * q).sum(-1) * inv
    t = (e2[None] * q).sum(-1) * inv
    t = torch.where((u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-6) & (det.abs() > 1e-12), t,
                    torch.full_like(t, float("inf")))
    tb, fb = t.min(1)
    ub, vb = u.gather(1, fb[:, None])[:, 0], v.gather(1, fb[:, None])[:, 0]
    return tb, fb, torch.stack([1 - ub - vb, ub, vb], -1)


def opposite_map(T: int):
    """For each texel, the texel straight through the hand (the rest pose's vertex cast along its
    inward normal) -> (rows (T,T), cols (T,T) long, ok (T,T) bool)."""
    v = rest_pose().vertices[0].double()
    n = outward_normals(v)
    o, d, tri = v - 1e-4 * n, -n, v[FT.long()]
    hits = [_cast(o[i:i + 200], d[i:i + 200], tri) for i in range(0, len(o), 200)]
    t, face, bary = (torch.cat(x) for x in zip(*hits))
    uvt, uvf = MODEL.uv_coords.double(), MODEL.uv_faces.long()
    opp = torch.einsum("nk,nkc->nc", bary, uvt[uvf[face]])
    ok = torch.isfinite(t).double()
    maps, cov = bake_uv(torch.cat([opp, ok[:, None]], 1).float()[None], FT, MODEL.uv_coords.float(), MODEL.uv_faces, T,
                        backend="cpu")
    maps = maps[0]
    rows = (maps[..., 1] * T).long().clamp(0, T - 1)
    cols = (maps[..., 0] * T).long().clamp(0, T - 1)
    return rows, cols, (maps[..., 2] > 0.99) & (cov[0, ..., 0] > 0)


def _fib_dirs(n: int = 48) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32) + 0.5
    phi, th = torch.acos(1 - 2 * i / n), np.pi * (1 + 5 ** 0.5) * i
    return torch.stack([torch.cos(th) * torch.sin(phi), torch.sin(th) * torch.sin(phi), torch.cos(phi)], -1)


def ambient_occlusion(vertices: np.ndarray, T: int, res: int = 160) -> torch.Tensor:
    """(T,T) cosine-weighted visibility of each texel's surface over 48 directions (depth maps of
    the posed mesh seen from each direction)."""
    v = torch.from_numpy(vertices.astype(np.float32))
    dirs = _fib_dirs()
    frames = []
    for d in dirs:
        z = -d
        a = torch.tensor([1.0, 0, 0]) if abs(float(z[0])) < 0.9 else torch.tensor([0.0, 1, 0])
        x = torch.cross(a, z, dim=-1)
        x = x / x.norm()
        frames.append(torch.stack([x, torch.cross(z, x, dim=-1), z]))
    R = torch.stack(frames)
    f, vc = 800.0, v - v.mean(0)
    K = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]])
    P = torch.einsum("dij,vj->dvi", R, vc)
    P[..., 2] += 1.0
    z = rasterize_mesh(P, FT, K, (res, res), points=True, backend="cpu").points[..., 2]
    col = (P[..., 0] / P[..., 2] * f + res / 2).long().clamp(0, res - 1)
    row = (P[..., 1] / P[..., 2] * f + res / 2).long().clamp(0, res - 1)
    zb = torch.stack([z[i][row[i], col[i]] for i in range(len(dirs))])
    vis = (P[..., 2] <= zb + 0.003) | (zb == 0)
    cos = (outward_normals(v) @ dirs.T).T.clamp(min=0)
    ao = (cos * vis).sum(0) / cos.sum(0).clamp(min=1e-6)
    return bake_uv(ao[None, :, None], FT, MODEL.uv_coords.float(), MODEL.uv_faces, T, backend="cpu")[0][0, ..., 0]


def texel_normals(vertices: np.ndarray, T: int) -> torch.Tensor:
    """(T,T,3) each texel's unit normal in the frame's camera."""
    v = torch.from_numpy(vertices.astype(np.float32))
    n = bake_uv(outward_normals(v)[None], FT, MODEL.uv_coords.float(), MODEL.uv_faces, T, backend="cpu")[0][0]
    return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-8)


# -- variants made from the source alone -----------------------------------------------------------


class Maps:
    """What the variants share: the palm map, the texel straight through, population patterns."""

    def __init__(self, T: int, patterns: dict):
        self.T, self.palm, self.opp, self.patterns = T, palm_map(T), opposite_map(T), patterns


def shrink(h, m, a):
    c, w = cw(h)
    mean = mean_of(c, w)
    return mean + a * (pp(c, w) - mean)


def blurred(t, sigma):
    import cv2

    return cv2.GaussianBlur(t.numpy(), (0, 0), sigma)


def reach(h, m, r):
    """Push-pull, then pulled to the observed median with the distance from the observation."""
    import cv2

    c, w = cw(h)
    sel = w[..., 0] >= 0.5
    med = c[sel].median(0).values if sel.any() else mean_of(c, w)
    d = torch.from_numpy(cv2.distanceTransform((w[..., 0] <= 0).numpy().astype(np.uint8), cv2.DIST_L2, 5))[..., None]
    return med + torch.exp(-d / r) * (pp(c, w) - med)


def side_fill(h, m, log_ratio=(-0.066, -0.063, -0.074), eps=0.2):
    """Each unseen side of the hand given its own mean colour (or the seen side's times the
    palm/back ratio measured on the asl clip), as a weak observation under the push-pull."""
    c, w = cw(h)
    P, B = m.palm > 0.3, m.palm < -0.3
    wp, wb = (P[..., None] & (w >= 0.5)).float(), (B[..., None] & (w >= 0.5)).float()
    sp, sb = bool(wp.sum() > 300), bool(wb.sum() > 300)
    if sp == sb:
        return pp(c, w)
    r = torch.tensor(log_ratio)
    pm = mean_of(c, wp) if sp else mean_of(c, wb) * torch.exp(r)
    bm = mean_of(c, wb) if sb else mean_of(c, wp) * torch.exp(-r)
    un = w[..., 0] <= 0
    pseudo = torch.where(P[..., None], pm, bm)
    pw = ((P | B) & un).float()[..., None] * eps
    return pp(torch.where(un[..., None], pseudo, c), w + pw)


def through(h, m, eps=0.1):
    """Unseen texels take the colour of the texel straight through the hand, where that was seen."""
    c, w = cw(h)
    rows, cols, ok = m.opp
    pw = w[rows, cols] * ok[..., None] * (w <= 0) * eps
    tot = w + pw
    return pp((c * w + c[rows, cols] * pw) / tot.clamp(min=1e-8), tot)


def divide_ao(h, m, gamma=0.5, floor=0.5):
    c, w = cw(h)
    a = ambient_occlusion(h["vertices"], m.T)[..., None].clamp(min=floor) ** gamma
    seen = (w > 0).float()
    return pp(c / a * (a * seen).sum() / seen.sum().clamp(min=1), w)


def divide_sh(h, m, order=4, lam=1e-2):
    """Luminance fitted as SH of the texel normals (bands 0-1) over the seen texels, divided out."""
    c, w = cw(h)
    n = texel_normals(h["vertices"], m.T)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    basis = torch.stack([torch.ones_like(x), y, z, x], -1)[..., :order]
    sel = w[..., 0] > 0
    A, b, ww = basis[sel], c.mean(-1)[sel], w[sel][:, 0]
    M = (A * ww[:, None]).T @ A + lam * ww.sum() * torch.diag(torch.tensor([0.0] + [1.0] * (order - 1)))
    coef = torch.linalg.solve(M, (A * ww[:, None]).T @ b)
    s = ((basis @ coef) / coef[0]).clamp(0.5, 2.0)
    return pp(c / s[..., None], w)


def eroded(h, m, r=1):
    import cv2

    c, w = cw(h)
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    keep = torch.from_numpy(cv2.erode((w[..., 0] > 0).numpy().astype(np.uint8), k))[..., None].float()
    return pp(c, w * keep)


def pattern_fill(h, m, name):
    """Unseen texels from a population pattern (colour about each hand's mean), scaled to this
    hand's mean, as a full observation under the push-pull."""
    P, PW = m.patterns[name]
    c, w = cw(h)
    pm = (P * w).sum((0, 1)) / w.sum().clamp(min=1e-8)
    pc = mean_of(c, w) * P / pm.clamp(min=1e-6)
    pw = ((w <= 0) & (PW > 1)).float()
    return pp(torch.where(w > 0, c, pc), w + pw)


VARIANTS = {
    "dense": lambda h, m: h["dense"],
    "pp x0.8": lambda h, m: shrink(h, m, 0.8),
    "reach 5": lambda h, m: reach(h, m, 5),
    "side fill": side_fill,
    "through": through,
    "AO divided": divide_ao,
    "SH divided": divide_sh,
    "eroded 1": eroded,
    "pull 10%": lambda h, m: shrink(h, m, 0.9),
    "blur 1 + pull 10%": lambda h, m: blurred(shrink(h, m, 0.9), 1.0),
}


class Observer(C.StagedFit):
    """StagedFit that keeps what every finished hand's photo shows of its texture
    (``observe_frames`` on the final meshes, as texture_causes.py's probe)."""

    def __init__(self, res):
        super().__init__(res, cache=False)
        self.seen: list = []      # (colour (T,T,3), weight (T,T,1)) per hand

    def finished(self, fit, opts):
        from handfit.fitting.pipeline import observe_frames

        fit.seconds = None
        self.seen.extend(zip(*observe_frames(fit, opts, self.res)))


def build_pattern(photos: Path, T: int):
    """Fit every photo under ``photos`` (default fit) and average each hand's observed colour
    divided by its mean -> pattern (T,T,3), its summed weight (T,T,1), hands."""
    from handfit.fitting.resources import Resources

    fit = Observer(Resources())
    opts = C.fit_options([], {"device": "cpu"})
    for f in sorted(p for p in photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                    and "negatives" not in p.parts):
        fit([str(f)], options=opts)
    acc, wacc = torch.zeros(T, T, 3), torch.zeros(T, T, 1)
    for c, w in fit.seen:
        w = w.clamp(0, 1)
        acc += c / mean_of(c, w) * w
        wacc += w
    return acc / wacc.clamp(min=1e-6), wacc, len(fit.seen)


# -- scoring ---------------------------------------------------------------------------------------


def load(cache: Path):
    from handfit.eval.datasets import read_runs
    from handfit.eval.sequence import frame_number
    from handfit.io.image import load_image

    doc = pickle.loads(cache.read_bytes())
    photos = {(n, frame_number(r)): r.image for n, fr in read_runs(Path(doc["data"])) for r in fr}
    by_run = collections.defaultdict(dict)
    for h in doc["hands"]:
        by_run[h["run"]][h["number"]] = h
    return by_run, lambda run, number: load_image(photos[(run, number)]).rgb


def video_cache(video: Path, step: int, end: int):
    """The clip's frames ``0, step, ...`` below ``end``, each fitted alone (default fit, one hand
    kept per frame), in :func:`load`'s form: a tuning set outside dev3d_seq."""
    import imageio.v3 as iio

    from handfit.fitting.resources import Resources

    fit, opts = Observer(Resources()), C.fit_options([], {"device": "cpu"})
    hands, frames = {}, {}
    for i, frame in enumerate(iio.imiter(video)):
        if i >= end:
            break
        if i % step:
            continue
        before = len(fit.seen)
        r = fit([frame], options=opts)[0]
        if len(r.hands) != 1 or len(fit.seen) != before + 1:
            continue
        h, (c, w) = r.hands[0], fit.seen[-1]
        frames[i] = frame
        hands[i] = {"run": video.stem, "number": i, "K": r.K, "vertices": h.vertices, "dense": h.texture,
                    "colour": c.numpy(), "weight": w[..., 0].numpy()}
    return {video.stem: hands}, lambda run, number: frames[number]


def pairs(by_run, gap):
    for run, hands in by_run.items():
        for n, s in hands.items():
            for t in (n - gap, n + gap):
                if t in hands:
                    yield run, s, hands[t]


def oracles(by_run, photo, gap, palm) -> None:
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import loses_to_flat, texture_summary

    mesh = {"faces": FT.numpy(), "uv": MODEL.uv_coords.double().numpy(), "uv_faces": MODEL.uv_faces.numpy()}
    side = palm.numpy()[..., None]

    def side_means(tex, sel_w):
        """(T,T,3): each texel the mean of ``tex`` over the texels ``sel_w`` of its side of the hand."""
        def one(sel):
            q = sel_w & sel
            return tex[q].mean(0) if q.sum() > 50 else tex[sel_w].mean(0)
        return np.where(side > 0, one(side[..., 0] > 0.3), one(side[..., 0] < -0.3))

    split = {k: collections.defaultdict(lambda: np.zeros(3)) for k in ("loses", "wins")}
    scores = collections.defaultdict(list)
    for run, s, t in pairs(by_run, gap):
        ws, wt = s["weight"].astype(np.float32)[..., None], t["weight"].astype(np.float32)[..., None]
        S, Tt = s["dense"].astype(np.float32), t["dense"].astype(np.float32)
        a = np.clip(ws, 0, 1)
        b = np.clip(wt, 0, 1) * (ws > 0)
        un = ws[..., 0] <= 0
        target_sides = side_means(Tt, wt[..., 0] >= 0.5)
        texs = {"novel": S, "fill oracle": a * S + (1 - a) * Tt, "seen oracle": b * Tt + (1 - b) * S,
                "side-mean oracle": a * S + (1 - a) * target_sides,
                "pp side-corrected oracle": np.where(un[..., None], S * target_sides / np.maximum(side_means(S, un), 1), S)}
        got = C.texel_split(photo(run, t["number"]), dict(mesh, K=t["K"], vertices=t["vertices"].astype(np.float64)),
                            [u8(x / 255) for x in texs.values()], u8(np.clip(ws, 0, 1).repeat(3, -1)))
        if got is None:
            continue
        sc, flat, groups = got
        for k, v in zip(texs, sc):
            scores[k].append((v, flat))
        # the novel pair's pixels by what the source holds there
        group = split["loses" if loses_to_flat(np.array([[sc[0], flat]]))[0] else "wins"]
        for k, g in groups.items():
            group[k] += g
        group["all"] += np.sum(list(groups.values()), axis=0)
    print("| pairs | source texel | share of pixels | error | flat's error |\n|---|---|---|---|---|")
    for name, group in split.items():
        for k, (px, e, f) in group.items():
            print(f"| {name} | {k} | {px / max(group['all'][0], 1):.2f} | {e / max(px, 1):.4f} | {f / max(px, 1):.4f} |")
    nan = float("nan")
    print()
    print(texture_table({k: texture_summary([{"tex_seen": nan, "tex_loo": nan, "tex_loo_flat": nan, "pairs": v}]) for k, v in scores.items()}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", type=Path, help="from texture_causes.py --cache, or a video with --video")
    ap.add_argument("--video", action="store_true", help="CACHE is a video: fit its frames here (--step, --end)")
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--end", type=int, default=150)
    ap.add_argument("--gap", type=int, default=4)
    ap.add_argument("--only", default=None, help="these variants (comma-separated); 'none' for the oracles only")
    ap.add_argument("--patterns", type=Path, nargs="*", default=[],
                    help="folders of photos: each gives a population pattern fill (fitted here, minutes)")
    ap.add_argument("--pattern-from-cache", action="store_true",
                    help="also a pattern from the cache's own observations (it sees the scored hands: a bound, not a method)")
    args = ap.parse_args(argv)

    from handfit.eval.report import texture_table
    from handfit.eval.sequence import texture_summary
    from handfit.eval.texture import run_scores

    by_run, photo = video_cache(args.cache, args.step, args.end) if args.video else load(args.cache)
    T = next(iter(next(iter(by_run.values())).values()))["colour"].shape[0]
    patterns = {}
    for folder in args.patterns:
        P, PW, n = build_pattern(folder, T)
        patterns[f"pattern {folder.name} ({n} hands)"] = (P, PW)
    if args.pattern_from_cache:
        obs = [cw(h) for hands in by_run.values() for h in hands.values()]
        acc = sum(c / mean_of(c, w.clamp(0, 1)) * w.clamp(0, 1) for c, w in obs)
        wacc = sum(w.clamp(0, 1) for _, w in obs)
        patterns[f"pattern of the scored frames ({len(obs)} hands)"] = (acc / wacc.clamp(min=1e-6), wacc)
    maps = Maps(T, patterns)
    if not args.video:
        oracles(by_run, photo, args.gap, maps.palm)
    variants = dict(VARIANTS)
    for name in patterns:
        variants[name] = lambda h, m, name=name: pattern_fill(h, m, name)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    faces, uv, uvf = FT.numpy(), MODEL.uv_coords.double().numpy(), MODEL.uv_faces.numpy()
    rows = {k: [] for k in variants}
    for run, hands in by_run.items():
        base = [{"number": n, "photo": photo(run, n), "K": h["K"], "vertices": h["vertices"].astype(np.float64),
                 "faces": faces, "uv": uv, "uv_faces": uvf} for n, h in hands.items()]
        for name, make in variants.items():
            frames = [dict(b, texture=np.asarray(t) if isinstance(t := make(h, maps), np.ndarray) else u8(t.numpy()))
                      for b, h in zip(base, hands.values())]
            rows[name].extend(run_scores(frames, args.gap))
    if rows:
        print()
        print(texture_table({k: texture_summary(r) for k, r in rows.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
