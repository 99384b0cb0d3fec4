"""Why a single photo's texture predicts the hand in another frame badly: other textures on the
same fitted meshes, scored as ``handfit eval --sequence`` scores the dense variant.

    python bench/research/texture_causes.py ../shared/data/dev3d_seq --set dense.texture_from=fitted
        [--limit N] [--gap 4] [--cache FILE [--only NAMES]] [--set PATH=VALUE ...]

(``dense.texture_from=fitted``: the texture phase's texture as ``dense``, the default before
issue 32; the table in docs/history/issue-32-textures.md was made so.) With ``--cache FILE``
the first run keeps every hand's observation and texture there and prints nothing else; a
second run with the same ``--cache`` scores the offline variants of :data:`VARIANTS` from it
(fills, facing thresholds, blur, shrinking towards the mean) in minutes instead of hours.

Each frame is fitted alone (the default fit, ``C.StagedFit``); on its final mesh these
textures are made and each is scored on the frames ``--gap`` source frames away (novel), on
its own frame (seen), against one flat colour:

* ``dense``: the dense stage's texture (what users get);
* ``obs+pp`` / ``obs+prior``: the photo unwrapped onto the final mesh as a track's frames are
  (``observe_frames``: weighted by facing and the photo's hand mask, nothing from unsure or
  background pixels), its holes filled by push-pull to the mean colour / by the learned prior;
* ``obs50+prior``: the same, only surfaces facing the camera at cos >= 0.5;
* ``dense@obs``: the dense texture where the observation's weight is at least 0.5, the
  ``obs+prior`` fill elsewhere;
* ``mean``: the observation's mean colour everywhere (a flat texture: scores as flat).

Printed: the texture table of each, and the novel error split by what the source texture
holds at the target's pixels (texels the source saw well, saw weakly, or filled).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

NAMES = ("dense", "obs+pp", "obs+prior", "obs50+prior", "dense@obs", "mean")


class Probe(C.StagedFit):
    """StagedFit that also makes the other textures of every hand it finishes."""

    def __init__(self, res, lean: bool = False):
        super().__init__(res, cache=False)
        self.lean = lean   # only what --cache keeps (no online variants, no split)
        self.alt: dict = {}      # id(HandResult.vertices) -> {name: (T,T,3) uint8, "weight": (T,T)}
        self.raw: dict = {}      # id(HandResult.vertices) -> what --cache keeps of it

    def hands(self, items, opts):
        import torch

        from handfit.fitting.pipeline import SIDE_ORDER, finish, observe_frames
        from handfit.texture.track import fill_track

        items = self.evidence(items, opts)
        out: list = [None] * len(items)
        prior = self.res.texture_prior(opts.texture_prior, opts.model, torch.device("cpu"), torch.float32)
        for side in SIDE_ORDER:
            idx = [i for i, it in enumerate(items) if it.detection.side == side]
            if not idx:
                continue
            fit = self.keypoint(side, [items[i] for i in idx], opts)
            hands = finish(fit, opts, self.res)
            fit.seconds = None
            colour, weight = observe_frames(fit, opts, self.res)          # on the final meshes
            strict = _observe(fit, opts, self.res, 0.5)
            for b, h in enumerate(hands):
                self.raw[id(h.vertices)] = {"colour": colour[b].half().numpy(), "weight": weight[b, ..., 0].half().numpy(),
                                            "weight50": strict[1][b, ..., 0].half().numpy(), "dense": h.texture}
            if self.lean:
                for i, h in zip(idx, hands):
                    out[i] = h
                continue
            u8 = lambda t: (t.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
            for b, (i, h) in enumerate(zip(idx, hands)):
                out[i] = h
                c, w = colour[b].float(), weight[b].float()
                with torch.no_grad():
                    pp, pr = fill_track(c, w), fill_track(c, w, prior)
                    pr50 = fill_track(strict[0][b].float(), strict[1][b].float(), prior)
                dense = torch.from_numpy(h.texture).float() / 255
                keep = (w >= 0.5).float()
                mean = (c * w).sum((0, 1)) / w.sum().clamp(min=1e-8)
                self.alt[id(h.vertices)] = {
                    "dense": h.texture, "obs+pp": u8(pp), "obs+prior": u8(pr), "obs50+prior": u8(pr50),
                    "dense@obs": u8(keep * dense + (1 - keep) * pr), "mean": u8(mean.expand_as(c)),
                    "weight": w[..., 0].numpy()}
        return out


def _observe(fit, opts, res, min_cos: float):
    """observe_frames with another facing threshold."""
    from handfit.fitting.dense import photo_scene
    from handfit.texture.track import frame_observation

    scene, _, g, skin_p = photo_scene(fit.model, fit.params, fit.batch, [it.rgb for it in fit.items], opts,
                                      res.render_context(fit.batch.K.device, opts.renderer))
    return frame_observation(scene.target, g, scene.valid, skin_p, opts.texture_size, min_cos=min_cos)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--gap", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep every hand's mesh, observation and dense texture here (pickle); when it exists, "
                         "score the offline variants from it instead of fitting")
    ap.add_argument("--only", default=None, help="offline: these variants (comma-separated)")
    C.add_set_option(ap)
    args = ap.parse_args(argv)

    from handfit.eval.datasets import read_runs
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import evaluate_sequences, texture_summary
    from handfit.eval.texture import run_scores
    from handfit.fitting.resources import Resources

    res = Resources()
    probe = Probe(res, lean=args.cache is not None)
    rows = {n: [] for n in NAMES}
    split = {k: [] for k in ("well", "weak", "filled")}   # per novel pair: (error share, pixels) by source texel

    cache: list = []

    def on_textures(run, variant, frames, got):
        if variant != "dense":
            return
        if probe.lean:
            for f in frames:
                if f is not None:
                    cache.append({"run": run, "number": f["number"], "K": f["K"],
                                  "vertices": f["vertices"].astype(np.float32), **probe.raw[id(f["vertices"])]})
            print(f"{run}: {sum(f is not None for f in frames)} frames", file=sys.stderr, flush=True)
            return
        for f in frames:
            if f is not None:
                cache.append({"run": run, "number": f["number"], "K": f["K"], "vertices": f["vertices"].astype(np.float32),
                              **probe.raw[id(f["vertices"])]})
        for name in NAMES:
            alt = [None if f is None else dict(f, texture=probe.alt[id(f["vertices"])][name]) for f in frames]
            rows[name].extend(r for r, f in zip(run_scores(alt, args.gap), alt) if f is not None)
        _split(frames, probe.alt, args.gap, split)
        print(f"{run}: {sum(f is not None for f in frames)} frames", file=sys.stderr, flush=True)

    runs = read_runs(args.data)[:args.limit]
    if args.cache is not None and args.cache.exists():
        return offline(args)
    evaluate_sequences(runs, C.fit_options(args.set, {"device": "cpu"}), ("dense",), fit_batch=probe,
                       resources=res, texture_gap=args.gap, on_textures=on_textures, progress=True)
    print(texture_table({n: texture_summary(r) for n, r in rows.items()}))
    print("\nThe dense texture's novel error by what the source texture holds at the target's pixels:")
    print("| source texel | pixels | mean error | flat's mean error there |\n|---|---|---|---|")
    for k, v in split.items():
        if v:
            a = np.array(v)
            print(f"| {k} | {int(a[:, 0].sum())} | "
                  f"{(a[:, 1]).sum() / a[:, 0].sum():.4f} | {(a[:, 2]).sum() / a[:, 0].sum():.4f} |")
    if args.cache is not None:
        import pickle

        args.cache.write_bytes(pickle.dumps({"data": str(args.data), "hands": cache}))
    return 0


def _split(frames, alt, gap, split):
    """Per novel pair of the dense texture: the target's scored pixels grouped by the source
    observation's weight at the texel they read (>= 0.5 well seen, (0, 0.5) weakly, 0 filled):
    (pixels, summed error, summed flat error) per group."""
    by_number = {f["number"]: f for f in frames if f is not None}
    for f in frames:
        if f is None:
            continue
        a = alt[id(f["vertices"])]
        for other in (f["number"] - gap, f["number"] + gap):
            t = by_number.get(other)
            if t is None:
                continue
            w8 = (np.clip(a["weight"], 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, -1)
            got = C.texel_split(t["photo"], t, [f["texture"]], w8)
            if got is None:
                continue
            for k, (px, err, flat) in got[2].items():
                if px:
                    split[k].append((px, err, flat))



# -- offline variants of a cached run ------------------------------------------------------------


def offline(args) -> int:
    """Score texture variants made from the cached observations (no fitting)."""
    import pickle

    from handfit.eval.datasets import read_runs
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import frame_number, texture_summary
    from handfit.eval.texture import run_scores
    from handfit.io.image import load_image
    from handfit.models import load_model

    doc = pickle.loads(args.cache.read_bytes())
    model = load_model("anny")
    faces, uv, uvf = model.faces.numpy(), model.uv_coords.double().numpy(), model.uv_faces.numpy()
    photos = {(name, frame_number(rec)): rec.image for name, frames in read_runs(args.data) for rec in frames}
    by_run: dict = {}
    for h in doc["hands"]:
        by_run.setdefault(h["run"], []).append(h)
    variants = VARIANTS if not args.only else {k: VARIANTS[k] for k in args.only.split(",")}
    rows = {n: [] for n in variants}
    for run, hands in by_run.items():
        base = [{"number": h["number"], "photo": load_image(photos[(run, h["number"])]).rgb, "K": h["K"],
                 "vertices": h["vertices"].astype(np.float64), "faces": faces, "uv": uv, "uv_faces": uvf}
                for h in hands]
        for name, make in variants.items():
            frames = [dict(b, texture=make(h, model)) for b, h in zip(base, hands)]
            rows[name].extend(run_scores(frames, args.gap))
        print(run, file=sys.stderr, flush=True)
    print(texture_table({n: texture_summary(r) for n, r in rows.items()}))
    return 0


def _u8(t):
    return (np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)


def _pp(h, weight=None, saturate=1.0):
    import torch

    from handfit.texture.track import fill_track

    c = torch.from_numpy(h["colour"].astype(np.float32))
    w = torch.from_numpy((h["weight"] if weight is None else weight).astype(np.float32))[..., None]
    return _u8(fill_track(c * (w > 0), w, saturate=saturate).numpy())


def _mean_fill(h, weight=None, saturate=1.0):
    c = h["colour"].astype(np.float32)
    w = (h["weight"] if weight is None else weight).astype(np.float32)[..., None]
    mean = (c * w).sum((0, 1)) / max(w.sum(), 1e-8)
    a = np.clip(w / saturate, 0, 1)
    return _u8(a * c + (1 - a) * mean)


def _shrink(t: np.ndarray, h, alpha: float) -> np.ndarray:
    """A uint8 texture's colours pulled towards the observed mean by 1 - alpha."""
    c, w = h["colour"].astype(np.float32), h["weight"].astype(np.float32)[..., None]
    mean = (c * w).sum((0, 1)) / max(w.sum(), 1e-8)
    return _u8(mean + alpha * (t.astype(np.float32) / 255 - mean))


def _blur(t: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(t, (0, 0), sigma)


VARIANTS = {
    "dense": lambda h, m: h["dense"],
    "obs+pp": lambda h, m: _pp(h),
    "obs+pp sat0.5": lambda h, m: _pp(h, saturate=0.5),
    "obs+pp sat2": lambda h, m: _pp(h, saturate=2.0),
    "obs50+pp": lambda h, m: _pp(h, weight=h["weight50"]),
    "obs>0.2+pp": lambda h, m: _pp(h, weight=h["weight"] * (h["weight"] > 0.2)),
    "obs+mean": lambda h, m: _mean_fill(h),
    "obs+mean sat0.5": lambda h, m: _mean_fill(h, saturate=0.5),
    "obs+mean sat2": lambda h, m: _mean_fill(h, saturate=2.0),
    "obs+pp x0.8": lambda h, m: _shrink(_pp(h), h, 0.8),
    "obs+pp x0.6": lambda h, m: _shrink(_pp(h), h, 0.6),
    "obs+pp blur1": lambda h, m: _blur(_pp(h), 1.0),
    "obs+pp blur2": lambda h, m: _blur(_pp(h), 2.0),
    "obs+pp blur4": lambda h, m: _blur(_pp(h), 4.0),
    "dense x0.8": lambda h, m: _shrink(h["dense"], h, 0.8),
}


if __name__ == "__main__":
    raise SystemExit(main())
