"""Deterministic generator of the small embedded demo dataset (ADE20K layout).

The scenes are synthetic but "photo-like": a sky / ground / water / grass
backdrop with a tilted wavy horizon, trees, and objects of several shapes,
lit, shadowed, blurred, noised and JPEG-compressed.  Colour alone does not
separate the classes: sky and water share the same blue (water has waves),
grass and tree share the same green (different texture and shape), and the
ball and the box are the same red (they differ only by shape).  Small random
clutter is labelled 0 ("other") so the ignore-index path gets exercised.

Only numpy's RNG is used and every image gets its own generator seeded from
(seed, split, index), so the same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Reduced ids 0..K-1 (annotation PNGs store id + 1; 0 there means "other").
DEMO_CLASSES: list[str] = ["sky", "water", "ground", "grass", "tree", "ball", "box", "rock"]
# How the classes are drawn (masks, overlays, legends, the report), written into id2label.json:
# colours a reader expects of sky, water, grass..., rather than the generated palette, which
# starts at pure red, the error map's colour for a wrong pixel (visualize.ERROR_COLOR). None is
# near that red, black (ignored pixels: "other" is ignored once labels are reduced) or the error
# map's grey for unscored pixels. Display only: the masks are index PNGs, so training never sees them.
DEMO_COLORS: dict[str, tuple[int, int, int]] = {
    "sky": (135, 206, 235),  # light blue
    "water": (30, 90, 160),  # a deeper blue
    "ground": (150, 105, 60),  # brown
    "grass": (110, 190, 70),  # green
    "tree": (30, 100, 40),  # dark green
    "ball": (255, 140, 0),  # orange
    "box": (250, 225, 50),  # yellow
    "rock": (175, 170, 160),  # light grey, lighter than the unscored grey
}
DEMO_IMAGE_SIZE: int = 128

# Found by a sweep: a randomly initialised mit-b0 reaches val mIoU 0.92-0.93 with these
# in ~5-5.5 min on 2 CPU cores (~3.0-3.3 steps/s); the same-red ball vs box is learnt last.
DEMO_TRAINING: dict = {
    "learning_rate": 2e-3,  # random init needs far more than fine-tuning's 6e-5
    "max_steps": 1000,
    "per_device_train_batch_size": 8,
    "warmup_steps": 50,
    "weight_decay": 0.01,
    "lr_scheduler_type": "linear",
    "scale_range": (0.8, 1.25),  # random resize ratio, then crop/pad to DEMO_IMAGE_SIZE
    "num_train": 400,
    "num_val": 50,
    "eval_steps": 250,
}

SKY, WATER, GROUND, GRASS, TREE, BALL, BOX, ROCK = range(1, 9)  # annotation values
_BLUE = np.array([0.38, 0.58, 0.86])
_GREEN = np.array([0.30, 0.52, 0.22])
_RED = np.array([0.80, 0.16, 0.12])
_BROWN = np.array([0.52, 0.40, 0.27])
_GREY = np.array([0.55, 0.55, 0.53])


def _smooth_noise(rng, h, w, cell_y, cell_x):
    """Zero-mean value noise in about [-1, 1] with feature size (cell_y, cell_x) pixels."""
    gy, gx = int(h / cell_y) + 2, int(w / cell_x) + 2
    grid = rng.uniform(-1, 1, (gy, gx)).astype(np.float32)
    up = Image.fromarray(grid).resize((int(gx * cell_x), int(gy * cell_y)), Image.BICUBIC)
    return np.asarray(up)[:h, :w]


def _blob_mask(rng, s, cy, cx, r, bumpiness):
    """Irregular closed blob: a polygon whose radius wobbles around r."""
    n = 24
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = r * (1 + bumpiness * rng.uniform(-1, 1, n))
    pts = [(cx + rr * np.cos(a), cy + rr * np.sin(a)) for a, rr in zip(ang, rad)]
    return _polygon_mask(s, pts)


def _polygon_mask(s, pts):
    img = Image.new("L", (s, s), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in pts], fill=1)
    return np.asarray(img, dtype=bool)


def _textures(rng, s, yy, xx):
    """Full-frame texture fields for every background/object class."""
    lum = lambda amp: 1 + amp * rng.uniform(-1, 1)  # per-image brightness variation
    tex = {}
    # Sky: smooth vertical gradient plus soft large-scale haze; no fine texture.
    tex[SKY] = _BLUE * lum(0.08) * (0.9 + 0.2 * yy / s)[..., None] \
        + 0.05 * _smooth_noise(rng, s, s, s / 3, s / 2)[..., None]
    # Water: the same mean blue, but with horizontal wave streaks (period 5-9 px).
    period = rng.uniform(5, 9)
    waves = np.sin(2 * np.pi * yy / period + 1.5 * np.sin(xx / rng.uniform(8, 16)) + rng.uniform(0, 6.3))
    tex[WATER] = _BLUE * lum(0.08) * (1 + 0.22 * waves)[..., None] \
        + 0.05 * _smooth_noise(rng, s, s, 2, 10)[..., None]
    # Ground: brown with blotchy soil and fine grain.
    tex[GROUND] = _BROWN * lum(0.1) * (1 + 0.25 * _smooth_noise(rng, s, s, 8, 8)
                                       + 0.12 * rng.standard_normal((s, s)))[..., None]
    # Grass: green with thin vertical blades (high frequency in x, long in y).
    tex[GRASS] = _GREEN * lum(0.1) * (1 + 0.35 * _smooth_noise(rng, s, s, 6, 1.5))[..., None]
    # Tree foliage: the same green, but in leafy clumps with dark gaps.
    leaves = _smooth_noise(rng, s, s, 4, 4)
    tex[TREE] = _GREEN * lum(0.1) * (0.95 + 0.35 * leaves - 0.35 * (leaves < -0.4))[..., None]
    # Ball and box: identical red paint, so only the shape tells them apart.
    paint = _RED * lum(0.1) * (1 + 0.05 * _smooth_noise(rng, s, s, 6, 6))[..., None]
    tex[BALL] = tex[BOX] = paint
    # Rock: grey with dark speckles.
    tex[ROCK] = _GREY * lum(0.12) * (1 + 0.2 * _smooth_noise(rng, s, s, 5, 5)
                                     - 0.25 * (rng.random((s, s)) < 0.08))[..., None]
    return tex


def _render_scene(rng, s):
    """Return (rgb uint8 HxWx3, annotation uint8 HxW) for one scene."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    tex = _textures(rng, s, yy, xx)
    label = np.zeros((s, s), np.uint8)
    shade = np.ones((s, s), np.float32)  # multiplicative light (shadows, object shading)
    gloss = np.zeros((s, s), np.float32)  # additive white specular highlights

    # Backdrop: sky above a tilted, gently wavy horizon; below it one or two of
    # water / ground / grass, split by a wavy near-vertical shoreline.
    horizon = s * rng.uniform(0.3, 0.6) + rng.uniform(-0.2, 0.2) * (xx - s / 2) \
        + 2 * np.sin(xx / rng.uniform(6, 14))
    below = yy >= horizon
    kinds = rng.permutation([WATER, GROUND, GRASS])
    shore = s * rng.uniform(0.25, 0.75) + rng.uniform(-0.5, 0.5) * (yy - s / 2) + 3 * np.sin(yy / 9)
    split = rng.random() < 0.6
    label[:] = SKY
    label[below] = kinds[0]
    if split:
        label[below & (xx >= shore)] = kinds[1]

    # A tree standing on the horizon: brown trunk plus a lumpy round canopy.
    if rng.random() < 0.6:
        tx = rng.uniform(0.15, 0.85) * s
        base = float(np.interp(tx, xx[0], horizon[0])) + s * 0.05
        r = s * rng.uniform(0.13, 0.22)
        cy = base - r * rng.uniform(1.4, 1.9)
        trunk = (np.abs(xx - tx) < r * 0.18) & (yy > cy) & (yy < base)
        canopy = np.zeros((s, s), bool)
        for _ in range(4):
            canopy |= _blob_mask(rng, s, cy + rng.uniform(-0.4, 0.4) * r,
                                 tx + rng.uniform(-0.5, 0.5) * r, r * rng.uniform(0.6, 0.85), 0.15)
        label[trunk | canopy] = TREE
        tex[TREE] = np.where(trunk[..., None] & ~canopy[..., None], _BROWN * 0.6, tex[TREE])

    # 2-4 objects, big enough that 1/4-resolution logits resolve their boundaries.
    light = rng.uniform(-1, 1, 2)
    light /= np.linalg.norm(light) + 1e-6
    # Balls and boxes are the hardest pair (same red), so they get most of the draws.
    for _ in range(rng.integers(2, 5)):
        kind = rng.choice([BALL, BOX, ROCK], p=[0.4, 0.4, 0.2])
        r = s * rng.uniform(0.1, 0.2)
        cy, cx = rng.uniform(0.45, 0.9) * s, rng.uniform(0.1, 0.9) * s
        # Soft drop shadow on whatever is below (stays labelled as background).
        shadow = ((xx - cx - 0.3 * r) / (1.2 * r)) ** 2 + ((yy - cy - 0.9 * r) / (0.35 * r)) ** 2 < 1
        shade[shadow & (label != TREE)] *= 0.65
        if kind == BALL:
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / r**2
            mask = d2 < 1
            # Sphere shading: dark rim, lit side, specular highlight (shape-derived cues).
            nz = np.sqrt(np.clip(1 - d2, 0, 1))
            lit = np.clip(0.5 * nz + 0.5 * ((xx - cx) * light[0] + (yy - cy) * light[1]) / r, 0, 1)
            shade = np.where(mask, 0.35 + 0.75 * lit, shade)
            spot = ((xx - cx - 0.45 * r * light[0]) ** 2 + (yy - cy - 0.45 * r * light[1]) ** 2) / (0.2 * r) ** 2
            gloss = np.where(mask, 0.6 * np.exp(-spot), gloss)
        elif kind == BOX:
            # Flat-shaded cube seen from above: front, top and side faces with straight edges.
            w, h = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.6, 0.9)
            dx, dy = r * 0.4 * rng.choice([-1, 1]), r * 0.35
            x0, x1, y0, y1 = cx - w, cx + w, cy - h + dy, cy + h + dy
            xs = x1 if dx > 0 else x0
            faces = [([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], 0.75),
                     ([(x0, y0), (x1, y0), (x1 + dx, y0 - dy), (x0 + dx, y0 - dy)], 1.0),
                     ([(xs, y0), (xs, y1), (xs + dx, y1 - dy), (xs + dx, y0 - dy)], 0.5)]
            mask = np.zeros((s, s), bool)
            for pts, val in faces:
                face = _polygon_mask(s, pts)
                shade = np.where(face, val * rng.uniform(0.9, 1.1), shade)
                gloss[face] = 0
                mask |= face
        else:
            mask = _blob_mask(rng, s, cy, cx, r, 0.25)
            shade = np.where(mask, 1.0, shade)
            gloss[mask] = 0
        label[mask] = kind

    # Render colours from the labels, then add clutter labelled 0 ("other"):
    # poles, wires and small odd-coloured patches that belong to no class.
    img = np.zeros((s, s, 3), np.float32)
    for k, t in tex.items():
        img[label == k] = t[label == k]
    img = img * shade[..., None] + gloss[..., None]
    for _ in range(rng.integers(1, 4)):
        colour = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:  # pole or wire: a thin long bar
            x0, y0 = rng.uniform(0, s, 2)
            ang, ln, wd = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7) * s, rng.uniform(1.5, 3)
            dx, dy = np.cos(ang) * ln, np.sin(ang) * ln
            nx, ny = -np.sin(ang) * wd, np.cos(ang) * wd
            mask = _polygon_mask(s, [(x0, y0), (x0 + dx, y0 + dy), (x0 + dx + nx, y0 + dy + ny), (x0 + nx, y0 + ny)])
        else:  # small patch (sign, litter)
            mask = _blob_mask(rng, s, rng.uniform(0, s), rng.uniform(0, s), s * rng.uniform(0.03, 0.06), 0.4)
        img[mask] = colour
        label[mask] = 0

    # Camera: colour cast, blur, sensor noise.
    img *= rng.uniform(0.9, 1.1, 3) * rng.uniform(0.85, 1.15)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    img = np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))), np.float32)
    img += rng.normal(0, rng.uniform(3, 8), img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def generate_demo_dataset(root, *, seed: int = 0, num_train: int = 400, num_val: int = 50,
                          image_size: int = DEMO_IMAGE_SIZE) -> pathlib.Path:
    """Write the demo dataset under ``root`` in the ADE20K layout and return ``root``."""
    root = pathlib.Path(root)
    for split_id, (split, n) in enumerate([("training", num_train), ("validation", num_val)]):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            rgb, label = _render_scene(rng, image_size)
            stem = f"demo_{split}_{i:05d}"
            Image.fromarray(rgb).save(root / "images" / split / f"{stem}.jpg", quality=90)
            Image.fromarray(label).save(root / "annotations" / split / f"{stem}.png")
    id2label = {str(i): {"name": name, "color": list(DEMO_COLORS[name])} for i, name in enumerate(DEMO_CLASSES)}
    (root / "id2label.json").write_text(json.dumps(id2label, indent=2) + "\n")
    return root
