"""`handfit batch` on a video and `handfit eval --sequence` on the same frames run one path: the
same Follower, evidence, track fit and finish (dense stage and settling), so the same keypoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stand_ins import StandIn

from handfit.detect import Detection


def _by_image(frames: list, truth: list):
    """A MediaPipe stand-in that knows each frame by its pixels (whoever asks, in any order):
    frames[i] (H,W,3) uint8 -> truth[i] = (keypoints_2d, keypoints_3d) as one right hand."""
    keys = [f.tobytes() for f in frames]

    class ByImage(StandIn):
        def detect(self, rgb, mode=None):
            i = keys.index(np.ascontiguousarray(rgb).tobytes())
            kp, kp3 = truth[i]
            box = np.concatenate([kp.min(0) - 10, kp.max(0) + 10])
            return [Detection(side="right", score=0.99, box_xyxy=box, keypoints=kp, keypoints_z=np.zeros(21),
                              world=kp3 - kp3.mean(0), image_size=(rgb.shape[1], rgb.shape[0]))]

    return ByImage


@pytest.mark.slow
def test_batch_and_eval_sequence_give_the_same_keypoints(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from PIL import Image
    from test_batch_video import _synthetic_clip

    from handfit.cli import main
    from handfit.io.media import read_frames

    truth, K = _synthetic_clip(tmp_path / "clip.mp4", n=5)
    frames = [rgb for _, _, rgb in read_frames(tmp_path / "clip.mp4", 1, 0, None)]
    run = tmp_path / "data" / "run0"
    run.mkdir(parents=True)
    for i, (rgb, (kp, kp3)) in enumerate(zip(frames, truth)):   # the decoded frames, losslessly, as a run
        Image.fromarray(rgb).save(run / f"{i:05d}.png")
        doc = {"K": np.asarray(K).tolist(), "hands": [{"side": "right", "keypoints_3d_cam_mm": (kp3 * 1000).tolist(),
                                                       "keypoints_2d": kp.tolist()}]}
        (run / f"{i:05d}.png.gt.json").write_text(json.dumps(doc))
    monkeypatch.setattr("handfit.detect.Detector", _by_image(frames, truth))
    small = ["--kp-iters", "30", "--device", "cpu", "-q"]
    r = CliRunner().invoke(main, ["batch", str(tmp_path / "clip.mp4"), "-o", str(tmp_path / "out"), "--no-gallery",
                                  "--intrinsics", f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}"] + small)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "data"), "--sequence", "-o", str(tmp_path / "ev")] + small)
    assert r.exit_code == 0, r.output
    npz = np.load(tmp_path / "out" / "clip" / "tracks.npz")
    assert int(npz["num_tracks"]) == 1 and npz["track0_frames"].tolist() == [0, 1, 2, 3, 4]
    assert npz["track0_dense"].all()                                  # the dense stage ran on every frame
    pred = json.loads((tmp_path / "ev" / "predictions.json").read_text())["hands"]
    got = np.array([h["sequence_dense"]["keypoints_3d"] for h in pred])
    assert got.shape == (5, 21, 3)
    np.testing.assert_array_equal(got, npz["track0_keypoints_3d"])
    # and the fits are fits: the truth's articulation is near, not copied (depth is the photo's ambiguity)
    gt = np.stack([t[1] for t in truth])
    rel = np.abs((got - got[:, :1]) - (gt - gt[:, :1])).max()
    assert 0 < rel < 0.03, rel
