"""Texture scores (handfit/eval/texture.py): erosion, the per-channel gain, a known texture on
a synthetic hand at two poses, and the pairing of a run's frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from handfit.eval.texture import erode, gain_errors, median_colour, run_scores, texture_scores

S = 160
FOCAL = 380.0


def test_erode_keeps_what_lies_px_inside():
    m = torch.zeros(2, 12, 12, dtype=torch.bool)
    m[0, 2:10, 3:11] = True
    m[1] = True                                                  # the whole image: its border is an edge
    e = erode(m, 2)
    assert e.shape == m.shape and e.dtype == torch.bool
    assert e[0].nonzero().min(0).values.tolist() == [4, 5] and e[0].nonzero().max(0).values.tolist() == [7, 8]
    assert e[1].sum() == 8 * 8 and not e[1, 1].any()
    assert torch.equal(erode(m, 0), m)
    assert not (e & ~m).any()                                    # never grows


def test_gain_errors_forgive_one_gain_per_channel_and_nothing_else():
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(3, 10, 10, 3, generator=gen) * 0.8 + 0.1
    mask = torch.ones(3, 10, 10, dtype=torch.bool)
    gains = torch.tensor([0.5, 0.9, 1.2])
    assert torch.allclose(gain_errors(r, r * gains, mask), torch.zeros(3), atol=1e-6)   # global light: free
    noisy = r * gains + 0.05 * torch.randn(3, 10, 10, 3, generator=gen)
    e = gain_errors(r, noisy, mask)
    assert e.shape == (3,) and (e > 0.02).all() and (e < 0.06).all()
    # a render the photo does not follow scores worse than the right one
    assert (gain_errors(r.flip(1), noisy, mask) > e).all()
    # only the mask counts; an empty mask is NaN
    m2 = mask.clone()
    m2[:, :, 5:] = False
    bad = noisy.clone()
    bad[:, :, 5:] = 0.0
    assert torch.allclose(gain_errors(r, bad, m2), gain_errors(r[:, :, :5], noisy[:, :, :5], mask[:, :, :5]))
    assert torch.isnan(gain_errors(r, noisy, torch.zeros_like(mask))).all()
    # float64 follows
    assert gain_errors(r.double(), noisy.double(), mask).dtype == torch.float64


# -- a synthetic hand with a known texture ------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    from handfit.models import load_model

    return load_model("anny")


def known_texture(size: int = 64) -> np.ndarray:
    """(size,size,3) uint8: a gradient with stripes, every region of the atlas its own colour."""
    t = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(t, t, indexing="ij")
    tex = np.stack([0.15 + 0.7 * u, 0.15 + 0.7 * v, 0.5 + 0.35 * np.sin(2 * math.pi * 3 * u)], -1)
    return (tex * 255 + 0.5).astype(np.uint8)


def posed(model, turn: float, bend: float) -> np.ndarray:
    """(V,3) camera-frame vertices: the hand facing the camera, turned ``turn`` degrees about
    the vertical and its fingers bent by ``bend`` radians, 0.45 m away."""
    from handfit.geometry import axis_angle_to_matrix
    from handfit.train.synth import facing_camera

    p = model.zero_params(1)
    p["pose"] = p["pose"] + bend * (torch.arange(p["pose"].shape[-1]) % 3 == 0).to(p["pose"].dtype)
    with torch.no_grad():
        v = model(**p).vertices[0]
    v = v @ facing_camera(model).to(v.dtype).T
    Ry = axis_angle_to_matrix(torch.tensor([0.0, math.radians(turn), 0.0], dtype=torch.float64)).to(v.dtype)
    return ((v - v.mean(0)) @ Ry.T + torch.tensor([0.0, 0.0, 0.45])).double().numpy()


def photo_of(model, verts: np.ndarray, K: np.ndarray, tex: np.ndarray, light=(0.7, 0.8, 0.9)) -> np.ndarray:
    """(S,S,3) uint8: the unlit textured hand over a grey wall, under a coloured global light."""
    from handfit import render as R

    out = R.render_mesh(torch.as_tensor(verts, dtype=torch.float32)[None], model.faces, torch.as_tensor(K).float(),
                        (S, S), uv=model.uv_coords.float(), uv_faces=model.uv_faces,
                        texture=torch.as_tensor(tex).float()[None] / 255, background=torch.full((1, S, S, 3), 0.4),
                        antialias=False, backend="cpu")
    return (out["rgb"][0].clamp(0, 1).numpy() * np.array(light) * 255 + 0.5).astype(np.uint8)


def frame(model, number: int, turn: float, bend: float, tex: np.ndarray) -> dict:
    K = np.array([[FOCAL, 0, (S - 1) / 2], [0, FOCAL, (S - 1) / 2], [0, 0, 1]])
    v = posed(model, turn, bend)
    return {"number": number, "photo": photo_of(model, v, K, tex), "K": K, "vertices": v,
            "faces": model.faces.numpy(), "uv": model.uv_coords.double().numpy(), "uv_faces": model.uv_faces.numpy(),
            "texture": tex}


def test_a_known_texture_predicts_the_hand_at_another_pose(model):
    """The true texture rendered on a second pose scores below 0.01 against that photo (under
    another light), well below one flat colour; the texture scrambled scores worse than flat."""
    tex = known_texture()
    a, b = frame(model, 0, 0.0, 0.0, tex), frame(model, 4, 35.0, 0.25, tex)
    scrambled = tex.reshape(-1, 3)[np.random.default_rng(0).permutation(tex.shape[0] * tex.shape[1])]
    scores, flat = texture_scores(b["photo"], b["K"], b["vertices"], b["faces"], b["uv"], b["uv_faces"],
                                  [a["texture"], scrambled.reshape(tex.shape)])
    assert scores.shape == (2,)
    assert scores[0] < 0.01, scores
    alone, flat_alone = texture_scores(b["photo"], b["K"], b["vertices"], b["faces"], b["uv"], b["uv_faces"],
                                       [a["texture"]])
    assert alone[0] == scores[0] and flat_alone == flat          # whatever else is scored beside it
    assert flat > 5 * scores[0] and scores[1] > flat, (scores, flat)
    # pairs: frame 0's texture on frame 4 and back; gap 2 finds none
    rows = run_scores([a, b], gap=4)
    assert [len(r["pairs"]) for r in rows] == [1, 1] and rows[0]["tex_novel"] < 0.01
    assert rows[0]["tex_seen"] < 0.01 and np.isnan(rows[0]["tex_loo"])
    assert all(np.isnan(r["tex_novel"]) for r in run_scores([a, b], gap=2))


def test_run_scores_pair_frames_by_their_source_numbers(model):
    tex = known_texture()
    flat_tex = np.broadcast_to(np.uint8([200, 150, 120]), tex.shape).copy()
    frames = [frame(model, n, 10.0 * i, 0.1 * i, tex) for i, n in enumerate((10, 12, 14, 16))]
    frames[1] = None                                             # not fitted
    frames[2]["texture"] = flat_tex                              # a flat texture: scores as flat
    frames[3]["loo"] = tex
    rows = run_scores(frames, gap=4)
    assert len(rows) == 4 and rows[1]["pairs"] == [] and np.isnan(rows[1]["tex_seen"])
    assert len(rows[0]["pairs"]) == 1 and len(rows[2]["pairs"]) == 1    # 10 <-> 14 (6 and 18 absent)
    assert rows[0]["targets"] == [14] and rows[2]["targets"] == [10] and rows[1]["targets"] == []
    assert len(rows[3]["pairs"]) == 0                                    # 12 not fitted, 20 absent
    assert rows[2]["tex_novel"] == pytest.approx(rows[2]["tex_novel_flat"], rel=1e-4)   # flat on frame 10
    assert rows[2]["tex_seen"] == pytest.approx(rows[2]["tex_seen_flat"], rel=1e-4)
    assert rows[3]["tex_loo"] < 0.01 and rows[3]["tex_loo_flat"] == pytest.approx(rows[3]["tex_seen_flat"])
    # a hand behind the camera gives NaN, not an error
    away = dict(frames[0], vertices=frames[0]["vertices"] * np.array([1, 1, -1]))
    s, flat = texture_scores(away["photo"], away["K"], away["vertices"], away["faces"], away["uv"],
                             away["uv_faces"], [tex])
    assert np.isnan(s).all() and np.isnan(flat)


def test_median_colour_reads_the_charts_only(model):
    tex = np.zeros((64, 64, 3), np.uint8)                         # black outside the charts
    uv, uvf = model.uv_coords.double().numpy(), model.uv_faces.numpy()
    inside = np.zeros((64, 64), bool)
    c = np.floor(uv * 64).astype(int).clip(0, 63)
    inside[c[:, 1], c[:, 0]] = True
    tex[inside] = (40, 120, 200)
    tex[~inside] = (0, 0, 0)
    got = median_colour(np.full((64, 64, 3), 90, np.uint8), uv, uvf)
    assert np.allclose(got, 90 / 255)
    assert median_colour(tex, uv, uvf).max() > 0                    # not the black outside


def test_texture_summary_and_table():
    from handfit.eval.report import texture_table
    from handfit.eval.sequence import texture_summary

    rows = [{"tex_seen": 0.02, "tex_loo": 0.05, "tex_loo_flat": 0.1, "pairs": [(0.06, 0.1), (0.12, 0.1)]},
            {"tex_seen": float("nan"), "tex_loo": float("nan"), "tex_loo_flat": float("nan"), "pairs": []},
            {"tex_seen": 0.04, "tex_loo": 0.07, "tex_loo_flat": 0.1, "pairs": [(0.03, 0.1)]},
            {"tex_seen": float("nan"), "tex_loo": float("nan"), "tex_loo_flat": float("nan"),
             "pairs": [(0.1 + 1e-9, 0.1)]}]                                # a tie (a flat texture): no loss
    s = texture_summary(rows)
    assert s["tex_seen"] == pytest.approx(0.03) and s["tex_pairs"] == 4
    assert s["tex_novel"] == pytest.approx(0.31 / 4) and s["tex_flat"] == pytest.approx(0.1)
    assert s["tex_novel_vs_flat"] == pytest.approx(0.775) and s["tex_novel_loses"] == pytest.approx(1 / 4)
    assert s["tex_loo"] == pytest.approx(0.06) and s["tex_loo_vs_flat"] == pytest.approx(0.6)
    assert s["tex_loo_loses"] == 0.0
    none = texture_summary([rows[1]])
    assert none["tex_pairs"] == 0 and np.isnan(none["tex_novel"]) and "tex_loo" not in none
    table = texture_table({"dense": s, "keypoint": {"pa_mpjpe_mm": 1.0}})
    assert "| dense | 0.0300 | 0.0775 | 0.1000 | 0.775 | 25.0% |" in table and "keypoint" not in table
