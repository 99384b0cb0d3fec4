"""The dense stage's crop scene: each hand's photo crop, its camera and the renderer.

After the keypoint stage each hand is cropped to a ``S×S`` window around its
fitted keypoints with its own intrinsics (:meth:`CropScene.from_photos`).
:class:`CropScene` holds what stays fixed while the dense stage
(handfit/fitting/dense.py) optimises: the crops (the targets), which of their
pixels the image terms may use (inside the photo, on the hand's side of the
wrist), the crop intrinsics, the renderer backend (resolved once) and the
mesh's antialiasing topology. It renders through handfit/render/mesh.py:
:meth:`CropScene.rasterize` once per mesh, :meth:`CropScene.shade` as often
as the texture and light change.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import render as R
from ..camera import crop_image, crop_intrinsics, square_crop, to_crop
from ..render.shading import sh_lights


def ambient_sh(batch: int, device, dtype) -> torch.Tensor:
    """SH coefficients (B,9,3) giving shading 1 in every direction, so that
    rendered colour = texture: the unwrapped photo reproduces itself."""
    return sh_lights(1.0, (), (), batch, device, dtype)


def hand_side_of_wrist(kp: np.ndarray, size: int, slack: float = 0.1) -> np.ndarray:
    """(S,S) bool: pixels on the hand's side of the line through the wrist
    perpendicular to wrist -> middle MCP, moved ``slack`` palm lengths towards
    the arm. The mesh is cut at the wrist while the photo's skin goes on up
    the forearm; without this the silhouette and colour terms drag the wrist
    along the arm.  kp: (21,2) crop pixels.
    """
    d = kp[9] - kp[0]
    palm = max(float(np.linalg.norm(d)), 1e-6)
    d = d / palm
    yy, xx = np.mgrid[0:size, 0:size]
    along = (xx - kp[0, 0]) * d[0] + (yy - kp[0, 1]) * d[1]
    return along >= -slack * palm


class CropScene:
    """Everything fixed during the dense stage for B hands of one model: the
    crops of the photo (targets), their validity masks and intrinsics, the
    renderer backend (resolved once) and the mesh's antialiasing topology."""

    def __init__(self, model, target, valid, K, backend="auto", crops=None, context=None):
        """target (B,S,S,3) in [0,1]; valid (B,S,S) bool, the pixels the image
        terms may use; K (B,3,3) crop intrinsics."""
        dev, dt = target.device, target.dtype
        self.model, self.crops = model, crops
        self.backend = R.pick_backend(backend, target)
        self.faces = model.faces.to(device=dev, dtype=torch.int32)
        self.uv_faces = model.uv_faces.to(device=dev, dtype=torch.int32)
        self.uv_coords = model.uv_coords.to(device=dev, dtype=dt)
        self.topology = R.make_topology(self.faces, self.backend)
        self.context = context  # the rasterizer state (R.make_context), None on the CPU
        self.target, self.valid, self.K = target, valid, K
        self.background = target  # what the render is composited over (DenseStage.background)
        self.res = tuple(target.shape[1:3])

    @classmethod
    def from_photos(cls, model, K_full, photos, kp2d_full, crop_size, crop_scale, device, dtype, backend="auto",
                    context=None):
        """Square crops around each hand's fitted keypoints.

        K_full (B,3,3); photos: B (H,W,3) uint8 arrays; kp2d_full (B,21,2) pixels.
        """
        crops, imgs, valid, Ks = [], [], [], []
        kp = kp2d_full.detach().cpu().numpy()
        for b, rgb in enumerate(photos):
            c = square_crop(np.concatenate([kp[b].min(0), kp[b].max(0)]), scale=crop_scale, out_size=crop_size)
            img, ok = crop_image(rgb, c)
            crops.append(c)
            imgs.append(torch.from_numpy(np.ascontiguousarray(img)).float() / 255)
            valid.append(torch.from_numpy(np.ascontiguousarray(ok)).bool())
            Ks.append(torch.as_tensor(crop_intrinsics(K_full[b].detach().cpu().numpy(), c)))
            valid[-1] &= torch.from_numpy(hand_side_of_wrist(to_crop(kp[b], c), crop_size))
        return cls(model, torch.stack(imgs).to(device=device, dtype=dtype), torch.stack(valid).to(device),
                   torch.stack(Ks).to(device=device, dtype=dtype), backend, crops, context)

    def downsampled(self, factor: int) -> "CropScene":
        """The same scene at 1/``factor`` of the resolution: targets and background
        area-averaged, a pixel valid where all it covers was, K mapped so that pixel
        centres stay exact (u' = (u + 0.5) / f - 0.5). ``factor`` 1: this scene."""
        if factor <= 1:
            return self

        def pool(x):  # (B,S,S,C) -> (B,S/f,S/f,C)
            return F.avg_pool2d(x.permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1).contiguous()

        K = self.K.clone()
        K[:, :2, :2] /= factor
        K[:, :2, 2] = (K[:, :2, 2] + 0.5) / factor - 0.5
        valid = pool(self.valid[..., None].to(self.target.dtype))[..., 0] > 1 - 1e-6
        out = CropScene.__new__(CropScene)
        out.__dict__.update(self.__dict__)
        out.target, out.valid, out.K = pool(self.target), valid, K
        out.background = out.target if self.background is self.target else pool(self.background)
        out.res = tuple(out.target.shape[1:3])
        out.crops = None  # the photo's crop boxes are at the full resolution only
        return out

    def rasterize(self, vertices, points: bool = False) -> R.MeshBuffers:
        """vertices (B,V,3) camera frame -> the mesh's buffers in the crops (:class:`~handfit.render.MeshBuffers`)."""
        return R.rasterize_mesh(vertices, self.faces, self.K, self.res, uv=self.uv_coords, uv_faces=self.uv_faces,
                                points=points, backend=self.backend, topology=self.topology, context=self.context)

    def shade(self, g: R.MeshBuffers, tex, sh, antialias=True) -> dict:
        """Colour the buffers ``g`` with texture (B,T,T,3) and SH light (B,9,3)
        over the background. -> dict of cover (B,S,S) (hard), coverage (B,S,S)
        (antialiased if asked) and rgb (B,S,S,3)."""
        out = R.shade(g, texture=tex, sh=sh, background=self.background, antialias=antialias, layers=False)
        return {"cover": g.cover[..., 0], "coverage": out["coverage"][..., 0], "rgb": out["rgb"]}

    def render(self, vertices, tex, sh, antialias=True):
        """vertices (B,V,3) camera frame -> dict of (B,S,S,·) images (see :meth:`shade`)."""
        return self.shade(self.rasterize(vertices), tex, sh, antialias)
