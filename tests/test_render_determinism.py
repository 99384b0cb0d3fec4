"""The CPU renderer's gradients are bit-identical from run to run on two threads.

torch's backward of advanced indexing (``x[:, faces]``) is an accumulating
``index_put_`` that, with more than one thread and at least 32768 values, adds
with unordered atomics: the vertex gradients' rounding then changed from call
to call and the dense fit drifted apart run to run (docs: NOTES "Determinism").
"""

from __future__ import annotations

import pytest
import torch

from handfit.render import rasterize_mesh, shade

N = 48  # an N x N vertex grid: 2 (N-1)^2 = 4418 faces, so B*F*3*4 >= 32768 values

pytestmark = pytest.mark.slow   # two threads, a large mesh, repeated backward passes


def shuffled_grid(n: int = N):
    """A wavy grid in front of the camera, its faces in a fixed random order so
    that most vertices are shared by faces far apart in the face list (as in the
    hand models), i.e. by the two threads' halves of a parallel loop."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    verts = torch.stack([0.05 * u, 0.05 * v, 0.3 + 0.01 * torch.sin(3 * u) * torch.cos(2 * v)], -1).reshape(-1, 3)
    i = torch.arange(n - 1)[:, None] * n + torch.arange(n - 1)[None, :]
    i = i.reshape(-1)
    faces = torch.cat([torch.stack([i, i + n, i + 1], -1), torch.stack([i + 1, i + n, i + n + 1], -1)])
    faces = faces[torch.randperm(faces.shape[0], generator=g)]
    return verts[None].float(), faces.int()


def vertex_gradient(verts, faces, weights, K, res):
    v = verts.clone().requires_grad_(True)
    buf = rasterize_mesh(v, faces, K, res, backend="cpu")
    out = shade(buf, sh=None, antialias=True)
    img = torch.cat([buf.rast[..., :2], buf.normals, out["rgb"]], -1)
    (grad,) = torch.autograd.grad(img, v, weights)
    return grad


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_cpu_render_gradients_are_bitwise_repeatable_on_two_threads(two_threads):
    verts, faces = shuffled_grid()
    res = (64, 64)
    K = torch.tensor([[200.0, 0, 32], [0, 200.0, 32], [0, 0, 1]])
    weights = torch.randn(1, *res, 8, generator=torch.Generator().manual_seed(1))
    first = vertex_gradient(verts, faces, weights, K, res)
    assert first.abs().sum() > 0
    for _ in range(15):
        again = vertex_gradient(verts, faces, weights, K, res)
        assert torch.equal(again.view(torch.int32), first.view(torch.int32))
    # ... and the same bits as on one thread.
    torch.set_num_threads(1)
    one = vertex_gradient(verts, faces, weights, K, res)
    assert torch.equal(one.view(torch.int32), first.view(torch.int32))
