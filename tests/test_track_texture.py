"""One texture per video track (handfit/texture/track.py, pipeline.finish_track) on
synthetic renders of a hand with a known, non-uniform UV texture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handfit import render as R
from handfit.models import load_model
from handfit.texture.track import accumulate, fill_track, frame_observation, mask_weight, merge

S = 160      # image side
T = 64       # texture side
N = 7        # frames: 0..180 degrees about the vertical axis, 30 degrees apart
FOCAL = 380.0


@pytest.fixture(scope="module")
def model():
    return load_model("anny")


def true_texture(size: int = T) -> torch.Tensor:
    """(size,size,3): a colour gradient over the atlas with stripes along u, so every
    region of the hand has its own colour."""
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(t, t, indexing="ij")
    stripes = 0.5 + 0.35 * torch.sin(2 * math.pi * 3 * u)
    return torch.stack([0.15 + 0.7 * u, 0.15 + 0.7 * v, stripes], -1)


def turning_hand(model, n: int = N, degrees: float = 180.0, keypoints: bool = False):
    """The rest hand turned about the camera's vertical axis through its centre, in n
    frames from 0 to ``degrees``, 0.45 m away. -> vertices (n,V,3), K (3,3)
    (and keypoints (n,21,3) with ``keypoints``)"""
    from handfit.geometry import axis_angle_to_matrix
    from handfit.train.synth import facing_camera

    with torch.no_grad():
        out = model(**model.zero_params(1))
    R0 = facing_camera(model).to(out.vertices.dtype)
    v, k = out.vertices[0] @ R0.T, out.keypoints[0] @ R0.T
    c = v.mean(0)
    frames, kps = [], []
    for i in range(n):
        a = math.radians(degrees * i / max(n - 1, 1))
        Ry = axis_angle_to_matrix(torch.tensor([0.0, a, 0.0], dtype=torch.float64)).to(v.dtype)
        frames.append((v - c) @ Ry.T + torch.tensor([0.0, 0.0, 0.45]))
        kps.append((k - c) @ Ry.T + torch.tensor([0.0, 0.0, 0.45]))
    K = torch.tensor([[FOCAL, 0, (S - 1) / 2], [0, FOCAL, (S - 1) / 2], [0, 0, 1]])
    return (torch.stack(frames), K) + ((torch.stack(kps),) if keypoints else ())


def buffers(model, verts, K):
    return R.rasterize_mesh(verts, model.faces, K[None].expand(len(verts), -1, -1), (S, S),
                            uv=model.uv_coords.float(), uv_faces=model.uv_faces, points=True, backend="cpu")


def photos(model, verts, K, tex):
    """Unlit renders of the textured hand over grey. -> (images (n,S,S,3), buffers)"""
    g = buffers(model, verts, K)
    grey = torch.full((len(verts), S, S, 3), 0.4)
    img = R.shade(g, texture=tex[None], background=grey, antialias=False)["rgb"]
    return img, g


def atlas(model, size: int = T) -> torch.Tensor:
    """(size,size) bool: texels inside the UV charts."""
    v = model(**model.zero_params(1)).vertices[0].detach()
    _, cov = R.bake_uv(v, model.faces, model.uv_coords.float(), model.uv_faces, size, backend="cpu")
    return cov[0, ..., 0] > 0


def test_accumulate_is_a_weighted_mean_and_merges_in_any_order():
    gen = torch.Generator().manual_seed(0)
    c = torch.rand(5, 8, 8, 3, generator=gen)
    w = torch.rand(5, 8, 8, 1, generator=gen) * (torch.rand(5, 8, 8, 1, generator=gen) > 0.3)
    w[:, 0, 0] = 0                                             # a texel no frame saw
    mean, total = accumulate(c, w)
    assert mean.shape == (8, 8, 3) and total.shape == (8, 8, 1)
    want = (c * w).sum(0) / w.sum(0).clamp(min=1e-8)
    seen = w.sum(0)[..., 0] > 0
    assert torch.allclose(mean[seen], want[seen], atol=1e-6) and torch.allclose(total, w.sum(0))
    assert (mean[0, 0] == 0).all() and total[0, 0] == 0
    # Frame by frame, in chunks, or reversed: the same texture (what a streamed video relies on).
    acc = None
    for f in (4, 3, 2, 1, 0):
        acc = merge(acc, c[f:f + 1], w[f:f + 1])
    assert torch.allclose(acc[0], mean, atol=1e-6) and torch.allclose(acc[1], total, atol=1e-6)
    acc = merge(merge(None, c[:2], w[:2]), c[2:], w[2:])
    assert torch.allclose(acc[0], mean, atol=1e-6)
    # A frame with twice the weight counts twice.
    two = accumulate(c[:2], torch.stack([2 * torch.ones(8, 8, 1), torch.ones(8, 8, 1)]))[0]
    assert torch.allclose(two, (2 * c[0] + c[1]) / 3, atol=1e-6)


def test_mask_weight_drops_unsure_and_background_pixels():
    p = torch.tensor([[[0.0, 0.3, 0.5, 0.75, 1.0]]])
    assert torch.allclose(mask_weight(p), torch.tensor([[[0.0, 0.0, 0.0, 0.5, 1.0]]]))


def test_one_frame_round_trip_and_facing(model):
    """One frame in -> its own colours out where it saw the hand; a surface turned away
    from the camera gives less weight than one facing it; masked-out pixels give nothing."""
    tex = true_texture()
    verts, K = turning_hand(model, n=3, degrees=60.0)            # 0, 30, 60 degrees
    img, g = photos(model, verts, K, tex)
    colour, weight = frame_observation(img, g, size=T)
    assert colour.shape == (3, T, T, 3) and weight.shape == (3, T, T, 1)
    seen = weight[0, ..., 0] >= 1.0
    assert seen.sum() > 200
    out = fill_track(colour[0], weight[0])
    assert out.shape == (T, T, 3)
    assert torch.allclose(out[seen], colour[0][seen], atol=1e-5)   # seen texels keep their colour
    assert (out[seen] - tex[seen]).abs().mean() < 0.03            # ... which is the true one
    # Facing: the palm turned 60 degrees away shows less, with less weight per texel.
    assert weight[2].sum() < weight[0].sum()
    both = (weight[0, ..., 0] > 0) & (weight[2, ..., 0] > 0)
    assert weight[2][both].mean() < weight[0][both].mean()
    # A "sleeve": the left half of the photo painted red and called background by the mask.
    red = img.clone()
    red[:, :, : S // 2] = torch.tensor([1.0, 0.0, 0.0])
    hand_p = torch.ones(3, S, S)
    hand_p[:, :, : S // 2] = 0.1
    c2, w2 = frame_observation(red, g, hand_p=hand_p, size=T)
    kept = w2[0, ..., 0] > 0
    assert kept.any() and kept.sum() < (weight[0, ..., 0] > 0).sum()
    assert (c2[0][kept] - torch.tensor([1.0, 0.0, 0.0])).abs().sum(-1).min() > 0.3   # no red got in


def test_track_texture_sees_what_the_first_frame_cannot(model):
    """A hand turning 180 degrees over 7 frames: the texture accumulated from all frames
    (true meshes) has a lower error than the first frame's own texture on the texels the
    first frame cannot see."""
    tex = true_texture()
    verts, K = turning_hand(model)
    img, g = photos(model, verts, K, tex)
    colour, weight = frame_observation(img, g, size=T)
    first = fill_track(colour[0], weight[0])
    track = fill_track(*accumulate(colour, weight))
    _, total = accumulate(colour, weight)
    charts = atlas(model)
    hidden = charts & (weight[0, ..., 0] == 0) & (total[..., 0] > 0)     # unseen by frame 0, seen later
    assert hidden.sum() > 0.2 * charts.sum()
    err_first = (first[hidden] - tex[hidden]).abs().mean()
    err_track = (track[hidden] - tex[hidden]).abs().mean()
    assert err_track < 0.5 * err_first, (float(err_track), float(err_first))
    seen0 = weight[0, ..., 0] >= 1.0                                     # and frame 0's part stays right
    assert (track[seen0] - tex[seen0]).abs().mean() < 0.05


def _items(kps, K, img):
    """HandItems of the rendered frames, their true keypoints (n,21,3) as the detections."""
    from handfit.camera import project
    from handfit.detect import Detection
    from handfit.fitting.pipeline import HandItem

    items = []
    for f in range(len(kps)):
        kp = project(kps[f][None], K[None])[0].double().numpy()
        det = Detection(side="right", score=0.99, box_xyxy=np.concatenate([kp.min(0) - 8, kp.max(0) + 8]),
                        keypoints=kp, keypoints_z=np.zeros(21), world=(kps[f] - kps[f][0]).double().numpy(),
                        image_size=(S, S))
        items.append(HandItem(K.double().numpy(), det, (img[f].numpy() * 255 + 0.5).astype(np.uint8)))
    return items


@pytest.mark.slow
def test_finish_track_renders_one_texture_for_every_frame(model, res):
    """The whole of finish_track on the turning hand (small iteration caps): one texture
    array shared by every frame, each frame's dense losses and metrics, and on what the
    first frame cannot see a lower error than that frame's own photo texture; its
    leave-one-out textures those of the other frames' observations; with the dense stage
    off it is finish (flat texture)."""
    from handfit.fitting.pipeline import finish, finish_track, fit_track, observe_frames, track_texture
    from handfit.options import FitOptions

    tex = true_texture()
    verts, K, kps = turning_hand(model, n=4, degrees=90.0, keypoints=True)
    img, _ = photos(model, verts, K, tex)
    items = _items(kps, K, img)
    opts = FitOptions.from_values({"device": "cpu", "keypoint.iters": 30, "dense.iters": 4, "crop_size": 96,
                                   "texture_size": T, "side_check_below": 0.0, "track.warm_iters": 10,
                                   "track.smooth": 0.0})
    fit = fit_track(items, opts, res)
    out = finish_track(fit, opts, res)
    assert len(out) == 4
    assert all(h.texture is out[0].texture for h in out) and out[0].texture.shape == (T, T, 3)
    assert out[0].texture.dtype == np.uint8 and out[0].texture.std(axis=(0, 1)).max() > 10   # not flat
    for h in out:
        assert "dense" in h.losses and h.metrics["texture_iters"] == 0 and h.metrics["dense_iters"] >= 1
        assert np.isfinite(h.metrics["photometric_after"]) and h.seconds > 0
    # Against frame 0's own photo texture (finish), on what frame 0 cannot see.
    own = finish(fit_track(items[:1], opts, res), opts, res)[0].texture
    _, g = photos(model, verts, K, tex)
    colour, weight = frame_observation(img, g, size=T)
    _, total = accumulate(colour, weight)
    hidden = atlas(model) & (weight[0, ..., 0] == 0) & (total[..., 0] > 0)
    err = lambda t: float((torch.from_numpy(t).float()[hidden] / 255 - tex[hidden]).abs().mean())  # noqa: E731
    assert hidden.sum() > 100 and err(out[0].texture) < 0.7 * err(own), (err(out[0].texture), err(own))
    # Leave one out (handfit eval): the same results, and per frame the texture of the others alone.
    fit2 = fit_track(items, opts, res)
    obs = observe_frames(fit2.select(list(range(4))), opts, res)
    out2, loo = finish_track(fit2, opts, res, leave_one_out=True)
    assert all(np.array_equal(a.vertices, b.vertices) for a, b in zip(out, out2)) and len(loo) == 4
    for b in range(4):
        keep = [f for f in range(4) if f != b]
        want = track_texture(accumulate(obs[0][keep], obs[1][keep]), opts, res)
        assert np.abs(loo[b].astype(int) - want.astype(int)).max() <= 1 and not np.array_equal(loo[b], out[0].texture)
    opts.dense.enabled = False
    plain = finish_track(fit_track(items, opts, res), opts, res)
    again = finish(fit_track(items, opts, res), opts, res)
    for a, b in zip(plain, again):
        assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.texture, b.texture)
        assert "dense" not in a.losses


@pytest.mark.slow
def test_finish_track_chunks_side_by_side_give_the_same_numbers(model, res, monkeypatch):
    """A track's chunks observed and fitted on 2 threads (handfit.parallel) or one after
    another give bit-identical textures, meshes and losses."""
    from handfit.fitting.pipeline import finish_track, fit_track
    from handfit.options import FitOptions

    verts, K, kps = turning_hand(model, n=5, degrees=60.0, keypoints=True)
    img, _ = photos(model, verts, K, true_texture())
    items = _items(kps, K, img)
    opts = FitOptions.from_values({"device": "cpu", "keypoint.iters": 20, "crop_size": 96, "texture_size": T,
                                   "side_check_below": 0.0, "track.warm_iters": 8, "track.chunk": 2,
                                   "track.dense_iters": 3, "track.settle_iters": 5})
    fit = fit_track(items, opts, res)
    outs = []
    for threads in ("1", "2"):
        monkeypatch.setenv("HANDFIT_THREADS", threads)
        outs.append(finish_track(fit.select(list(range(5))), opts, res))
    for a, b in zip(*outs):
        assert np.array_equal(a.texture, b.texture) and np.array_equal(a.vertices, b.vertices)
        assert a.losses["dense"] == b.losses["dense"]


def test_meshes_refer_to_a_shared_texture(tmp_path):
    """A frame's OBJ can point at its track's texture instead of a copy of its own."""
    from handfit.io.export import write_obj

    v = np.array([[0, 0, 1.0], [1, 0, 1], [0, 1, 1]])
    f = np.array([[0, 1, 2]])
    uv = np.array([[0, 0], [1, 0], [0, 1.0]])
    tex = np.zeros((4, 4, 3), np.uint8)
    (tmp_path / "a").mkdir()
    own = write_obj(tmp_path / "a" / "hand0_right.obj", v, f, uv, f, tex)
    assert own["texture"].is_file() and "map_Kd hand0_right.png" in own["mtl"].read_text()
    (tmp_path / "b").mkdir()
    shared = write_obj(tmp_path / "b" / "hand0_right.obj", v, f, uv, f, tex, texture_file="../track0_texture.png")
    assert "map_Kd ../track0_texture.png" in shared["mtl"].read_text()
    assert shared["texture"].as_posix() == "../track0_texture.png" and not (tmp_path / "b" / "hand0_right.png").exists()
    assert "mtllib hand0_right.mtl" in shared["obj"].read_text()
