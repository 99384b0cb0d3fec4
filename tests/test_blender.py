"""Real Blender (bpy 5.0.1) imports each video track's track<t>.glb and poses it as the fit.

Blender is a 1 GB module for Python 3.11 only, so it lives in its own venv
(``make test-blender`` makes ``.venv-blender``) and runs tests/blender_pose.py as a
subprocess on the files this venv's ``handfit batch`` wrote. Skipped when no Python with
bpy is found: ``$HANDFIT_BLENDER_PYTHON``, this interpreter, or ``.venv-blender/bin/python``.

Clips: the dev asl clip's first frames (one right hand) and the same beside its mirror
image (a right and a left hand), every 5th frame. Per track: one armature, one skinned
mesh with its texture, one keyframe per fitted frame, and at three keyframes the mesh
as Blender poses it within 1 mm (mean nearest-vertex distance) of that frame's OBJ.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEV_DATA = Path(os.environ.get("HANDFIT_DEV_DATA", REPO.parent / "shared" / "data" / "dev"))
pytestmark = [pytest.mark.slow, pytest.mark.devdata]
EVERY, END = 5, 15          # frames 0, 5 and 10


def blender_python() -> str | None:
    env = os.environ.get("HANDFIT_BLENDER_PYTHON")
    if env:
        return env
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    venv = REPO / ".venv-blender" / "bin" / "python"
    if venv.is_file() and subprocess.run([str(venv), "-c", "import bpy"], capture_output=True).returncode == 0:
        return str(venv)
    return None


def make_clips(src: Path, out: Path) -> list:
    """The first END frames of src as is, and beside their mirror image (25 fps H.264)."""
    av = pytest.importorskip("av")
    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(END), c.decode(video=0))]
    paths = []
    for name, imgs in (("one", frames), ("two", [np.hstack([f, f[:, ::-1]]) for f in frames])):
        path = out / f"{name}.mp4"
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.height, s.width = imgs[0].shape[:2]
            s.pix_fmt = "yuv420p"
            for img in imgs:
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        paths.append(path)
    return paths


def obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(x) for x in ln.split()[1:4]] for ln in path.read_text().splitlines() if ln.startswith("v ")])


def track_objs(video: Path, t: int) -> list:
    """Track t's per-frame OBJs, in frame order: the hands whose .mtl uses track<t>'s texture."""
    out = []
    for folder in sorted(video.glob("frame_*")):
        for mtl in folder.glob("hand*.mtl"):
            if f"map_Kd ../track{t}_texture.png" in mtl.read_text():
                out.append(mtl.with_suffix(".obj"))
    return out


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    src = DEV_DATA / "tfjs_models" / "asl_hand.25fps.mp4"
    if not src.is_file():
        pytest.skip("dev clip absent")
    py = blender_python()
    if py is None:
        pytest.skip("no Python with bpy (make test-blender installs one in .venv-blender)")
    root = tmp_path_factory.mktemp("blender")
    clips = make_clips(src, root)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "HANDFIT_NO_FSYNC": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    out = root / "out"
    r = subprocess.run([sys.executable, "-m", "handfit.cli", "batch", *map(str, clips), "-o", str(out),
                        "--every", str(EVERY), "--kp-iters", "50", "--dense-iters", "20", "--texture-iters", "10",
                        "-q"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    glbs = sorted(out.glob("*/track*.glb"))
    b = subprocess.run([py, str(REPO / "tests" / "blender_pose.py"), str(root / "blender.npz"), *map(str, glbs)],
                       capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stderr[-3000:]
    return out, glbs, dict(np.load(root / "blender.npz"))


def test_both_clips_give_their_tracks(fitted):
    out, glbs, _ = fitted
    assert [p.relative_to(out).as_posix() for p in glbs] == ["one/track0.glb", "two/track0.glb", "two/track1.glb"]
    sides = {str(np.load(out / "two" / "tracks.npz")[f"track{t}_side"]) for t in (0, 1)}
    assert sides == {"right", "left"}


def test_blender_poses_each_track_as_the_fit(fitted):
    out, glbs, b = fitted
    for i, glb in enumerate(glbs):
        t = int(glb.stem[len("track"):])
        frames = np.load(glb.parent / "tracks.npz")[f"track{t}_frames"]
        assert int(b[f"{i}_armatures"]) == 1 and int(b[f"{i}_skinned"]) == 1, glb
        assert len(b[f"{i}_images"]) == 1, glb                     # the track's texture
        assert len(b[f"{i}_keys"]) == len(frames) == 3, glb        # one keyframe per fitted frame
        # keyframes at the frames' times: Blender frames = seconds x scene fps
        keys = b[f"{i}_keys"]
        assert np.allclose((keys - keys[0]) / (keys[1] - keys[0]), (frames - frames[0]) / (frames[1] - frames[0]))
        objs = track_objs(glb.parent, t)
        assert len(objs) == len(frames)
        from scipy.spatial import cKDTree

        for k, obj in enumerate(objs):
            ref = obj_vertices(obj) * np.array([1.0, -1.0, -1.0])   # camera frame -> glTF frame
            d, _ = cKDTree(ref).query(b[f"{i}_posed"][k])
            assert d.mean() * 1000 <= 1.0, (glb, k, d.mean() * 1000, d.max() * 1000)
            print(f"{glb.parent.name}/{glb.name} key {k}: mean {d.mean() * 1000:.4f} mm, max {d.max() * 1000:.4f} mm")
