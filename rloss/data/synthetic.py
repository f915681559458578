"""The built-in synthetic scribble data set, deterministic from a seed, in the VOC layout.

Each image shows one to three objects of five shape classes (ellipse, rectangle,
triangle, star, blob) on a textured background. Objects sit at random places,
sizes and rotations, may overlap (the later drawn in front) and are filled with
a jittered class colour, a shading gradient, a texture (stripes or smooth
noise) and per-pixel noise; some are close in colour to the background. Edges
are anti-aliased (drawn from signed distances) at any resolution.

Scribbles imitate human ones: a few smooth strokes well inside every visible
object part (its mask eroded) and in the background away from the objects,
covering about 2-5 % of the pixels at every size.

ROOT/JPEGImages/<id>.png                  RGB images (PNG: no JPEG artefacts); 8-bit grey with channels=1
ROOT/SegmentationClassAug/<id>.png        full masks, class per pixel
ROOT/pascal_2012_scribble/<id>.png        scribbles, 255 = unlabeled
ROOT/ImageSets/Segmentation/{train,val}.txt
ROOT/classes.txt, ROOT/synthetic.json     class names; the generation summary

Image ``i`` of split ``s`` draws from its own random stream, derived from
``(seed, s, i)``, so it does not depend on how many images the splits hold.

``channels=1`` draws the same scenes (the same masks and scribbles) with grey levels in place of
the colours (:data:`CLASS_GREYS`, :data:`BACKGROUND_GREYS`: each class its own level) and writes
the mean of the three bands as an 8-bit greyscale PNG.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from .folder import SYNTHETIC_IN_PROGRESS, dataset_output_folder
from .io import IGNORE_INDEX, DataError, save_image, save_label_png, write_text_atomic

__all__ = ["CLASS_NAMES", "MIN_SIZE", "MAX_SIZE", "generate_synthetic", "make_sample", "stroke_width"]

CLASS_NAMES = ("background", "ellipse", "rectangle", "triangle", "star", "blob")
MIN_SIZE, MAX_SIZE = 32, 1024
SPLITS = ("train", "val")  # their order is part of each image's seed: never reorder
MIN_SCRIBBLED_AREA = 20  # visible parts larger than this many pixels always get a scribble

# Characteristic RGB colour of each object class (jittered per object) and background base colours.
CLASS_COLOURS = np.array(
    [[0, 0, 0], [205, 60, 50], [50, 90, 205], [225, 195, 45], [165, 60, 180], [45, 170, 120]], dtype=np.float64
)
BACKGROUND_COLOURS = np.array(
    [[115, 135, 95], [160, 140, 115], [120, 130, 150], [95, 95, 100], [175, 172, 160], [140, 150, 130]],
    dtype=np.float64,
)
# The grey data set's levels (channels=1), in place of the colours above: classes differ in intensity,
# objects lie below or above the background's middle grey.
CLASS_GREYS = np.repeat(np.array([0, 30, 70, 185, 220, 250], dtype=np.float64)[:, None], 3, axis=1)
BACKGROUND_GREYS = np.repeat(np.array([120, 135, 128, 112, 142, 125], dtype=np.float64)[:, None], 3, axis=1)
CHANNELS = (1, 3)
# Chance that an object's colour is pulled close to the background's: how much colour tells the
# objects from the background (`rloss data synthetic --low-contrast`; 0.2 in the built-in set).
LOW_CONTRAST_P = 0.2
LABELED_TARGET = (0.028, 0.044)  # per image, about the fraction of all pixels that strokes aim to cover ...
OBJECT_SHARE, BACKGROUND_SHARE = 1.6, 0.8  # ... times these factors within objects and the background


# ---------------------------------------------------------------------------------------------- textures


def _spline_weights(n: int, period: float) -> np.ndarray:
    """[n, cells + 3] cubic B-spline weights of lattice nodes ``period`` pixels apart."""
    cells = max(1, math.ceil(n / period))
    t = (np.arange(n) + 0.5) / period
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.zeros((n, cells + 3))
    rows = np.arange(n)
    w[rows, i] = (1 - f) ** 3 / 6
    w[rows, i + 1] = (3 * f**3 - 6 * f**2 + 4) / 6
    w[rows, i + 2] = (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6
    w[rows, i + 3] = f**3 / 6
    return w


def _smooth_noise(rng: np.random.Generator, height: int, width: int, period: float, channels: int = 1) -> np.ndarray:
    """Smooth random field ``[channels, height, width]`` of unit variance per pixel,
    with features about ``period`` pixels across (B-spline interpolated lattice noise)."""
    period = max(float(period), 1.0)
    wy, wx = _spline_weights(height, period), _spline_weights(width, period)
    lattice = rng.standard_normal((channels, wy.shape[1], wx.shape[1]))
    field = wy @ lattice @ wx.T
    return field / np.sqrt(np.outer((wy**2).sum(1), (wx**2).sum(1)))


def _background(rng: np.random.Generator, size: int, colours: np.ndarray = BACKGROUND_COLOURS) -> np.ndarray:
    """Float RGB ``[size, size, 3]``: a two-colour gradient with coarse and fine smooth noise."""
    c0 = colours[rng.integers(len(colours))] + rng.normal(0, 15, 3)
    c1 = c0 * rng.uniform(0.65, 1.05) + rng.normal(0, 14, 3)
    angle = rng.uniform(0, 2 * math.pi)
    coords = (np.arange(size) + 0.5) / size - 0.5
    t = np.clip(coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle) + 0.5, 0, 1)[..., None]
    image = c0 * (1 - t) + c1 * t
    coarse = _smooth_noise(rng, size, size, size / rng.uniform(2, 4), channels=2)
    fine = _smooth_noise(rng, size, size, size / rng.uniform(10, 18))
    tint = rng.normal(0, 1, 3)
    image += coarse[0][..., None] * rng.uniform(10, 20) + coarse[1][..., None] * tint * rng.uniform(3, 7)
    image += fine[0][..., None] * rng.uniform(3, 9)
    return image


# ------------------------------------------------------------------------------------------------ shapes


def _polygon_sdf(y: np.ndarray, x: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to a simple polygon with ``vertices`` [n, 2] as (y, x)."""
    shape = np.broadcast_shapes(y.shape, x.shape)
    d2 = np.full(shape, np.inf)
    inside = np.zeros(shape, dtype=bool)
    for (ay, ax), (by, bx) in zip(vertices, np.roll(vertices, -1, axis=0)):
        ey, ex = by - ay, bx - ax
        wy, wx = y - ay, x - ax
        t = np.clip((wy * ey + wx * ex) / (ey * ey + ex * ex), 0, 1)
        d2 = np.minimum(d2, (wy - ey * t) ** 2 + (wx - ex * t) ** 2)
        if ey != 0:  # even-odd rule: does a ray to +x cross this edge?
            inside ^= ((ay > y) != (by > y)) & (x < ax + (y - ay) * ex / ey)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def _polar_sdf(y, x, cy, cx, radius, harmonics) -> np.ndarray:
    """Approximate signed distance to the star-shaped curve r(t) = radius (1 + sum a cos(k t + phase))."""
    dy, dx = y - cy, x - cx
    rho = np.sqrt(dy * dy + dx * dx)
    theta = np.arctan2(dy, dx)
    r = np.ones_like(theta)
    dr = np.zeros_like(theta)
    for k, a, phase in harmonics:
        r = r + a * np.cos(k * theta + phase)
        dr = dr - a * k * np.sin(k * theta + phase)
    r, dr = radius * r, radius * dr
    return (rho - r) / np.sqrt(1 + (dr / np.maximum(rho, 1e-6)) ** 2)


def _ellipse_sdf(y, x, cy, cx, a, b, angle) -> np.ndarray:
    """First-order signed distance to an ellipse with semi-axes a (along ``angle``) and b."""
    c, s = math.cos(angle), math.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(q, 1e-9)
    return (q - 1) / np.maximum(grad, 1e-9)


def _rotated(points: np.ndarray, angle: float, cy: float, cx: float) -> np.ndarray:
    """(dy, dx) offsets rotated by ``angle`` and moved to (cy, cx)."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = points[:, 0], points[:, 1]
    return np.stack([cy + dx * s + dy * c, cx + dx * c - dy * s], axis=1)


def _random_shape(rng: np.random.Generator, cls: int, cy: float, cx: float, radius: float):
    """A signed-distance function ``sdf(y, x)`` of one object of class ``cls`` and its extent (px from the centre)."""
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASS_NAMES[cls]
    if name == "ellipse":
        a = radius * rng.uniform(0.9, 1.15)
        b = a * rng.uniform(0.5, 1.0)
        return (lambda y, x: _ellipse_sdf(y, x, cy, cx, a, b, angle)), a
    if name == "rectangle":
        hx = radius * rng.uniform(0.8, 1.05)
        hy = hx * rng.uniform(0.45, 0.95)
        corners = np.array([[-hy, -hx], [-hy, hx], [hy, hx], [hy, -hx]])
        vertices = _rotated(corners, angle, cy, cx)
        return (lambda y, x: _polygon_sdf(y, x, vertices)), math.hypot(hx, hy)
    if name == "triangle":
        angles = angle + 2 * math.pi * np.arange(3) / 3 + rng.uniform(-0.3, 0.3, 3)
        radii = radius * 1.2 * rng.uniform(0.85, 1.1, 3)
        vertices = np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], axis=1)
        return (lambda y, x: _polygon_sdf(y, x, vertices)), float(radii.max())
    if name == "star":
        points = int(rng.integers(5, 7))
        outer = radius * 1.2
        inner = outer * rng.uniform(0.42, 0.58)
        angles = angle + math.pi * np.arange(2 * points) / points
        radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
        vertices = np.stack([cy + radii * np.sin(angles), cx + radii * np.cos(angles)], axis=1)
        return (lambda y, x: _polygon_sdf(y, x, vertices)), outer
    # blob: a smooth irregular closed curve
    harmonics = [(2, rng.uniform(0.08, 0.22), rng.uniform(0, 2 * math.pi))]
    harmonics += [(k, rng.uniform(0.0, 0.12 / (k - 2)), rng.uniform(0, 2 * math.pi)) for k in (3, 4, 5)]
    extent = radius * (1 + sum(a for _, a, _ in harmonics))
    return (lambda y, x: _polar_sdf(y, x, cy, cx, radius, harmonics)), extent


def _object_fill(rng, cls, y, x, cy, cx, radius, background_colour, low_contrast: float,
                 colours: np.ndarray = CLASS_COLOURS) -> np.ndarray:
    """Float RGB fill of one object over the crop (y [h, 1], x [1, w]): jittered class colour,
    shading gradient, a texture and (sometimes) a colour close to the background."""
    base = (colours[cls] + rng.normal(0, 14, 3)) * rng.uniform(0.8, 1.12)
    if rng.random() < low_contrast:
        base = background_colour + (base - background_colour) * rng.uniform(0.2, 0.45)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / radius
    shade = np.clip(1 + rng.uniform(0.1, 0.35) * ramp, 0.5, 1.5)
    fill = base * shade[..., None]
    kind = rng.integers(3)  # 0 stripes, 1 smooth noise, 2 both
    if kind in (0, 2):
        period = max(radius * rng.uniform(0.3, 0.7), 4.0)
        phi = rng.uniform(0, 2 * math.pi)
        stripes = np.sin(2 * math.pi * ((x - cx) * math.cos(phi) + (y - cy) * math.sin(phi)) / period + rng.uniform(0, 6.3))
        fill = fill + (stripes * rng.uniform(6, 18))[..., None] * rng.uniform(0.6, 1.0, 3)
    if kind in (1, 2):
        h, w = np.broadcast_shapes(y.shape, x.shape)
        noise = _smooth_noise(rng, h, w, max(radius * rng.uniform(0.25, 0.5), 3.0))[0]
        fill = fill + (noise * rng.uniform(8, 20))[..., None]
    return fill


# --------------------------------------------------------------------------------------------- scribbles


def stroke_width(size: int) -> int:
    """Scribble stroke width in pixels at image side ``size``: about 1.2 % of it, at least 1."""
    return max(1, round(size * 0.012))


def _disk(width: int) -> np.ndarray:
    """Pixel offsets [k, 2] of a round brush ``width`` pixels wide."""
    r = width / 2
    k = math.floor(r)
    dy, dx = np.mgrid[-k : k + 1, -k : k + 1]
    keep = dy * dy + dx * dx <= r * r
    return np.stack([dy[keep], dx[keep]], axis=1)


def _walk(rng, allowed: np.ndarray, start: tuple[int, int], length: float, step: float, scale: float) -> np.ndarray:
    """A smooth random stroke [n, 2] (y, x) from ``start`` of about ``length`` pixels whose
    points stay on ``allowed`` pixels: it heads where there is room, bends gently, veers a
    little near the region's edge and ends where it would leave."""
    h, w = allowed.shape
    y, x = float(start[0]), float(start[1])
    # Head where a straight line runs furthest (of a dozen random directions), as a person would.
    directions = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(12) / 12
    t = np.arange(1, max(2, math.ceil(length / step)) + 1)[:, None] * step
    iy = np.rint(y + t * np.sin(directions)).astype(np.int64)
    ix = np.rint(x + t * np.cos(directions)).astype(np.int64)
    ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    ok[ok] = allowed[iy[ok], ix[ok]]
    runs = np.where(ok.all(axis=0), len(t), np.argmin(ok, axis=0)).astype(np.float64) + 1
    theta = float(directions[rng.choice(len(directions), p=runs**3 / (runs**3).sum())])
    curvature = rng.normal(0, 0.4 / scale)  # radians per pixel
    drift = 0.12 / scale * math.sqrt(step)
    veer = 0.0  # how far the stroke has turned away from edges so far
    points = [(y, x)]
    travelled = 0.0
    while travelled < length:
        curvature = 0.95 * curvature + rng.normal(0, drift)
        theta += curvature * step
        sign = 1 if rng.random() < 0.5 else -1
        for turn in (0.0, 0.08, -0.08, 0.16, -0.16, 0.25, -0.25):
            if turn and veer + abs(turn) > 1.2:
                continue
            ny, nx = y + step * math.sin(theta + sign * turn), x + step * math.cos(theta + sign * turn)
            iy_, ix_ = int(round(ny)), int(round(nx))
            if 0 <= iy_ < h and 0 <= ix_ < w and allowed[iy_, ix_]:
                if turn:
                    theta += sign * turn
                    veer += abs(turn)
                    curvature = 0.0
                break
        else:
            break  # it would leave the region: the stroke ends here
        y, x = ny, nx
        points.append((y, x))
        travelled += step
    return np.array(points)


def _paint(points: np.ndarray, brush: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean [h, w] of the pixels the brush covers along the stroke's points."""
    centres = np.unique(np.rint(points).astype(np.int64), axis=0)
    pixels = (centres[:, None, :] + brush[None, :, :]).reshape(-1, 2)
    h, w = shape
    ok = (pixels[:, 0] >= 0) & (pixels[:, 0] < h) & (pixels[:, 1] >= 0) & (pixels[:, 1] < w)
    out = np.zeros(shape, dtype=bool)
    out[pixels[ok, 0], pixels[ok, 1]] = True
    return out


def _scribble_region(rng, region: np.ndarray, margin: float, target: float, strokes: int, width: int) -> np.ndarray:
    """Scribble pixels (boolean, like ``region``) of one connected region: ``strokes`` or more
    strokes aiming to cover ``target`` pixels, kept to the region eroded by ``margin`` pixels
    (or to its deepest pixels where nothing is that deep)."""
    padded = np.pad(region, 1)  # the image border counts as the region's boundary
    depth = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    inner = depth > margin
    if not inner.any():
        inner = depth >= depth.max() - 0.5
    area = float(region.sum())
    scale = max(math.sqrt(area / math.pi), 1.0)
    step = max(0.5, width / 3)
    brush = _disk(width)
    candidates = np.flatnonzero(inner)
    weights = depth.ravel()[candidates]
    weights = weights / weights.sum()
    painted = np.zeros_like(region)
    swept = 2 * (width // 2) + 1  # pixels the brush covers across an axis-parallel stroke
    total_length = target / swept
    for stroke in range(strokes + 3):
        covered = int(painted.sum())
        if stroke >= strokes and covered >= 0.8 * target:
            break
        length = (total_length / strokes if stroke < strokes else (target - covered) / swept) * rng.uniform(0.8, 1.25)
        start = np.unravel_index(candidates[rng.choice(len(candidates), p=weights)], region.shape)
        points = _walk(rng, inner, start, length, step, scale)
        painted |= _paint(points, brush, region.shape) & inner
    return painted


def stroke_margin(size: int) -> float:
    """How far inside its region a stroke keeps at image side ``size``: 3 % of it, at least 1.5 px."""
    return max(1.5, 0.03 * size)


def scribble_instances(rng: np.random.Generator, instances: np.ndarray, classes: np.ndarray, width: int,
                       margin: float) -> np.ndarray:
    """Human-like scribbles: class ids on stroke pixels, 255 elsewhere, for an instance map
    (0 = background, k = object k) whose instance k has class ``classes[k]`` (pixels of any other
    value get none). Every connected part of an instance larger than ``MIN_SCRIBBLED_AREA`` pixels
    (and the background's largest part) gets one or two strokes (the background two or three),
    ``width`` pixels wide and ``margin`` pixels inside it, together aiming at ``LABELED_TARGET`` of
    the image (objects ``OBJECT_SHARE`` times that share of their area, the background
    ``BACKGROUND_SHARE`` times)."""
    fraction = rng.uniform(*LABELED_TARGET)
    scribble = np.full(instances.shape, IGNORE_INDEX, dtype=np.uint8)
    for k in range(len(classes)):
        parts, n = ndimage.label(instances == k)
        if n == 0:
            continue
        areas = np.bincount(parts.ravel(), minlength=n + 1)[1:]
        boxes = ndimage.find_objects(parts)
        for part in range(1, n + 1):
            area = int(areas[part - 1])
            if area <= MIN_SCRIBBLED_AREA and not (k == 0 and area == areas.max()):
                continue  # slivers go without (the background's largest part never does)
            box = boxes[part - 1]
            region = parts[box] == part
            if k == 0:  # the background: strokes further from the objects, a few of them
                strokes = 2 + int(rng.integers(2))
                painted = _scribble_region(rng, region, 1.5 * margin, BACKGROUND_SHARE * fraction * area, strokes, width)
            else:
                strokes = 1 + int(rng.random() < 0.4)
                painted = _scribble_region(rng, region, margin, OBJECT_SHARE * fraction * area, strokes, width)
            scribble[box][painted] = classes[k]
    return scribble


# ------------------------------------------------------------------------------------------------ sample


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    return int(size)


def make_sample(rng: np.random.Generator, size: int, low_contrast: float = LOW_CONTRAST_P,
                channels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic sample drawn from ``rng``: image uint8 [size, size, 3] (``channels`` 1:
    [size, size], grey), full mask uint8 [size, size] (class per pixel) and scribble uint8
    [size, size] (255 = unlabeled). ``low_contrast``: the chance that an object's colour is pulled
    close to the background's."""
    size = _check_size(size)
    low_contrast = _check_share("low_contrast", low_contrast)
    channels = _check_channels(channels)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    class_colours, background_colours = (CLASS_COLOURS, BACKGROUND_COLOURS) if channels == 3 else \
        (CLASS_GREYS, BACKGROUND_GREYS)
    background = _background(rng, size, background_colours)
    image = background.copy()
    instances = np.zeros((size, size), dtype=np.int64)
    classes = [0]
    centres: list[tuple[float, float, float]] = []
    softness = max(1.0, size / 256) * rng.uniform(0.8, 1.5)  # edge blur, in pixels
    for k in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        radius = size * rng.uniform(0.13, 0.26)
        if centres and rng.random() < 0.35:  # next to an earlier object, so they overlap
            py, px, pr = centres[int(rng.integers(len(centres)))]
            a = rng.uniform(0, 2 * math.pi)
            d = (pr + radius) * rng.uniform(0.45, 0.85)
            cy = float(np.clip(py + d * math.sin(a), 0.1 * size, 0.9 * size))
            cx = float(np.clip(px + d * math.cos(a), 0.1 * size, 0.9 * size))
        else:
            cy, cx = (float(v) for v in rng.uniform(0.15 * size, 0.85 * size, 2))
        centres.append((cy, cx, radius))
        sdf, extent = _random_shape(rng, cls, cy, cx, radius)
        reach = extent + 2 * softness + 2
        y0, y1 = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach) + 1)
        x0, x1 = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach) + 1)
        y = np.arange(y0, y1, dtype=np.float64)[:, None]
        x = np.arange(x0, x1, dtype=np.float64)[None, :]
        distance = sdf(y, x)
        coverage = np.clip(0.5 - distance / softness, 0, 1)[..., None]  # > 0.5 exactly where inside
        fill = _object_fill(rng, cls, y, x, cy, cx, radius, background[y0:y1, x0:x1].mean(axis=(0, 1)),
                             low_contrast, class_colours)
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - coverage) + fill * coverage
        instances[y0:y1, x0:x1][distance < 0] = k + 1
        classes.append(cls)
    image += rng.normal(0, rng.uniform(2.5, 7), image.shape)
    if channels == 1:
        image = image.mean(axis=2)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    classes_arr = np.array(classes, dtype=np.uint8)
    mask = classes_arr[instances]
    scribble = scribble_instances(rng, instances, classes_arr, stroke_width(size), stroke_margin(size))
    return image, mask, scribble


# ------------------------------------------------------------------------------------------------ data set


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_share(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _check_channels(value) -> int:
    if isinstance(value, bool) or value not in CHANNELS:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {value!r}")
    return int(value)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split``: depends on (seed, split, index) only."""
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index))
    return np.random.Generator(np.random.PCG64(sequence))


def generate_synthetic(
    out: Path,
    size: int = 64,
    n_train: int = 200,
    n_val: int = 50,
    seed: int = 0,
    progress: bool = True,
    low_contrast: float = LOW_CONTRAST_P,
    overwrite: bool = False,
    channels: int = 3,
) -> dict:
    """Writes the synthetic data set (``n_train`` + ``n_val`` images of ``size`` x ``size``) to ``out``.

    Same arguments give byte-identical files. Returns a summary (also written to
    ROOT/synthetic.json, without ``root`` so the folder's files do not depend on
    where it lies): sizes, class names and the labeled (scribble) fraction. ``low_contrast``:
    the share of objects coloured close to their background (colour tells those apart less).
    ``channels`` 1 writes 8-bit greyscale images (train with ``data.channels: 1``).
    ``out`` must be missing or empty; ``overwrite`` replaces a data set there (what a previous one
    wrote is removed first; other files are kept: :func:`rloss.data.folder.dataset_output_folder`).
    """
    from tqdm import tqdm

    size = _check_size(size)
    n_train, n_val = _check_count("n_train", n_train), _check_count("n_val", n_val)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    low_contrast = _check_share("low_contrast", low_contrast)
    channels = _check_channels(channels)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder")
    dataset_output_folder(root, overwrite)
    in_progress = root / SYNTHETIC_IN_PROGRESS  # until synthetic.json ends the set: a rerun may replace it
    in_progress.touch()

    jobs = [(split, i) for split, n in zip(SPLITS, (n_train, n_val)) for i in range(n)]
    ids: dict[str, list[str]] = {split: [] for split in SPLITS}
    fractions, objects = [], []
    for split, i in tqdm(jobs, desc="synthetic", unit="img", disable=not progress, file=sys.stderr):
        sample_id = f"{split}_{i:05d}"
        image, mask, scribble = make_sample(sample_rng(seed, split, i), size, low_contrast, channels)
        save_image(image, root / "JPEGImages" / f"{sample_id}.png")
        save_label_png(mask, root / "SegmentationClassAug" / f"{sample_id}.png")
        save_label_png(scribble, root / "pascal_2012_scribble" / f"{sample_id}.png")
        ids[split].append(sample_id)
        fractions.append(float((scribble != IGNORE_INDEX).mean()))
        objects.append(len(np.unique(mask)) - 1)
    for split in SPLITS:
        write_text_atomic(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids[split]) + "\n")
    write_text_atomic(root / "classes.txt", "\n".join(CLASS_NAMES) + "\n")

    summary = {
        "size": size,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        **({"low_contrast": low_contrast} if low_contrast != LOW_CONTRAST_P else {}),  # the built-in set's file as before
        **({"channels": channels} if channels != 3 else {}),
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "labeled_fraction": float(np.mean(fractions)),
        "labeled_fraction_min": float(np.min(fractions)),
        "labeled_fraction_max": float(np.max(fractions)),
        "object_classes_per_image": float(np.mean(objects)),
        "stroke_width": stroke_width(size),
    }
    write_text_atomic(root / "synthetic.json", json.dumps(summary, indent=1) + "\n")
    in_progress.unlink()
    return {"root": str(root), **summary}
