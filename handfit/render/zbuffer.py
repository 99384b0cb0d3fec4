"""Numba kernels of the CPU backend. They decide *which* triangle covers a
pixel and *which* silhouette edge crosses between two pixels; they compute no
gradients. The differentiable quantities are recomputed in torch
(:mod:`handfit.render.cpu`) for the few pixels these kernels select.

Coordinates
-----------
Pixel ``(x, y)`` (column, row) has its centre at NDC
``((2x+1)/W - 1, (2y+1)/H - 1)``, as in nvdiffrast: row 0 is at NDC y = -1.

Triangles in front of the camera (all w > 0) are tested with exact integer
edge functions of their vertices snapped to 1/16 pixel, as GPU rasterizers
(nvdiffrast's included) do, so both backends pick the same triangle per
pixel. Triangles that cross the camera plane (some w <= 0) use 2D homogeneous
rasterization instead: with the clip-space columns ``c_i = (X_i, Y_i, W_i)``
and a pixel ``p = (x_ndc, y_ndc, 1)``, the numbers ``e_i = (c_j x c_k) . p``
((i,j,k) cyclic) are proportional to the perspective-correct barycentrics, and
the pixel lies on the triangle, in front of the camera, when all ``e_i`` have
the sign of ``det(c_0, c_1, c_2)``. That needs no clipping at w = 0. In both
cases the near/far planes are applied per pixel as ``-1 <= z/w <= 1``, which
is what clipping the triangle against them would give.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# Rows per parallel job. Each job walks the whole triangle list once and keeps
# only triangles whose box meets its rows; 16 rows keeps that walk cheap while
# leaving enough jobs to balance the threads.
BAND_ROWS = 16

# A crossing found up to 1/16 pixel outside the segment between two pixel
# centres still counts (floating-point slack, as in nvdiffrast).
AA_EPS = 0.0625

# Snapped vertex coordinates (1/16 px units) must stay below this for the
# integer edge functions to be exact in float64; farther-out triangles use
# the homogeneous float path.
SNAP_LIMIT = 2.0 ** 22


@njit(cache=True, parallel=True)
def setup_triangles(pos, tri, height, width):
    """Per (batch, triangle) screen-space set-up.

    pos: (B,V,4) float64 clip coordinates; tri: (F,3) int32/int64.
    Returns planes (B,F,4,3) -- three edge functions and z/w, each as
    (a, b, c) with value ``a*x + b*y + c`` at pixel index (x, y), edge
    functions signed so the inside is ``>= 0`` (snapped integer ones, or
    homogeneous ones for triangles crossing w = 0) -- and boxes (B,F,4) int32
    (x0, x1, y0, y1), inclusive; ``x1 < x0`` marks a culled triangle.
    """
    nb = pos.shape[0]
    nf = tri.shape[0]
    planes = np.zeros((nb, nf, 4, 3))
    boxes = np.empty((nb, nf, 4), np.int32)
    sx = 2.0 / width
    sy = 2.0 / height
    ox = 1.0 / width - 1.0
    oy = 1.0 / height - 1.0
    for job in prange(nb * nf):
        b = job // nf
        f = job % nf
        boxes[b, f, 0] = 0
        boxes[b, f, 1] = -1
        boxes[b, f, 2] = 0
        boxes[b, f, 3] = -1
        i0 = tri[f, 0]
        i1 = tri[f, 1]
        i2 = tri[f, 2]
        X0, Y0, Z0, W0 = pos[b, i0, 0], pos[b, i0, 1], pos[b, i0, 2], pos[b, i0, 3]
        X1, Y1, Z1, W1 = pos[b, i1, 0], pos[b, i1, 1], pos[b, i1, 2], pos[b, i1, 3]
        X2, Y2, Z2, W2 = pos[b, i2, 0], pos[b, i2, 1], pos[b, i2, 2], pos[b, i2, 3]
        # Frustum culling: a triangle entirely outside one clip plane is invisible.
        if (X0 > W0 and X1 > W1 and X2 > W2) or (X0 < -W0 and X1 < -W1 and X2 < -W2):
            continue
        if (Y0 > W0 and Y1 > W1 and Y2 > W2) or (Y0 < -W0 and Y1 < -W1 and Y2 < -W2):
            continue
        if (Z0 > W0 and Z1 > W1 and Z2 > W2) or (Z0 < -W0 and Z1 < -W1 and Z2 < -W2):
            continue
        if W0 <= 0.0 and W1 <= 0.0 and W2 <= 0.0:
            continue
        # n_k = c_i x c_j for (k, i, j) cyclic; e_k = n_k . (x_ndc, y_ndc, 1).
        n0x = Y1 * W2 - W1 * Y2
        n0y = W1 * X2 - X1 * W2
        n0w = X1 * Y2 - Y1 * X2
        n1x = Y2 * W0 - W2 * Y0
        n1y = W2 * X0 - X2 * W0
        n1w = X2 * Y0 - Y2 * X0
        n2x = Y0 * W1 - W0 * Y1
        n2y = W0 * X1 - X0 * W1
        n2w = X0 * Y1 - Y0 * X1
        det = X0 * n0x + Y0 * n0y + W0 * n0w
        if not (det > 0.0 or det < 0.0):  # zero area (or NaN): never covers a pixel
            continue
        sg = 1.0 if det > 0.0 else -1.0
        planes[b, f, 0, 0] = sg * n0x * sx
        planes[b, f, 0, 1] = sg * n0y * sy
        planes[b, f, 0, 2] = sg * (n0x * ox + n0y * oy + n0w)
        planes[b, f, 1, 0] = sg * n1x * sx
        planes[b, f, 1, 1] = sg * n1y * sy
        planes[b, f, 1, 2] = sg * (n1x * ox + n1y * oy + n1w)
        planes[b, f, 2, 0] = sg * n2x * sx
        planes[b, f, 2, 1] = sg * n2y * sy
        planes[b, f, 2, 2] = sg * (n2x * ox + n2y * oy + n2w)
        # z/w = sum_k e_k Z_k / det is affine in screen space.
        dx = (Z0 * n0x + Z1 * n1x + Z2 * n2x) / det
        dy = (Z0 * n0y + Z1 * n1y + Z2 * n2y) / det
        dw = (Z0 * n0w + Z1 * n1w + Z2 * n2w) / det
        planes[b, f, 3, 0] = dx * sx
        planes[b, f, 3, 1] = dy * sy
        planes[b, f, 3, 2] = dx * ox + dy * oy + dw
        x0, x1, y0, y1 = 0, width - 1, 0, height - 1
        if W0 > 0.0 and W1 > 0.0 and W2 > 0.0:
            # Snap the projected vertices to 1/16 pixel, as GPU rasterizers
            # (nvdiffrast's CudaRaster included) do, so both backends decide
            # coverage alike. Units: 1/16 px from the image centre, computed in
            # float32 and rounded half-to-even; pixel centres fall on the grid.
            qx = np.float32(8 * width)
            qy = np.float32(8 * height)
            r0 = np.float32(1.0) / np.float32(W0)
            r1 = np.float32(1.0) / np.float32(W1)
            r2 = np.float32(1.0) / np.float32(W2)
            ax = float(np.rint(np.float32(np.float32(X0) * r0) * qx))
            bx = float(np.rint(np.float32(np.float32(X1) * r1) * qx))
            cx = float(np.rint(np.float32(np.float32(X2) * r2) * qx))
            ay = float(np.rint(np.float32(np.float32(Y0) * r0) * qy))
            by = float(np.rint(np.float32(np.float32(Y1) * r1) * qy))
            cy = float(np.rint(np.float32(np.float32(Y2) * r2) * qy))
            if max(abs(ax), abs(bx), abs(cx), abs(ay), abs(by), abs(cy)) < SNAP_LIMIT:
                area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)  # exact: small integers
                if area == 0.0:
                    continue  # collapsed by snapping: covers nothing (as on the GPU)
                sg = 1.0 if area > 0.0 else -1.0
                # Pixel (x, y) sits at (16x + cx0, 16y + cy0) in snapped units.
                cx0 = 8.0 - 8.0 * width
                cy0 = 8.0 - 8.0 * height
                vx = (ax, bx, cx)
                vy = (ay, by, cy)
                for k in range(3):
                    sx0, sy0 = vx[(k + 1) % 3], vy[(k + 1) % 3]
                    ex = vx[(k + 2) % 3] - sx0
                    ey = vy[(k + 2) % 3] - sy0
                    planes[b, f, k, 0] = -sg * 16.0 * ey
                    planes[b, f, k, 1] = sg * 16.0 * ex
                    planes[b, f, k, 2] = sg * (ex * (cy0 - sy0) - ey * (cx0 - sx0))
                lo = (min(ax, bx, cx) - cx0) / 16.0
                hi = (max(ax, bx, cx) - cx0) / 16.0
                x0 = max(int(np.ceil(lo)), 0)
                x1 = min(int(np.floor(hi)), width - 1)
                lo = (min(ay, by, cy) - cy0) / 16.0
                hi = (max(ay, by, cy) - cy0) / 16.0
                y0 = max(int(np.ceil(lo)), 0)
                y1 = min(int(np.floor(hi)), height - 1)
            else:
                # Nearly at w = 0 (huge projections): keep the homogeneous
                # edge functions but bound the scan by the projection.
                hx = 0.5 * width
                hy = 0.5 * height
                px0 = (X0 / W0 + 1.0) * hx - 0.5
                px1 = (X1 / W1 + 1.0) * hx - 0.5
                px2 = (X2 / W2 + 1.0) * hx - 0.5
                py0 = (Y0 / W0 + 1.0) * hy - 0.5
                py1 = (Y1 / W1 + 1.0) * hy - 0.5
                py2 = (Y2 / W2 + 1.0) * hy - 0.5
                # Clamp before converting to int: nearly-zero w gives huge values.
                lo = max(min(px0, px1, px2), -1.0)
                hi = min(max(px0, px1, px2), width + 1.0)
                x0 = max(int(np.floor(lo)), 0)
                x1 = min(int(np.ceil(hi)), width - 1)
                lo = max(min(py0, py1, py2), -1.0)
                hi = min(max(py0, py1, py2), height + 1.0)
                y0 = max(int(np.floor(lo)), 0)
                y1 = min(int(np.ceil(hi)), height - 1)
        # else: the triangle crosses w = 0 and its projection is unbounded; scan
        # the whole screen with the homogeneous edge functions (rare: only
        # geometry straddling the camera plane).
        boxes[b, f, 0] = x0
        boxes[b, f, 1] = x1
        boxes[b, f, 2] = y0
        boxes[b, f, 3] = y1
    return planes, boxes


@njit(cache=True, parallel=True)
def zbuffer(planes, boxes, height, width):
    """Nearest triangle per pixel.

    Returns ids (B,H,W) int32 (triangle index, -1 = background) and depth
    (B,H,W) float64 (z/w of the winner, +inf on background). Ties keep the
    lower triangle index.
    """
    nb, nf = boxes.shape[0], boxes.shape[1]
    ids = np.full((nb, height, width), -1, np.int32)
    depth = np.full((nb, height, width), np.inf)
    nbands = (height + BAND_ROWS - 1) // BAND_ROWS
    for job in prange(nb * nbands):
        b = job // nbands
        r0 = (job % nbands) * BAND_ROWS
        r1 = min(r0 + BAND_ROWS, height) - 1
        for f in range(nf):
            x0, x1 = boxes[b, f, 0], boxes[b, f, 1]
            if x1 < x0:
                continue
            ya = max(boxes[b, f, 2], r0)
            yb = min(boxes[b, f, 3], r1)
            if yb < ya:
                continue
            a0, b0, c0 = planes[b, f, 0, 0], planes[b, f, 0, 1], planes[b, f, 0, 2]
            a1, b1, c1 = planes[b, f, 1, 0], planes[b, f, 1, 1], planes[b, f, 1, 2]
            a2, b2, c2 = planes[b, f, 2, 0], planes[b, f, 2, 1], planes[b, f, 2, 2]
            az, bz, cz = planes[b, f, 3, 0], planes[b, f, 3, 1], planes[b, f, 3, 2]
            for y in range(ya, yb + 1):
                r0e = b0 * y + c0
                r1e = b1 * y + c1
                r2e = b2 * y + c2
                rz = bz * y + cz
                for x in range(x0, x1 + 1):
                    if a0 * x + r0e >= 0.0 and a1 * x + r1e >= 0.0 and a2 * x + r2e >= 0.0:
                        z = az * x + rz
                        if z >= -1.0 and z <= 1.0 and z < depth[b, y, x]:
                            depth[b, y, x] = z
                            ids[b, y, x] = f
    return ids, depth


@njit(cache=True, parallel=True)
def covered_pixels(ids, depth, base):
    """List the covered pixels and fill the non-differentiable channels of rast.

    ids (B,H,W) int32 (-1 = background), depth (B,H,W) z/w from
    :func:`zbuffer`; base (B,H,W,4) zeros (float32 or float64), whose z/w
    (clamped to [-1, 1]) and id+1 channels are written here.
    Returns, per covered pixel in raster order: pix (N,) flat index into
    B*H*W, face (N,) triangle index, batch (N,) batch index, all int64, and
    ndc (N,3) float64 = (x_ndc, y_ndc, 1) of the pixel centre.
    """
    nb, height, width = ids.shape
    nrows = nb * height
    counts = np.zeros(nrows + 1, np.int64)
    for r in prange(nrows):
        b = r // height
        y = r % height
        n = 0
        for x in range(width):
            if ids[b, y, x] >= 0:
                n += 1
        counts[r + 1] = n
    offsets = np.cumsum(counts)
    total = offsets[-1]
    pix = np.empty(total, np.int64)
    face = np.empty(total, np.int64)
    batch = np.empty(total, np.int64)
    ndc = np.empty((total, 3))
    for r in prange(nrows):
        b = r // height
        y = r % height
        i = offsets[r]
        yn = (2.0 * y + 1.0) / height - 1.0
        for x in range(width):
            t = ids[b, y, x]
            if t >= 0:
                pix[i] = r * width + x
                face[i] = t
                batch[i] = b
                ndc[i, 0] = (2.0 * x + 1.0) / width - 1.0
                ndc[i, 1] = yn
                ndc[i, 2] = 1.0
                base[b, y, x, 2] = min(max(depth[b, y, x], -1.0), 1.0)
                base[b, y, x, 3] = t + 1
                i += 1
    return pix, face, batch, ndc


@njit(cache=True)
def _analyse_pair(b, y, x, down, ids, depth, pos, tri, opp, height, width):
    """Silhouette edge crossing between pixel (x, y) and its right (down=0) or
    lower (down=1) neighbour.

    Returns (front, va, vb): front = 0 if (x, y) holds the front triangle, 1 if
    the neighbour does, -1 if no silhouette edge of the front triangle crosses
    the segment between the two pixel centres; va, vb are the edge's vertex
    indices (into pos[b]).
    """
    y1 = y + down
    x1 = x + 1 - down
    t0 = ids[b, y, x]
    t1 = ids[b, y1, x1]
    # The front triangle: the only one, or the nearer one.
    front = 0
    if t0 < 0 or (t1 >= 0 and depth[b, y1, x1] <= depth[b, y, x]):
        front = 1
    f = t0 if front == 0 else t1
    fx = float(x if front == 0 else x1)
    fy = float(y if front == 0 else y1)
    hx = 0.5 * width
    hy = 0.5 * height
    # Screen positions of the three vertices relative to the front pixel
    # centre (scalars in tuples: no heap allocation in this hot path).
    i0, i1, i2 = tri[f, 0], tri[f, 1], tri[f, 2]
    w0, w1, w2 = pos[b, i0, 3], pos[b, i1, 3], pos[b, i2, 3]
    if not (w0 > 0.0 and w1 > 0.0 and w2 > 0.0):
        return -1, 0, 0  # projection undefined: leave this pair alone
    px = ((pos[b, i0, 0] / w0 + 1.0) * hx - 0.5 - fx,
          (pos[b, i1, 0] / w1 + 1.0) * hx - 0.5 - fx,
          (pos[b, i2, 0] / w2 + 1.0) * hx - 0.5 - fx)
    py = ((pos[b, i0, 1] / w0 + 1.0) * hy - 0.5 - fy,
          (pos[b, i1, 1] / w1 + 1.0) * hy - 0.5 - fy,
          (pos[b, i2, 1] / w2 + 1.0) * hy - 0.5 - fy)
    own = (px[1] - px[0]) * (py[2] - py[0]) - (px[2] - px[0]) * (py[1] - py[0])
    # Along = the axis joining the two pixels, across = the other one;
    # toward = +1 if the other pixel lies at +along from the front pixel.
    toward = 1.0 if front == 0 else -1.0
    best = -np.inf
    best_k = -1
    for k in range(3):
        j = (k + 1) % 3
        m = (k + 2) % 3
        if down == 0:
            aj, cj, am, cm = px[j], py[j], px[m], py[m]
        else:
            aj, cj, am, cm = py[j], px[j], py[m], px[m]
        if (cj < 0.0) == (cm < 0.0):
            continue  # this edge does not cross the line through both centres
        t = toward * (aj * (cm - cj) - cj * (am - aj)) / (cm - cj)
        if t > best:
            best = t
            best_k = k
    if best_k < 0 or not (best > -AA_EPS and best < 1.0 + AA_EPS):
        return -1, 0, 0
    k = best_k
    j = (k + 1) % 3
    m = (k + 2) % 3
    if down == 0:
        da, dc = px[m] - px[j], py[m] - py[j]
    else:
        da, dc = py[m] - py[j], px[m] - px[j]
    # Edges closer to the pixel axis than 45 degrees belong to the other
    # direction's pairs.
    if abs(dc) < abs(da):
        return -1, 0, 0
    # Silhouette test: the edge is a silhouette when it has no neighbour, or
    # when the neighbour's far vertex lies on the same side of the edge as
    # our own far vertex (the surface folds back over the edge).
    o = opp[f, k]
    if o >= 0:
        w = pos[b, o, 3]
        if w > 0.0:
            qx = (pos[b, o, 0] / w + 1.0) * hx - 0.5 - fx
            qy = (pos[b, o, 1] / w + 1.0) * hy - 0.5 - fy
            wing = (px[j] - qx) * (py[m] - qy) - (px[m] - qx) * (py[j] - qy)
            if (wing >= 0.0) != (own >= 0.0):
                return -1, 0, 0
    return front, tri[f, j], tri[f, m]


@njit(cache=True, parallel=True)
def silhouette_pairs(ids, depth, pos, tri, opp):
    """All neighbouring pixel pairs crossed by a silhouette edge.

    ids (B,H,W) int32 with -1 = background, depth (B,H,W) z/w, pos (B,V,4)
    float64, tri (F,3), opp (F,3) from :func:`opposite_vertices`.
    Returns int64 arrays of equal length M: front and back flat pixel indices
    (into B*H*W), down (0 = horizontal pair, 1 = vertical) and the edge's two
    vertex indices (into V, per batch item).
    """
    nb, height, width = ids.shape
    nrows = nb * height
    counts = np.zeros(nrows + 1, np.int64)
    # Pass 1 counts per row so pass 2 can write without locks.
    for r in prange(nrows):
        b = r // height
        y = r % height
        n = 0
        for x in range(width):
            t = ids[b, y, x]
            for down in range(2):
                if down == 0 and x + 1 >= width:
                    continue
                if down == 1 and y + 1 >= height:
                    continue
                t1 = ids[b, y + down, x + 1 - down]
                if t1 != t:
                    front, va, vb = _analyse_pair(b, y, x, down, ids, depth, pos, tri, opp, height, width)
                    if front >= 0:
                        n += 1
        counts[r + 1] = n
    offsets = np.cumsum(counts)
    m = offsets[-1]
    out_front = np.empty(m, np.int64)
    out_back = np.empty(m, np.int64)
    out_down = np.empty(m, np.int64)
    out_va = np.empty(m, np.int64)
    out_vb = np.empty(m, np.int64)
    for r in prange(nrows):
        b = r // height
        y = r % height
        i = offsets[r]
        for x in range(width):
            t = ids[b, y, x]
            for down in range(2):
                if down == 0 and x + 1 >= width:
                    continue
                if down == 1 and y + 1 >= height:
                    continue
                t1 = ids[b, y + down, x + 1 - down]
                if t1 != t:
                    front, va, vb = _analyse_pair(b, y, x, down, ids, depth, pos, tri, opp, height, width)
                    if front >= 0:
                        p0 = (b * height + y) * width + x
                        p1 = (b * height + y + down) * width + x + 1 - down
                        out_front[i] = p0 if front == 0 else p1
                        out_back[i] = p1 if front == 0 else p0
                        out_down[i] = down
                        out_va[i] = va
                        out_vb[i] = vb
                        i += 1
    return out_front, out_back, out_down, out_va, out_vb


def opposite_vertices(tri: np.ndarray) -> np.ndarray:
    """For each triangle edge, the far vertex of the triangle across it.

    tri: (F,3) int. Edge k of triangle f joins tri[f,(k+1)%3] and
    tri[f,(k+2)%3]. Returns opp (F,3) int32: the third vertex of another
    triangle sharing that edge, or -1 on an open boundary. Edges shared by more
    than two triangles get one of the others (arbitrary but consistent).
    """
    tri = np.asarray(tri, np.int64)
    nf = tri.shape[0]
    opp = np.full((nf, 3), -1, np.int32)
    if nf == 0:
        return opp
    a = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0]])  # edge k start, k-major
    b = np.concatenate([tri[:, 2], tri[:, 0], tri[:, 1]])
    far = np.concatenate([tri[:, 0], tri[:, 1], tri[:, 2]])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = lo * (int(tri.max()) + 1) + hi
    order = np.argsort(key, kind="stable")
    ks = key[order]
    partner = np.full(3 * nf, -1, np.int64)
    same_next = ks[1:] == ks[:-1]
    # Pair each half-edge with its sorted neighbour carrying the same key.
    idx = np.nonzero(same_next)[0]
    partner[order[idx]] = order[idx + 1]
    first = np.ones(3 * nf, bool)
    first[1:] = ~same_next
    prev_ok = np.nonzero(~first)[0]
    fill = partner[order[prev_ok]] < 0
    partner[order[prev_ok[fill]]] = order[prev_ok[fill] - 1]
    has = partner >= 0
    flat = np.full(3 * nf, -1, np.int64)
    flat[has] = far[partner[has]]
    flat[(a == b)] = -1  # degenerate edge: no neighbour
    opp[:, :] = flat.reshape(3, nf).T
    return opp
