"""Texture unwrapping and the dense stage's losses on synthetic renders with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from handfit.fitting.hands import HandBatch
from handfit.options import DenseStage, DenseWeights, FitOptions
from handfit.fitting.dense import fit_dense, geometry_terms
from handfit.fitting.scene import CropScene, ambient_sh
from handfit.texture.init import initial_texture
from handfit.camera import project
from handfit.models import load_model
from handfit.texture.unwrap import UVSamples, fill_push_pull, splat

S = 192  # crop side for these tests


def _batch(K, kp2d):
    """One hand's HandBatch: K (1,3,3), its keypoints (1,21,2), a box side of 0.6 S."""
    return HandBatch(K=K, kp2d=kp2d, world=None, scale=torch.tensor([S * 0.6]))


def _opts(stage, texture_size, crop_size):
    return FitOptions(dense=stage, texture_size=texture_size, crop_size=crop_size, renderer="cpu", device="cpu")


def _scene(model, tex, pose_scale=0.3, seed=0, sh=None):
    """A hand filling a S×S crop, rendered with ``tex`` under light ``sh`` (B,9,3;
    ambient if None) over grey."""
    gen = torch.Generator().manual_seed(seed)
    p = model.zero_params(1)
    p["pose"] = (model.pose_lower + (model.pose_upper - model.pose_lower) * torch.rand(model.pose_dim, generator=gen)) * pose_scale
    p["pose"] = p["pose"][None]
    p["transl"] = torch.tensor([[0.0, 0.07, 0.45]])
    K = torch.tensor([[[420.0, 0, (S - 1) / 2], [0, 420.0, (S - 1) / 2], [0, 0, 1]]])
    grey = torch.full((1, S, S, 3), 0.3)
    scene = CropScene(model, grey, torch.ones(1, S, S, dtype=torch.bool), K, backend="cpu")
    with torch.no_grad():
        sh = ambient_sh(1, "cpu", torch.float32) if sh is None else sh
        img = scene.render(model(**p).vertices, tex, sh)["rgb"]
    return CropScene(model, img, scene.valid, K, backend="cpu"), p


@pytest.fixture(scope="module")
def model():
    return load_model("anny")


def test_splat_then_fill_reproduces_samples():
    T = 16
    uv = (torch.stack(torch.meshgrid(torch.arange(T), torch.arange(T), indexing="xy"), -1).reshape(-1, 2) + 0.5) / T
    rgb = torch.rand(T * T, 3)
    s = UVSamples(batch=torch.zeros(T * T, dtype=torch.long), uv=uv, rgb=rgb, cos=torch.ones(T * T),
                  weight=torch.ones(T * T))
    tex, conf = splat(s, 1, T)
    assert torch.allclose(tex[0].reshape(-1, 3), rgb, atol=1e-5)  # samples at texel centres land exactly
    assert torch.allclose(conf, torch.ones_like(conf))
    # Holes are filled from neighbours, observed texels stay put.
    conf2 = conf.clone()
    conf2[0, 4:8, 4:8] = 0
    filled = fill_push_pull(tex * (conf2 > 0), conf2, prior=torch.tensor([[0.5, 0.5, 0.5]]))
    assert torch.allclose(filled[0][conf2[0, ..., 0] > 0], tex[0][conf2[0, ..., 0] > 0], atol=1e-5)
    hole = filled[0, 4:8, 4:8]
    assert (hole >= 0).all() and (hole <= 1).all() and hole.std() < rgb.std()


def test_unwrap_recovers_known_texture(model):
    """Render a hand with a known texture, unwrap the render, compare in UV space."""
    T = 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, T), torch.linspace(0, 1, T), indexing="ij")
    tex = torch.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(6 * xx)], -1)[None]
    scene, p = _scene(model, tex)
    v = model(**p).vertices
    got, conf, mean = initial_texture(scene, v, T)
    seen = conf[0, ..., 0] > 0.5
    assert seen.sum() > 0.1 * T * T  # the visible side covers a good part of the atlas
    err = (got[0][seen] - tex[0][seen]).abs().mean()
    assert err < 0.03, f"mean abs texel error {err:.4f}"
    # A different texture must not match: the test can fail.
    assert (got[0][seen] - tex[0].flip(0)[seen]).abs().mean() > 5 * err


def test_unwrap_divides_out_known_shading(model):
    """Under a directional light the photo is albedo × shading; given the light,
    the unwrap recovers the albedo, and without it it does not."""
    from handfit.render.shading import default_sh

    T = 64
    tex = torch.full((1, T, T, 3), 0.6)
    sh = default_sh(1)
    scene, p = _scene(model, tex, sh=sh)
    v = model(**p).vertices
    got, conf, _ = initial_texture(scene, v, T, sh=sh)
    ignored, _, _ = initial_texture(scene, v, T)
    seen = conf[0, ..., 0] > 0.5
    err = (got[0][seen] - 0.6).abs().mean()
    assert err < 0.02, f"albedo error {err:.4f}"
    assert (ignored[0][seen] - 0.6).abs().mean() > 3 * err


def test_dense_loss_zero_at_truth_and_grows_with_pose_error(model):
    T = 64
    gen = np.random.default_rng(0)
    from handfit.train.synth import skin_texture

    tex = torch.from_numpy(skin_texture(gen, T))[None]
    scene, p = _scene(model, tex)
    stage = DenseStage()
    K_full = scene.K
    with torch.no_grad():
        kp = model(**p).keypoints
    from handfit.camera import project

    kp2d = project(kp, K_full)
    cover = torch.zeros(1, S, S)
    terms = geometry_terms(model, scene, _batch(K_full, kp2d), cover,
                           ambient_sh(1, "cpu", torch.float32), stage)

    def image_loss(pose_noise):
        q = {k: v.clone() for k, v in p.items()}
        q["pose"] = q["pose"] + pose_noise
        q["texture"], q["sh"] = tex, ambient_sh(1, "cpu", torch.float32)
        with torch.no_grad():
            t = terms(q)
        return float(t["photo"] + t["grad"])

    direction = torch.from_numpy(np.random.default_rng(1).normal(size=model.pose_dim)).float()[None]
    direction = direction / direction.norm()
    values = [image_loss(direction * s) for s in (0.0, 0.1, 0.3, 0.6)]
    assert values[0] < 0.02, values
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.slow
def test_image_terms_alone_pull_a_perturbed_pose_back(model):
    """The dense stage with the keypoint terms off: silhouette and shading on
    their own must bring a perturbed hand closer to the truth."""
    from handfit.render.shading import default_sh
    from handfit.train.synth import skin_texture

    T = 64
    tex = torch.from_numpy(skin_texture(np.random.default_rng(3), T))[None]
    scene, p = _scene(model, tex, sh=default_sh(1))
    photo = (scene.target[0].numpy() * 255 + 0.5).astype(np.uint8)
    with torch.no_grad():
        truth = model(**p).vertices
        from handfit.camera import project

        kp2d = project(model(**p).keypoints, scene.K)
    start = {k: v.clone() for k, v in p.items()}
    start["pose"] = start["pose"] + 0.12 * torch.from_numpy(np.random.default_rng(4).normal(size=model.pose_dim)).float()
    start["transl"] = start["transl"] + torch.tensor([[0.004, -0.003, 0.0]])

    def error(q):
        with torch.no_grad():
            return float((model(**q).vertices - truth).norm(dim=-1).mean())

    before = error(start)
    stage = DenseStage(iters=80, texture_iters=5, weights=DenseWeights(kp2d=0.0, kp_trust=0.0, anchor=0.0),
                       photo_mask="colour")
    params = {k: v.clone() for k, v in start.items()}
    report, texture = fit_dense(model, params, _batch(scene.K, kp2d), [photo], _opts(stage, T, 128))
    after = error(params)
    assert after < 0.7 * before, (before, after)
    assert report.metrics["photometric_after"][0] < report.metrics["photometric_before"][0]
    assert texture.shape == (1, T, T, 3)


def test_depth_term_is_zero_at_the_start_and_grows_when_fingers_bend_in_depth(model):
    """The depth term holds each keypoint's depth relative to the wrist; not its 2D position."""
    T = 16
    tex = torch.full((1, T, T, 3), 0.6)
    scene, p = _scene(model, tex)
    with torch.no_grad():
        kp3d = model(**p).keypoints
    kp2d = project(kp3d, scene.K)
    start = {**{k: p[k].clone() for k in ("global_orient", "pose")}, "keypoints": kp3d}
    sh = ambient_sh(1, "cpu", torch.float32)
    args = (model, scene, _batch(scene.K, kp2d), torch.zeros(1, S, S), sh)
    terms = geometry_terms(*args, DenseStage(weights=DenseWeights(depth=3.0)), start)
    q = {**{k: v.clone() for k, v in p.items()}, "texture": tex, "sh": sh}
    with torch.no_grad():
        assert float(terms(q)["depth"]) < 1e-10
        moved = {**q, "transl": q["transl"] + torch.tensor([[0.01, -0.02, 0.0]])}  # the whole hand sideways
        assert float(terms(moved)["depth"]) < 1e-8
        q["pose"] = q["pose"] + 0.1
        assert float(terms(q)["depth"]) > 1e-3
    with torch.no_grad():
        assert "depth" not in geometry_terms(*args, DenseStage(weights=DenseWeights(depth=0.0)), start)(q)


def test_anchor_term_is_zero_at_the_start_and_grows_with_pose_change(model):
    """The anchor holds the dense fit near the keypoint stage's pose and orientation."""
    T = 16
    tex = torch.full((1, T, T, 3), 0.6)
    scene, p = _scene(model, tex)
    with torch.no_grad():
        kp2d = project(model(**p).keypoints, scene.K)
    start = {k: p[k].clone() for k in ("global_orient", "pose")}
    sh = ambient_sh(1, "cpu", torch.float32)
    terms = geometry_terms(model, scene, _batch(scene.K, kp2d), torch.zeros(1, S, S), sh,
                           DenseStage(weights=DenseWeights(anchor=2.0, depth=0.0)), start)
    q = {**{k: v.clone() for k, v in p.items()}, "texture": tex, "sh": sh}
    with torch.no_grad():
        assert float(terms(q)["anchor"]) == 0.0
        q["pose"] = q["pose"] + 0.1
        assert abs(float(terms(q)["anchor"]) - 2.0 * 0.01 * model.pose_dim) < 1e-4
    no_start = geometry_terms(model, scene, _batch(scene.K, kp2d), torch.zeros(1, S, S), sh,
                              DenseStage())
    with torch.no_grad():
        assert "anchor" not in no_start(q)


def test_prior_appearance_predicts_the_photo_colour_at_its_detail_and_refreshes_on_schedule(model):
    """The geometry phase's prior albedo: an untrained prior returns the
    samples' fill, so a flat-coloured hand gives that colour, at prior_detail
    texels a side; it is re-predicted every ``every`` calls and held between."""
    from handfit.texture.init import PriorAppearance
    from handfit.texture.prior import PriorConfig, TexturePrior

    colour = torch.tensor([0.7, 0.5, 0.4])
    scene, p = _scene(model, colour.expand(1, 16, 16, 3).contiguous())
    net = TexturePrior(PriorConfig(dim=16, heads=2, layers=1, cross_layers=1, grid=4, freqs=3, channels=(8,),
                                   size=32)).eval()
    app = PriorAppearance(net, scene, torch.ones(1, S, S), detail=8, every=3)
    sh = ambient_sh(1, "cpu", torch.float32)
    v = model(**p).vertices
    first = app(v, sh)
    assert first.shape == (1, 8, 8, 3)
    assert torch.allclose(first, colour.expand_as(first), atol=0.02)
    assert app(v, sh) is first and app(v, sh) is first   # held for `every` calls
    assert app(v, sh) is not first                        # then predicted again


def test_dense_stage_with_the_prior_as_geometry_albedo(model):
    """geometry_albedo="prior" runs both phases and leaves the geometry phase's
    albedo untouched by the optimiser (it is the prior's prediction)."""
    from handfit.texture.prior import PriorConfig, TexturePrior

    T = 32
    scene, p = _scene(model, torch.full((1, 16, 16, 3), 0.6))
    photo = (scene.target[0].numpy() * 255 + 0.5).astype(np.uint8)
    with torch.no_grad():
        kp2d = project(model(**p).keypoints, scene.K)
    net = TexturePrior(PriorConfig(dim=16, heads=2, layers=1, cross_layers=1, grid=4, freqs=3, channels=(8,),
                                   size=32)).eval()
    stage = DenseStage(iters=12, texture_iters=3, geometry_albedo="prior", prior_detail=4, prior_every=5,
                       photo_mask="colour")
    params = {k: v.clone() for k, v in p.items()}
    report, texture = fit_dense(model, params, _batch(scene.K, kp2d), [photo], _opts(stage, T, 96),
                                texture_prior=net)
    assert texture.shape == (1, T, T, 3)
    assert report.iters >= 1 and torch.isfinite(report.total).all()


def test_texture_package_imports_nothing_from_fitting():
    """handfit.texture sits below handfit.fitting: the scene is passed in, never imported."""
    import ast
    from pathlib import Path

    import handfit.texture

    for path in Path(handfit.texture.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any("fitting" in n for n in names), (path.name, names)


def _small_dense_problem(model):
    scene, p = _scene(model, torch.full((1, 16, 16, 3), 0.6))
    photo = (scene.target[0].numpy() * 255 + 0.5).astype(np.uint8)
    with torch.no_grad():
        kp2d = project(model(**p).keypoints, scene.K)
    start = {k: v.clone() for k, v in p.items()}
    start["pose"] = start["pose"] + 0.05 * torch.from_numpy(np.random.default_rng(7).normal(size=model.pose_dim)).float()
    return scene, photo, kp2d, start


def test_coarse_to_fine_runs_both_resolutions(model):
    """geometry_downsample=2 with fine_iters: the coarse iterations, then the fine ones
    (counted in the report and the progress), and a different result from coarse only."""
    scene, photo, kp2d, start = _small_dense_problem(model)
    out = {}
    for fine in (0, 4):
        stage = DenseStage(iters=6, fine_iters=fine, texture_iters=2, geometry_downsample=2, photo_mask="colour",
                           tol=0, texture_from="fitted")
        params = {k: v.clone() for k, v in start.items()}
        steps = []
        report, _ = fit_dense(model, params, _batch(scene.K, kp2d), [photo], _opts(stage, 16, 96),
                              on_step=lambda it, t: steps.append(it))
        out[fine] = (report, params["pose"], steps)
    assert out[0][0].iters == 6 and out[4][0].iters == 10
    assert out[4][2] == list(range(1, 13))  # 6 coarse + 4 fine + 2 texture
    assert not torch.equal(out[0][1], out[4][1])


def test_an_observed_texture_is_the_photo_where_it_is_sure_and_skips_the_texture_phase(model, monkeypatch):
    """texture_from="observed": no texture-phase step; the texels the photo shows squarely keep
    its colour; a stripe of the photo that the hand mask calls background (a sleeve, an object
    in front) gives its colour to no texel, where the fitted texture paints it in."""
    import handfit.fitting.dense as D

    scene, photo, kp2d, start = _small_dense_problem(model)
    photo = photo.copy()
    photo[:, : S // 3] = (0, 0, 255)                                       # a blue "sleeve" over the hand
    real = D.photo_hand_mask

    def mask(scene_, *a, **k):                                            # the mask knows the sleeve is not hand
        p = real(scene_, *a, **k).clone()
        t = scene_.target
        p[(t[..., 2] - t[..., :2].max(-1).values) > 0.3] = 0.0
        return p

    monkeypatch.setattr(D, "photo_hand_mask", mask)
    out = {}
    for mode in ("observed", "fitted"):
        stage = DenseStage(iters=3, fine_iters=0, texture_iters=30, photo_mask="colour", tol=0, texture_from=mode,
                           lr_texture=0.05)
        params = {k: v.clone() for k, v in start.items()}
        steps = []
        report, tex = fit_dense(model, params, _batch(scene.K, kp2d), [photo], _opts(stage, 32, S),
                                on_step=lambda it, t: steps.append(it))
        out[mode] = (tex[0], steps, report)
    tex, steps, report = out["observed"]
    assert steps == [1, 2, 3] and report.metrics["texture_iters"] == 0 and tex.shape == (32, 32, 3)
    assert out["fitted"][1] == list(range(1, 34))
    blue = lambda t: ((t[..., 2] - t[..., :2].max(-1).values) > 0.1).float().mean()  # noqa: E731
    assert blue(tex) == 0 and blue(out["fitted"][0]) > 0.01, (float(blue(tex)), float(blue(out["fitted"][0])))
    grey_hand = (tex - 0.6).abs().max(-1).values < 0.1                   # the true albedo is 0.6 grey
    assert grey_hand.float().mean() > 0.5


def test_reference_is_the_start_unless_given(model):
    """reference equal to the starting params changes nothing, bit for bit; another
    reference moves the result (the depth term holds the fit to it, not to the start)."""
    scene, photo, kp2d, start = _small_dense_problem(model)
    with torch.no_grad():
        kp_start = model(**start).keypoints
    stage = DenseStage(iters=8, texture_iters=1, photo_mask="colour", tol=0, weights=DenseWeights(depth=10.0))

    def run(reference):
        params = {k: v.clone() for k, v in start.items()}
        fit_dense(model, params, _batch(scene.K, kp2d), [photo], _opts(stage, 16, 96), reference=reference)
        return params["pose"]

    same = {"global_orient": start["global_orient"], "pose": start["pose"], "keypoints": kp_start}
    assert torch.equal(run(None), run(same))
    other = dict(same, keypoints=kp_start + torch.tensor([0.0, 0.0, 0.01]) * torch.linspace(0, 1, 21)[None, :, None])
    assert not torch.equal(run(None), run(other))
