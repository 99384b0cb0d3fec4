"""Write a FitResult to disk: the layout documented in the README."""

from __future__ import annotations

from pathlib import Path

from .export import write_glb, write_json, write_npz, write_obj


def save_result(result, outdir, stem: str | None = None, texture_files: list | None = None,
                overlay_compress: int | None = None, glb: bool = True) -> Path:
    """outdir/<stem>/{result.json, overlay.png, hand<i>_<side>.{obj,mtl,png,glb,npz}}.

    ``texture_files``: per hand, None or the path (relative to the folder) of a texture
    written elsewhere, e.g. a video track's ``../track0_texture.png``: that hand's .mtl
    refers to it and no .png of its own is written (the .glb still embeds it).
    ``overlay_compress``: overlay.png's zlib level (None: the default). The overlay's panels
    are kept as ``result.overlay`` ((H', 4W', 3) uint8) for a caller that encodes them too.
    ``glb`` False: no per-hand .glb (a video's frames: its ``track<t>.glb`` holds every frame)."""
    if stem is None:
        stem = Path(result.image_path).stem if result.image_path else "image"
    folder = Path(outdir) / stem
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, h in enumerate(result.hands):
        base = f"hand{i}_{h.side}"
        shared = texture_files[i] if texture_files else None
        paths = write_obj(folder / f"{base}.obj", h.vertices, h.faces, h.uv_coords, h.uv_faces, h.texture, name=base,
                          texture_file=shared)
        if glb:
            write_glb(folder / f"{base}.glb", h.vertices, h.faces, h.uv_coords, h.uv_faces, h.texture)
        write_npz(folder / f"{base}.npz", h.params)
        texture = paths["texture"].name if shared is None else paths["texture"].as_posix()
        files.append({"obj": f"{base}.obj", "mtl": paths["mtl"].name, "texture": texture,
                      **({"glb": f"{base}.glb"} if glb else {}), "params": f"{base}.npz"})
    overlay = None
    if result.image is not None:
        from .overlay import write_overlay

        result.overlay = write_overlay(folder / "overlay.png", result, compress=overlay_compress)
        overlay = "overlay.png"
    write_json(folder / "result.json", result.to_dict(files=files, overlay=overlay))
    return folder
