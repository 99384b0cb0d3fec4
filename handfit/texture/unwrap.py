"""Photo -> UV texture.

``unwrap`` turns the rendered-covered pixels of a photo into sparse samples
(uv, rgb, weight); ``splat`` accumulates them bilinearly into a ``T×T``
texture and its confidence; ``fill_push_pull`` fills the texels no pixel saw
from coarser levels of the same map, blended towards a prior colour, so the
unseen back of the hand gets a smooth skin tone rather than black.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class UVSamples:
    """N sparse observations of the texture, across a batch of B hands."""

    batch: torch.Tensor    # (N,) long, which hand
    uv: torch.Tensor       # (N,2) in [0,1], nvdiffrast convention
    rgb: torch.Tensor      # (N,3) photo colour in [0,1]
    cos: torch.Tensor      # (N,) cosine between surface normal and view ray (visibility/grazing)
    weight: torch.Tensor   # (N,) final splat weight


def unwrap(photo: torch.Tensor, rast: torch.Tensor, uv: torch.Tensor, normals: torch.Tensor,
           points: torch.Tensor, valid: torch.Tensor | None = None, min_cos: float = 0.3,
           erode: int = 1, colour_weight: torch.Tensor | None = None) -> UVSamples:
    """Visible photo pixels as UV-RGB samples.

    photo:   (B,H,W,3) target image in [0,1]
    rast:    (B,H,W,4) rasterizer output (triangle id in channel 3; 0 = background)
    uv:      (B,H,W,2) interpolated texture coordinates
    normals: (B,H,W,3) interpolated camera-frame normals (need not be unit)
    points:  (B,H,W,3) interpolated camera-frame positions
    valid:   (B,H,W) bool, pixels that lie inside the original photo (crop padding is not)
    min_cos: grazing views below this cosine are dropped (their colours smear)
    erode:   pixels within this many pixels of the silhouette are dropped: edge
             pixels mix hand and background colours
    colour_weight: (B,H,W) optional extra weight in [0,1] (e.g. skin likelihood) to
             keep occluders and background out
    """
    covered = rast[..., 3] > 0  # (B,H,W)
    if erode > 0:
        k = 2 * erode + 1
        covered = -F.max_pool2d(-covered.float()[:, None], k, 1, erode)[:, 0] > 0.5
    n = F.normalize(normals, dim=-1)
    view = F.normalize(-points, dim=-1)
    cos = (n * view).sum(-1)  # (B,H,W)
    keep = covered & (cos > min_cos)
    if valid is not None:
        keep = keep & valid
    b, y, x = keep.nonzero(as_tuple=True)
    c = cos[b, y, x]
    w = (c - min_cos) / (1 - min_cos)  # 0 at the grazing limit, 1 head-on
    if colour_weight is not None:
        w = w * colour_weight[b, y, x]
    return UVSamples(batch=b, uv=uv[b, y, x], rgb=photo[b, y, x], cos=c, weight=w)


def splat(samples: UVSamples, batch_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear splat of samples into texture space.

    -> texture (B,T,T,3) weighted mean colour (0 where unseen), confidence (B,T,T,1) summed weight
    """
    dev, dt = samples.rgb.device, samples.rgb.dtype
    T = size
    acc = torch.zeros(batch_size * T * T, 4, device=dev, dtype=dt)
    if samples.batch.numel():
        # texel centre i sits at uv = (i+0.5)/T
        x = samples.uv[:, 0] * T - 0.5
        y = samples.uv[:, 1] * T - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        x0, y0 = x0.long(), y0.long()
        val = torch.cat([samples.rgb * samples.weight[:, None], samples.weight[:, None]], 1)  # (N,4)
        for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = (x0 + dx).clamp(0, T - 1), (y0 + dy).clamp(0, T - 1)
            idx = (samples.batch * T + yi) * T + xi
            acc.index_add_(0, idx, val * wgt[:, None])
    acc = acc.view(batch_size, T, T, 4)
    conf = acc[..., 3:]
    tex = acc[..., :3] / conf.clamp(min=1e-8)
    return tex * (conf > 0), conf


def fill_push_pull(tex: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor | None = None,
                   saturate: float = 1.0) -> torch.Tensor:
    """Fill low-confidence texels from coarser mip levels (push-pull), then
    blend the coarsest levels towards ``prior``.

    tex: (B,T,T,3), conf: (B,T,T,1), prior: (B,3) colour or None -> (B,T,T,3)
    ``saturate``: confidence at which a texel is taken as fully observed.
    """
    c = (conf / saturate).clamp(max=1.0).permute(0, 3, 1, 2)  # (B,1,T,T)
    t = tex.permute(0, 3, 1, 2) * c                            # premultiplied
    levels = [(t, c)]
    while levels[-1][0].shape[-1] > 1:
        t, c = levels[-1]
        t2, c2 = F.avg_pool2d(t, 2, ceil_mode=True) * 4, F.avg_pool2d(c, 2, ceil_mode=True) * 4
        norm = c2.clamp(min=1.0)  # keep premultiplied colour with conf <= 1
        levels.append((t2 / norm, (c2 / norm).clamp(max=1.0)))
    t, c = levels[-1]
    col = t / c.clamp(min=1e-8)
    if prior is not None:
        col = torch.where(c > 0, col, prior[:, :, None, None].expand_as(col))
        col = c * col + (1 - c) * prior[:, :, None, None]
    for t, c in reversed(levels[:-1]):
        up = F.interpolate(col, size=t.shape[-2:], mode="bilinear", align_corners=False)
        col = t + (1 - c) * up  # observed texels keep their colour, holes take the coarse one
    return col.permute(0, 2, 3, 1).clamp(0, 1)
