"""Texture completion: how well each fill predicts colours the photo did not give it.

Real photos: each hand's geometry is fitted once by handfit (cached, see
handfit.train.data.photo_cache); a contiguous third of its visible pixels (a
half-plane cut in a random direction) is hidden; the fills below are
made from the remaining samples and read at the hidden pixels' uv; the score
is the mean absolute colour error there (0-255 per channel), averaged over
``--cuts`` cut directions per hand (seeded by the photo's folder and name, so
a hand gets the same cuts whichever photos it is benchmarked with) and over
hands. Fills:

  prior        the learned texture prior (handfit/texture/prior.py)
  pushpull     push-pull fill of the samples at 256² (what an untrained prior returns, sharper)
  coarse       the dense stage's coarse albedo: the push-pull fill averaged to 4×4 texels
  mean         the samples' mean colour (flat skin)

Synthetic scenes (known texture, samples divided by the true shading): the
same hidden-pixel error, and the UV error against the true texture on the
texels no visible pixel saw (inside the atlas).

    D=$HANDFIT_DATA/dev     # default: ../shared/data/dev beside the repository
    OMP_NUM_THREADS=1 python bench/texture_completion.py --cache /tmp/hf_cache/dev --photos $D/hamer \
        $D/freihand $D/onehand10k $D/panoptic $D/meshgraphormer $D/tfjs_models/asl_frames [--weights PATH]
"""

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - the import path
from handfit import render as R
from handfit.texture.init import coarse, resize_texture
from handfit.models import load_model
from handfit.texture.prior import load_prior, pack_samples
from handfit.texture.unwrap import UVSamples, fill_push_pull, splat
from handfit.train.data import hide_region, photo_cache, photo_views, synthetic_views

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--photos", nargs="*", default=[], help="folders of photos (held aside from training)")
ap.add_argument("--cache", default=None, help="where the photo fits are cached")
ap.add_argument("--dense-geometry", action="store_true",
                help="fit the photos' geometry with the dense stage (default: keypoint stage only, ~6x cheaper)")
ap.add_argument("--weights", default=None, help="a texture prior file (default: the shipped one)")
ap.add_argument("--synthetic", type=int, default=40, help="synthetic scenes (0: none)")
ap.add_argument("--hide", type=float, default=1 / 3)
ap.add_argument("--crop", type=int, default=256)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--cuts", type=int, default=8,
                help="cut directions per hand (each hand's error is their mean; seeded by the photo's path)")
a = ap.parse_args()

net = load_prior(a.weights)
if net is None:
    sys.exit("no texture prior: pass --weights or run `make weights`")
T = 256


def fills(views, idx, hidden):
    """-> dict name -> (B,T,T,3) texture made from the non-hidden samples of views[idx]."""
    w = views.weight[idx]
    given = (w > 0) & ~hidden
    b, y, x = given.nonzero(as_tuple=True)
    albedo = (views.photo[idx] / views.shading[idx].clamp(min=0.05)).clamp(0, 1)
    s = UVSamples(batch=b, uv=views.uv[idx][b, y, x], rgb=albedo[b, y, x], cos=views.cos[idx][b, y, x],
                  weight=w[b, y, x])
    B = len(idx)
    tex, conf = splat(s, B, T)
    total = conf.sum((1, 2))
    mean = (tex * conf).sum((1, 2)) / total.clamp(min=1e-6)
    pp = fill_push_pull(tex, conf, prior=mean)
    with torch.no_grad():
        p = pack_samples(s, B, max_tokens=512)
        pred = net(p["uv"], p["rgb"], p["conf"], p["cos"], p["mask"])
        pred = resize_texture(pred, T)
    c = conf.clamp(max=1.0)
    return {"prior": c * pp + (1 - c) * pred, "pushpull": pp, "coarse": resize_texture(coarse(pp, 4), T),
            "mean": mean[:, None, None, :].expand(B, T, T, 3)}, conf, albedo


def cut_seeds(views) -> list:
    """A seed per hand from its source (photo path, and which hand of it) and --seed,
    so a hand gets the same cuts whichever photos are benchmarked with it."""
    seen, out = {}, []
    for i, name in enumerate(views.source):
        short = "/".join(Path(name).parts[-2:])  # the same whichever way the folder was named
        key = f"{short}#{seen.get(name, 0)}" if name != "synthetic" else f"synthetic#{i}"
        seen[name] = seen.get(name, 0) + 1
        out.append(zlib.crc32(f"{key}|{a.seed}".encode()))
    return out


def hidden_errors(views, name):
    """Per hand, the mean over --cuts cut directions of the mean |error| on the hidden pixels."""
    seeds = cut_seeds(views)
    errs = {}
    n = 0
    for i in range(0, len(views), 8):
        idx = torch.arange(i, min(i + 8, len(views)))
        per = {}
        for c in range(a.cuts):
            hidden = torch.cat([hide_region(views.weight[j:j + 1], torch.full((1,), a.hide),
                                            torch.Generator().manual_seed(seeds[j] * 101 + c)) for j in idx.tolist()])
            fs, _, albedo = fills(views, idx, hidden)
            ok = hidden.sum((1, 2)) > 0
            for k, tex in fs.items():
                col = R.texture(tex.contiguous(), views.uv[idx].contiguous())
                e = ((col - albedo).abs().mean(-1) * hidden).sum((1, 2)) / hidden.sum((1, 2)).clamp(min=1)
                per.setdefault(k, []).append(torch.where(ok, e, torch.full_like(e, float("nan"))))
        for k, v in per.items():
            e = torch.stack(v).nanmean(0)
            errs.setdefault(k, []).extend((255 * e[~e.isnan()]).tolist())
        n += int((~e.isnan()).sum())
    coarse_err = np.mean(errs["coarse"])
    print(f"\n{name}: {n} hands, hidden = {a.hide:.2f} of the visible pixels ({a.cuts} cuts per hand); "
          "mean |error| on hidden pixels (0-255)")
    print("| fill | error | vs coarse albedo |\n|---|---|---|")
    for k in ("prior", "pushpull", "coarse", "mean"):
        print(f"| {k} | {np.mean(errs[k]):.2f} | {np.mean(errs[k]) / coarse_err:.2f}x |")
    return errs


def unseen_uv_errors(views, model):
    uv = model.uv_coords.float()
    clip = torch.cat([uv * 2 - 1, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], -1)[None]
    atlas = R.rasterize(clip, model.uv_faces.to(torch.int32), (T, T), backend="cpu")[0, ..., 3] > 0
    errs = {}
    for i in range(0, len(views), 8):
        idx = torch.arange(i, min(i + 8, len(views)))
        fs, conf, _ = fills(views, idx, torch.zeros_like(views.weight[idx], dtype=torch.bool))
        unseen = (conf[..., 0] == 0) & atlas[None]
        truth = views.texture[idx]
        for k, tex in fs.items():
            e = ((tex - truth).abs().mean(-1) * unseen).sum((1, 2)) / unseen.sum((1, 2)).clamp(min=1)
            errs.setdefault(k, []).extend((255 * e).tolist())
    c = np.mean(errs["coarse"])
    print(f"\nsynthetic, UV error on unseen atlas texels (0-255), {len(views)} scenes, all visible samples given")
    print("| fill | error | vs coarse albedo |\n|---|---|---|")
    for k in ("prior", "pushpull", "coarse", "mean"):
        print(f"| {k} | {np.mean(errs[k]):.2f} | {np.mean(errs[k]) / c:.2f}x |")


torch.manual_seed(0)
if a.photos:
    files = []
    for folder in a.photos:
        files += photo_cache(folder, a.cache or "photo_cache", dense=a.dense_geometry, progress=False)
    views = photo_views(files, size=a.crop, tex_size=T)
    hidden_errors(views, f"real photos ({', '.join(a.photos)})")
if a.synthetic:
    model = load_model("anny", side="right", device=torch.device("cpu"), dtype=torch.float32)
    views = synthetic_views(model, a.synthetic, seed=777_777, size=a.crop, tex_size=T, deshade=1.0)
    hidden_errors(views, "synthetic scenes (samples divided by the true shading)")
    unseen_uv_errors(views, model)
