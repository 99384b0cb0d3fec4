"""Run by Blender's Python (bpy 5.0.1, the .venv-blender of `make test-blender`), not by pytest:
import each .glb given, and write what Blender made of it to an .npz.

    python tests/blender_pose.py OUT.npz a.glb [b.glb ...] [--render PNG --frame K --camera fx,fy,cx,cy,W,H]

Per file i: ``i_armatures``, ``i_skinned`` (meshes with an armature modifier), ``i_images``
(images that a skinned mesh's material uses, with pixels), ``i_keys`` (the keyframe
positions, in Blender frames, of the armature's action: one per fitted frame), ``i_posed``
(K,V,3): the skinned mesh as Blender poses it at each keyframe, in the glTF frame
(Blender (x, y, z) = glTF (x, -z, y)). ``--render``: a Workbench render of the last file
at its keyframe K (0-based), textured, through the fit's camera (pixel for pixel as overlay.png).
"""

from __future__ import annotations

import sys

import bpy
import numpy as np


def fcurves(action):
    """All F-curves of an action: Blender 5 keeps them in layers -> strips -> channelbags."""
    out = list(getattr(action, "fcurves", []) or [])
    for layer in getattr(action, "layers", []):
        for strip in layer.strips:
            for bag in strip.channelbags:
                out += list(bag.fcurves)
    return out


def load(path: str) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=path)
    arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    skinned = [o for o in bpy.data.objects if o.type == "MESH" and any(m.type == "ARMATURE" for m in o.modifiers)]
    images = set()
    for o in skinned:
        for slot in o.material_slots:
            if slot.material and slot.material.node_tree:
                images |= {n.image.name for n in slot.material.node_tree.nodes
                           if n.type == "TEX_IMAGE" and n.image is not None and n.image.size[0] > 0}
    keys = set()
    for a in arms:
        if a.animation_data and a.animation_data.action:
            for fc in fcurves(a.animation_data.action):
                keys |= {round(k.co.x, 4) for k in fc.keyframe_points}
    return {"armatures": len(arms), "skinned": skinned, "images": sorted(images), "keys": sorted(keys)}


def posed(obj, frame: float) -> np.ndarray:
    """(V,3) the evaluated mesh at a (fractional) frame, glTF frame."""
    scene = bpy.context.scene
    whole = int(np.floor(frame))
    scene.frame_set(whole, subframe=float(frame - whole))
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    v = np.empty(len(ev.data.vertices) * 3)
    ev.data.vertices.foreach_get("co", v)
    M = np.array(obj.matrix_world)
    v = v.reshape(-1, 3) @ M[:3, :3].T + M[:3, 3]
    return np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1)


def render(frame: float, png: str, camera: list) -> None:
    """Workbench render, textured, through the fit's camera: camera = fx, fy, cx, cy, W, H (pixels).
    The glTF frame is the camera's turned 180° about x, so the camera sits at the origin
    looking down glTF's -z (Blender +y) with glTF's +y (Blender +z) up."""
    fx, fy, cx, cy, W, H = camera
    scene = bpy.context.scene
    whole = int(np.floor(frame))
    scene.frame_set(whole, subframe=float(frame - whole))
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, 0.0, 0.0), (np.pi / 2, 0.0, 0.0)
    cam.data.sensor_fit, cam.data.sensor_width = "HORIZONTAL", 36.0
    cam.data.lens = fx * 36.0 / W
    # OpenCV puts pixel centres at integers: the image centre is at (W/2 - 0.5, H/2 - 0.5)
    cam.data.shift_x, cam.data.shift_y = -(cx + 0.5 - W / 2) / W, (cy + 0.5 - H / 2) / W
    cam.data.clip_start = 0.01
    scene.camera = cam
    scene.render.engine = "BLENDER_WORKBENCH"
    # the texture as stored: flat light, and no film-like tone curve (Blender's default AgX
    # darkens and desaturates), so the render compares with overlay.png's textured panel
    scene.display.shading.light = "FLAT"
    scene.display.shading.color_type = "TEXTURE"
    scene.view_settings.view_transform = "Standard"
    scene.render.resolution_x, scene.render.resolution_y = int(W), int(H)
    scene.render.pixel_aspect_y = fx / fy
    scene.render.filepath = png
    bpy.ops.render.render(write_still=True)


def main(argv: list) -> None:
    out, rest = argv[0], argv[1:]
    png = frame = camera = None
    if "--render" in rest:
        i = rest.index("--render")
        png, frame = rest[i + 1], int(rest[rest.index("--frame") + 1])
        camera = [float(x) for x in rest[rest.index("--camera") + 1].split(",")]
        rest = rest[:i]
    data = {}
    for i, path in enumerate(rest):
        info = load(path)
        data[f"{i}_armatures"] = info["armatures"]
        data[f"{i}_skinned"] = len(info["skinned"])
        data[f"{i}_images"] = np.array(info["images"])
        data[f"{i}_keys"] = np.array(info["keys"])
        if len(info["skinned"]) == 1:
            data[f"{i}_posed"] = np.stack([posed(info["skinned"][0], k) for k in info["keys"]])
    if png is not None:
        render(info["keys"][frame], png, camera)
    np.savez(out, **data)


if __name__ == "__main__":
    main(sys.argv[1:])
