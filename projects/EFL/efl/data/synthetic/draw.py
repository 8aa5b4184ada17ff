"""Drawing: the visual vocabulary of the classes (shape x colour x pattern) and one image
of objects on a cluttered background, with the exact box of every object."""

import math
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # config.py imports MAX_CLASSES from here
    from .config import SyntheticLongTailConfig

__all__ = ["SHAPES", "COLORS", "PATTERNS", "MAX_CLASSES", "MARKS", "FAMILY_SHAPES",
           "class_visuals", "family_visuals", "render_image"]

SHAPES = (
    "disc", "square", "triangle", "diamond", "plus",
    "cross", "ring", "frame", "star", "semicircle",
)  # fmt: skip
COLORS = {  # RGB
    "red": (220, 30, 30), "orange": (250, 140, 10), "yellow": (240, 225, 20),
    "lime": (150, 240, 40), "green": (20, 140, 40), "cyan": (20, 215, 235),
    "blue": (25, 60, 230), "purple": (120, 35, 185), "magenta": (240, 45, 215),
    "brown": (125, 70, 20), "white": (248, 248, 248), "black": (8, 8, 8),
}  # fmt: skip
PATTERNS = ("solid", "striped")
MAX_CLASSES = len(SHAPES) * len(COLORS) * len(PATTERNS)
# Families (LVIS's fine-grained relatives): a parent and relatives of the same shape and
# colour that differ in a small mark drawn in the middle, so only filled shapes carry them.
MARKS = ("dot", "bar", "outline", "cross")
FAMILY_SHAPES = tuple(s for s in SHAPES if s not in ("ring", "frame"))

_SUPERSAMPLE = 4
_COLOR_JITTER = 12
_GAP = 2  # min pixels between two objects' rectangles


def class_visuals(num_classes: int, rng: np.random.Generator) -> List[dict]:
    """K visual identities (pattern, shape, colour), ordered by pattern/shape/colour."""
    patterns = PATTERNS[:1] if num_classes <= len(SHAPES) * len(COLORS) else PATTERNS
    combos = [(p, s, c) for p in patterns for s in SHAPES for c in COLORS]
    chosen = sorted(rng.permutation(len(combos))[:num_classes].tolist())
    out = []
    for i in chosen:
        pattern, shape, color = combos[i]
        name = f"{color}_{shape}" if pattern == "solid" else f"{pattern}_{color}_{shape}"
        out.append({"name": name, "shape": shape, "color": color, "pattern": pattern})
    return out


def family_visuals(cfg: "SyntheticLongTailConfig", rng: np.random.Generator) -> List[dict]:
    """``cfg.families`` families (parent first, then its relatives with MARKS in order),
    then the single classes, each a shape x colour (x pattern) no family uses. Every
    visual has ``mark`` ("none" for parents and singles) and ``family`` (index or None)."""
    F, m = cfg.families, cfg.family_size
    parents = [(s, c) for s in FAMILY_SHAPES for c in COLORS]
    chosen = sorted(rng.permutation(len(parents))[:F].tolist())
    out = []
    for f, i in enumerate(chosen):
        shape, color = parents[i]
        for mark in ("none",) + MARKS[: m - 1]:
            name = f"{color}_{shape}" + ("" if mark == "none" else f"_{mark}")
            out.append({"name": name, "shape": shape, "color": color, "pattern": "solid",
                        "mark": mark, "family": f})
    singles = cfg.num_classes - F * m
    taken = {parents[i] for i in chosen}
    patterns = PATTERNS[:1] if F + singles <= len(SHAPES) * len(COLORS) else PATTERNS
    combos = [(p, s, c) for p in patterns for s in SHAPES for c in COLORS
              if p != "solid" or (s, c) not in taken]
    for i in sorted(rng.permutation(len(combos))[:singles].tolist()):
        pattern, shape, color = combos[i]
        name = f"{color}_{shape}" if pattern == "solid" else f"{pattern}_{color}_{shape}"
        out.append({"name": name, "shape": shape, "color": color, "pattern": pattern,
                    "mark": "none", "family": None})
    return out


def mark_alpha(mark: str, w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a family mark in the middle of a w x h box,
    (h, w) float32: a dot, a horizontal bar, an inner outline (a concentric rectangle) or
    a small cross, about a third of the box across."""
    W, H = w * _SUPERSAMPLE, h * _SUPERSAMPLE
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    cx, cy = W / 2, H * 0.55  # a little low: inside the triangle and the semicircle too
    r = 0.17 * min(W, H)
    stroke = max(_SUPERSAMPLE, round(0.09 * min(W, H)))
    if mark == "dot":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif mark == "bar":
        d.rectangle([cx - 1.6 * r, cy - stroke, cx + 1.6 * r, cy + stroke], fill=255)
    elif mark == "outline":
        d.rectangle([cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r], fill=255)
        d.rectangle([cx - 1.3 * r + stroke, cy - 1.3 * r + stroke, cx + 1.3 * r - stroke,
                     cy + 1.3 * r - stroke], fill=0)
    elif mark == "cross":
        d.line([cx - r, cy - r, cx + r, cy + r], fill=255, width=stroke)
        d.line([cx - r, cy + r, cx + r, cy - r], fill=255, width=stroke)
    else:
        raise ValueError(f"unknown mark {mark!r}")
    m = m.resize((w, h), Image.BOX)
    return np.asarray(m, dtype=np.float32) / 255.0


def mark_color(color: str) -> np.ndarray:
    """The mark's colour on an object of ``color``: near black on light colours, near
    white on dark ones."""
    r, g, b = COLORS[color]
    light = 0.299 * r + 0.587 * g + 0.114 * b > 110
    return np.full(3, 20.0 if light else 235.0, dtype=np.float32)


def _normalised_polygon(points: np.ndarray, W: int, H: int) -> List[Tuple[float, float]]:
    p = points - points.min(0)
    p = p / np.maximum(p.max(0), 1e-9) * [W - 1, H - 1]
    return [tuple(map(float, xy)) for xy in p]


def _shape_alpha(shape: str, w: int, h: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` filling a w x h box, (h, w) float32."""
    W, H = w * _SUPERSAMPLE, h * _SUPERSAMPLE
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    stroke = max(_SUPERSAMPLE, round(0.24 * min(W, H)))
    if shape == "disc":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
    elif shape == "square":
        d.rectangle([0, 0, W - 1, H - 1], fill=255)
    elif shape == "triangle":
        d.polygon([(W / 2, 0), (W - 1, H - 1), (0, H - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(W / 2, 0), (W - 1, H / 2), (W / 2, H - 1), (0, H / 2)], fill=255)
    elif shape == "plus":
        tw, th = 0.36 * W, 0.36 * H
        d.rectangle([(W - tw) / 2, 0, (W + tw) / 2, H - 1], fill=255)
        d.rectangle([0, (H - th) / 2, W - 1, (H + th) / 2], fill=255)
    elif shape == "cross":
        a, b = 0.24 * W, 0.24 * H
        d.polygon([(0, 0), (a, 0), (W - 1, H - 1 - b), (W - 1, H - 1), (W - 1 - a, H - 1), (0, b)], fill=255)
        d.polygon([(W - 1, 0), (W - 1 - a, 0), (0, H - 1 - b), (0, H - 1), (a, H - 1), (W - 1, b)], fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        d.ellipse([stroke, stroke, W - 1 - stroke, H - 1 - stroke], fill=0)
    elif shape == "frame":
        d.rectangle([0, 0, W - 1, H - 1], fill=255)
        d.rectangle([stroke, stroke, W - 1 - stroke, H - 1 - stroke], fill=0)
    elif shape == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        d.polygon(_normalised_polygon(pts, W, H), fill=255)
    elif shape == "semicircle":
        d.pieslice([0, 0, W - 1, 2 * H - 1], 180, 360, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m = m.resize((w, h), Image.BOX)
    return np.asarray(m, dtype=np.float32) / 255.0


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - i0
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), i0] = 1 - frac
    m[np.arange(n_out), i0 + 1] += frac
    return m


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Gradient + smooth random field + clutter (lines, specks): (S, S, 3) float32."""
    c0 = rng.uniform(80, 180) + rng.uniform(-18, 18, 3)
    c1 = rng.uniform(80, 180) + rng.uniform(-18, 18, 3)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    coarse = rng.normal(0, 12, (5, 5, 3)).astype(np.float32)
    interp = _interp_matrix(S, 5)
    bg += np.stack([interp @ coarse[:, :, c] @ interp.T for c in range(3)], axis=-1)
    im = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0, x1, y1 = rng.uniform(-0.1 * S, 1.1 * S, 4)
        d.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    for _ in range(int(rng.integers(0, 9))):
        cx, cy = rng.uniform(0, S, 2)
        r = rng.uniform(0.8, 2.0)
        g = int(rng.integers(60, 200))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(g, g, g))
    return np.asarray(im, dtype=np.float32)


def _place(rng, w, h, S, placed) -> Optional[Tuple[int, int]]:
    """A random top-left (x, y) for a w x h rectangle not within _GAP px of ``placed``."""
    xs = rng.integers(0, S - w + 1, 64)
    ys = rng.integers(0, S - h + 1, 64)
    if not placed:
        return int(xs[0]), int(ys[0])
    p = np.asarray(placed)  # (n, 4) x, y, w, h
    clash = (
        (xs[:, None] < p[:, 0] + p[:, 2] + _GAP)
        & (p[:, 0] < xs[:, None] + w + _GAP)
        & (ys[:, None] < p[:, 1] + p[:, 3] + _GAP)
        & (p[:, 1] < ys[:, None] + h + _GAP)
    ).any(1)
    free = np.flatnonzero(~clash)
    if len(free) == 0:
        return None
    return int(xs[free[0]]), int(ys[free[0]])


def render_image(
    rng: np.random.Generator, classes: Sequence[int], visuals: List[dict], cfg: "SyntheticLongTailConfig"
) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, List[int]]]]:
    """Draw one image. Returns (image uint8 (S,S,3), background before objects and noise
    (float32), [(class index, [x, y, w, h])])."""
    S = cfg.image_size
    bg = _background(rng, S)
    img = bg.copy()

    order = rng.permutation(len(classes))
    items = [(int(classes[i]), True) for i in order]  # (class, mandatory)
    for c, _ in list(items):
        if len(items) < cfg.max_objects and rng.random() < cfg.duplicate_prob:
            items.append((c, False))
    lo_s, hi_s = math.log(cfg.min_object_size), math.log(cfg.max_object_size)
    sizes = np.exp(rng.uniform(lo_s, hi_s, len(items)))
    aspect = np.exp(rng.uniform(-math.log(1.3), math.log(1.3), len(items)))
    wh = np.stack([sizes * np.sqrt(aspect), sizes / np.sqrt(aspect)], 1)
    budget = 0.35 * S * S  # keep packing easy
    area = float(np.prod(wh, 1).sum())
    if area > budget:
        wh *= math.sqrt(budget / area)
    wh = np.clip(np.rint(wh), 8, S // 2).astype(int)
    # mandatory first, larger first (easier packing)
    seq = sorted(range(len(items)), key=lambda i: (not items[i][1], -wh[i, 0] * wh[i, 1], i))

    placed: List[List[int]] = []
    objects = []
    for i in seq:
        c, mandatory = items[i]
        w, h = int(wh[i, 0]), int(wh[i, 1])
        pos = None
        for _ in range(8):
            pos = _place(rng, w, h, S, placed)
            if pos is not None:
                break
            w, h = max(8, int(w * 0.85)), max(8, int(h * 0.85))
        if pos is None:
            if not mandatory:
                continue
            # practically never: overlap allowed rather than losing the class from the image
            pos = (int(rng.integers(0, S - w + 1)), int(rng.integers(0, S - h + 1)))
        x, y = pos
        placed.append([x, y, w, h])
        vis = visuals[c]
        alpha = _shape_alpha(vis["shape"], w, h)
        color = np.clip(
            np.asarray(COLORS[vis["color"]], np.float32) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3),
            0,
            255,
        ).astype(np.float32)
        paint = np.broadcast_to(color, (h, w, 3))
        if vis["pattern"] == "striped":
            yy, xx = np.mgrid[0:h, 0:w]
            period = max(2, round(min(w, h) / 5))
            stripe = ((xx + yy) // period) % 2 == 1
            paint = np.where(stripe[..., None], paint * 0.45, paint)
        if vis.get("mark", "none") != "none":  # a family relative: its mark on the shape
            mark = (mark_alpha(vis["mark"], w, h) * alpha)[..., None]
            paint = paint * (1 - mark) + mark_color(vis["color"]) * mark
        a = alpha[..., None]
        region = img[y : y + h, x : x + w]
        img[y : y + h, x : x + w] = region * (1 - a) + paint * a
        rows = np.flatnonzero(alpha.max(1) > 0)
        cols = np.flatnonzero(alpha.max(0) > 0)
        box = [x + int(cols[0]), y + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        objects.append((c, box))

    if cfg.noise_std > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(cfg.noise_std)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out, bg, objects
