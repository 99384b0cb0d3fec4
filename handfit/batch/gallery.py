"""OUT/index.html: a gallery of a batch's overlays with per-hand metrics and verdicts.

One self-contained HTML file (inline CSS and a few lines of inline script,
no fonts, scripts or images from the network) that links the overlays by
relative paths, so it opens offline from the output folder or a copy of it.
A card whose input has a ``suspect`` hand (or video frame) carries a mark with the
reasons (handfit/fitting/quality.py), and a header box shows only those cards.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from . import store

# Metrics shown per hand, in this order, when present (names from result.json's metrics).
SHOWN = [("kp2d_px", "2D err px"), ("kp2d_max_px", "max 2D px"), ("init_kp2d_px", "init 2D px"),
         ("silhouette_iou_after", "IoU"),
         ("photometric_after", "photo err"), ("keypoint_iters", "kp iters"), ("frames", "frames"),
         ("jitter_mm", "jitter mm")]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{padding:14px 20px;background:#20232a;color:#eee;position:sticky;top:0;z-index:1}
header h1{font-size:18px;margin:0 0 6px 0} header .stats span{margin-right:16px}
header input{margin-left:8px;padding:3px 6px} header label{margin-right:10px;font-size:14px}
main{display:grid;align-items:start;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px;padding:16px}
.card{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.15);overflow:hidden}
.card img,.card video{width:100%;display:block;background:#111}
.card .body{padding:8px 10px;font-size:13px}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.badge{display:inline-block;padding:1px 7px;border-radius:9px;font-size:12px;color:#fff;margin-right:6px}
.ok{background:#2e7d32}.no_hand{background:#8d6e00}.error{background:#c62828}.suspect{background:#e65100}
.why{color:#b34700;font-size:12px;margin-top:4px} td.sus{color:#e65100;font-weight:600}
table{border-collapse:collapse;margin-top:6px;width:100%} td,th{border-top:1px solid #eee;padding:2px 4px;text-align:right}
th:first-child,td:first-child{text-align:left} .msg{color:#c62828;margin-top:4px}
.noimg{height:120px;display:flex;align-items:center;justify-content:center;color:#999;background:#eee}
"""

SCRIPT = """
function filt(){var q=document.getElementById('q').value.toLowerCase();
var sus=document.getElementById('sus').checked;
var show={};document.querySelectorAll('header input.status').forEach(function(c){show[c.value]=c.checked});
document.querySelectorAll('.card').forEach(function(c){
 c.style.display=(show[c.dataset.status]&&(!sus||+c.dataset.suspect>0)
  &&c.dataset.path.toLowerCase().indexOf(q)>=0)?'':'none'});}
"""


def _url(rel: str) -> str:
    return quote(rel.replace(os.sep, "/"))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return html.escape(str(v))


def _reasons(h: dict) -> str:
    """One hand's (or track's) reasons as one line: a photo hand's phrases, or a track's
    suspect frames with how often each kind of reason came up."""
    if "suspect_frames" in h:
        if not h.get("suspect"):
            return ""
        kinds = ", ".join(f"{k} ×{n}" for k, n in (h.get("suspect_reasons") or {}).items())
        frames = h["suspect_frames"]
        listed = ", ".join(map(str, frames[:10])) + (" …" if len(frames) > 10 else "")
        return f"{h['suspect']} suspect frame(s) ({kinds}): frames {listed}"
    return "; ".join(map(str, h.get("quality_reasons") or []))


def _quality_cell(h: dict) -> str:
    why = _reasons(h)
    if not why:
        return f"<td>{html.escape(str(h.get('quality', '')))}</td>"
    text = f"{h['suspect']} frames" if "suspect_frames" in h else "suspect"
    return f'<td class="sus" title="{html.escape(why)}">{text}</td>'


def _hands_table(hands: list) -> str:
    if not hands:
        return ""
    cols = [(k, label) for k, label in SHOWN if any(k in h for h in hands)]
    judged = any("quality" in h for h in hands)
    head = "<tr><th>hand</th><th>score</th>" + "".join(f"<th>{label}</th>" for _, label in cols) + \
        ("<th>quality</th>" if judged else "") + "</tr>"
    rows = []
    for i, h in enumerate(hands):
        cells = "".join(f"<td>{_fmt(h[k]) if k in h else ''}</td>" for k, _ in cols)
        rows.append(f"<tr><td>{i} {html.escape(str(h.get('side', '')))}</td><td>{_fmt(h.get('score', ''))}</td>"
                    f"{cells}{_quality_cell(h) if judged else ''}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _suspect_mark(rec: dict) -> tuple:
    """(badge, reasons block) of an input with a suspect hand or frame; ("", "") otherwise."""
    n = int(rec.get("suspect", 0) or 0)
    if not n:
        return "", ""
    what = "track" if rec.get("kind") == "video" else "hand"
    lines = [f"{what} {i} ({h.get('side', '')}): {_reasons(h)}" for i, h in enumerate(rec.get("hand_metrics") or [])
             if _reasons(h)]
    tip = html.escape("\n".join(lines))
    badge = f'<span class="badge suspect" title="{tip}">suspect {n}</span>'
    why = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    return badge, f'<div class="why">{why}</div>'


def _media(out: Path, rec: dict) -> str:
    alt = html.escape(rec.get("path", ""))
    if rec.get("kind") == "video" and rec.get("overlay_video"):
        poster = rec.get("poster")
        pattr = f' poster="{_url(poster)}"' if poster and (out / poster).exists() else ""
        return (f'<video controls muted loop preload="none"{pattr}>'
                f'<source src="{_url(rec["overlay_video"])}" type="video/mp4"></video>')
    ov = rec.get("overlay")
    if ov and (out / ov).exists():
        return f'<a href="{_url(ov)}"><img loading="lazy" src="{_url(ov)}" alt="{alt}"></a>'
    return '<div class="noimg">no overlay</div>'


def render(out: Path, records: list) -> str:
    out = Path(out)
    n = {s: sum(r.get("status") == s for r in records) for s in ("ok", "no_hand", "error")}
    hands = sum(int(r.get("hands", 0)) for r in records)
    suspect = sum(int(r.get("suspect", 0) or 0) for r in records)
    suspect_inputs = sum(bool(r.get("suspect")) for r in records)
    secs = sum(float(r.get("seconds", 0) or 0) for r in records)
    cards = []
    for r in records:
        status = r.get("status", "error")
        link = ""
        if status != "error":
            link = f' · <a href="{_url(r["key"] + "/result.json")}">result.json</a>' \
                if (out / r["key"] / "result.json").exists() else ""
            if r.get("kind") == "video":
                link = f' · <a href="{_url(r["key"] + "/tracks.npz")}">tracks.npz</a>'
        extra = f" · {r['frames']} frames" if r.get("frames") else ""
        msg = f'<div class="msg">{html.escape(r.get("message", ""))}</div>' if status == "error" else ""
        badge, why = _suspect_mark(r)
        cards.append(
            f'<div class="card" data-status="{status}" data-suspect="{int(r.get("suspect", 0) or 0)}" '
            f'data-path="{html.escape(r.get("path", ""))}">'
            f'{_media(out, r) if status != "error" else ""}<div class="body">'
            f'<span class="badge {status}">{status}</span>{badge}'
            f'<span class="path">{html.escape(r.get("path", ""))}</span>'
            f'<div>{int(r.get("hands", 0))} hand(s) · {float(r.get("seconds", 0) or 0):.1f} s{extra}{link}</div>'
            f'{msg}{why}{_hands_table(r.get("hand_metrics") or [])}</div></div>')
    boxes = "".join(f'<label><input type="checkbox" class="status" value="{s}" checked onchange="filt()"> '
                    f'{s} ({n[s]})</label>' for s in ("ok", "no_hand", "error"))
    boxes += (f'<label><input type="checkbox" id="sus" onchange="filt()"> only suspect '
              f'({suspect_inputs})</label>')
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>handfit batch: {len(records)} inputs</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
        f"<body><header><h1>handfit batch · {html.escape(out.resolve().name)}</h1><div class=\"stats\">"
        f"<span>{len(records)} inputs</span><span>{hands} hands, {suspect} suspect</span>"
        f"<span>{secs:.0f} s of compute</span>"
        f"{boxes}<input id=\"q\" placeholder=\"filter by path\" oninput=\"filt()\"></div></header>"
        f"<main>{''.join(cards)}</main></body></html>\n")


def write_gallery(out: Path, records: list) -> Path:
    """Write OUT/index.html atomically (a temporary file of its own, renamed: two
    writers at once never share or remove each other's temporary). -> its path"""
    import tempfile

    out = Path(out)
    path = out / "index.html"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f"{store.TMP_PREFIX}index.", suffix=".html")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(out, records))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
