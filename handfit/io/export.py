"""Writers for fitted hands: OBJ+MTL+PNG, GLB, NPZ and JSON.

All writers take plain numpy arrays for one hand:
  vertices  (V,3) float, camera frame (OpenCV: x right, y down, z forward), metres
  faces     (F,3) int, counter-clockwise seen from outside
  uv_coords (T,2) float in [0,1], nvdiffrast convention (v grows with the image row)
  uv_faces  (F,3) int into uv_coords
  texture   (Ht,Wt,3) uint8, row 0 at the top
OBJ and glTF put the UV origin at the bottom-left, so both get ``vt = (u, 1-v)``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from . import jsonfile


def _to_np(x):
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def write_png(path, image, compress: int | None = None) -> Path:
    """image: (H,W,3|4) uint8, or float in [0,1]. ``compress``: zlib level 0-9 (None: the
    encoder's default; 1 writes a video's per-frame overlays several times faster)."""
    import imageio.v3 as iio

    img = _to_np(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    if compress is None:
        iio.imwrite(path, img)
    else:
        iio.imwrite(path, img, extension=".png", compress_level=int(compress))
    return Path(path)


def write_obj(path, vertices, faces, uv_coords, uv_faces, texture, name: str = "hand",
              texture_file: str | None = None) -> dict:
    """Write ``path`` (.obj) with its ``.mtl`` and ``.png`` texture beside it.

    ``texture_file``: a texture written elsewhere (a path relative to the .mtl, e.g. a
    video track's ``../track0_texture.png``) that the .mtl refers to instead; then no
    .png is written and ``texture`` is not used.
    Returns {"obj", "mtl", "texture"} as Paths (the texture's as given when ``texture_file``).
    """
    path = Path(path)
    mtl_path, png_path = path.with_suffix(".mtl"), path.with_suffix(".png")
    v, f = _to_np(vertices).astype(np.float64), _to_np(faces).astype(np.int64)
    vt, ft = _to_np(uv_coords).astype(np.float64), _to_np(uv_faces).astype(np.int64)
    if texture_file is None:
        write_png(png_path, texture)
    map_kd = png_path.name if texture_file is None else Path(texture_file).as_posix()
    mtl_path.write_text(
        f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {map_kd}\n"
    )
    lines = [f"# handfit hand mesh: {len(v)} vertices, {len(f)} faces, camera frame (OpenCV), metres",
             f"mtllib {mtl_path.name}", f"o {name}"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    lines.append(_uv_and_faces(vt.tobytes(), f.tobytes(), ft.tobytes(), name))
    path.write_text("\n".join(lines) + "\n")
    return {"obj": path, "mtl": mtl_path, "texture": png_path if texture_file is None else Path(texture_file)}


@lru_cache(maxsize=4)
def _uv_and_faces(vt: bytes, f: bytes, ft: bytes, name: str) -> str:
    """The OBJ's vt, usemtl and f lines from the arrays' bytes (float64 (T,2), int64 (F,3) x2):
    the same for every frame of a video, so formatted once (a third of a frame's OBJ time)."""
    vt2 = np.frombuffer(vt, np.float64).reshape(-1, 2)
    f3, ft3 = np.frombuffer(f, np.int64).reshape(-1, 3) + 1, np.frombuffer(ft, np.int64).reshape(-1, 3) + 1
    lines = [f"vt {a:.6f} {1.0 - b:.6f}" for a, b in vt2]
    lines.append(f"usemtl {name}")
    lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f3, ft3)]
    return "\n".join(lines)


def split_uv_seams(faces, uv_faces):
    """Give every distinct (vertex, uv) corner pair its own vertex, as glTF needs.

    faces, uv_faces: (F,3) -> (vertex_index (N,), uv_index (N,), new_faces (F,3))
    """
    f, ft = _to_np(faces).astype(np.int64), _to_np(uv_faces).astype(np.int64)
    pairs = np.stack([f.reshape(-1), ft.reshape(-1)], 1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return uniq[:, 0], uniq[:, 1], inverse.reshape(f.shape)


def write_glb(path, vertices, faces, uv_coords, uv_faces, texture) -> Path:
    """Binary glTF with the texture embedded. glTF is y-up, so the camera
    frame is turned 180° about x (y down -> up, z forward -> backward)."""
    import trimesh
    from PIL import Image

    v = _to_np(vertices).astype(np.float64) * np.array([1.0, -1.0, -1.0])
    vi, ti, new_faces = split_uv_seams(faces, uv_faces)
    uv = _to_np(uv_coords).astype(np.float64)[ti]
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1)
    tex = _to_np(texture)
    if tex.dtype != np.uint8:
        tex = (np.clip(tex, 0, 1) * 255 + 0.5).astype(np.uint8)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex), metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(vertices=v[vi], faces=new_faces, visual=visual, process=False)
    Path(path).write_bytes(mesh.export(file_type="glb"))
    return Path(path)


def write_npz(path, params: dict) -> Path:
    """Parameters as named float32 arrays (names match smplx for MANO)."""
    np.savez(path, **{k: _to_np(v) for k, v in params.items()})
    return Path(path)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.floating, float)):
        return round(float(x), 6)
    if isinstance(x, np.integer):
        return int(x)
    if hasattr(x, "shape") or isinstance(x, np.ndarray):
        return _jsonable(_to_np(x).tolist())
    return x


def to_json(obj, indent: int | None = 2) -> str:
    return jsonfile.dumps(_jsonable(obj), indent=indent)


def write_json(path, obj) -> Path:
    Path(path).write_text(to_json(obj) + "\n")
    return Path(path)
