"""Deterministic synthetic "coloured shapes on clutter" image set.

Every image contains exactly one *class object* — a saturated, coloured shape —
placed at a random position on a cluttered background made of

* a smooth, low-saturation colour-noise field,
* a few desaturated (grey-ish) distractor shapes, lines and blobs,
* per-pixel Gaussian noise.

The class is a unique ``(colour, shape)`` pair (see :data:`CLASS_NAMES`), so
colour alone identifies the class while the shape is a second, redundant cue.
Distractors are always desaturated and therefore never carry a class colour.

For every image the boolean mask of the class object is returned as well, so
the data can be used to evaluate attention/saliency maps against ground truth.

Everything is driven by a :class:`numpy.random.Generator`; a given seed always
produces byte-identical images, labels and masks.

Array conventions
-----------------
* image: ``uint8`` array of shape ``(H, W, 3)`` (RGB), ``H == W == image_size``
* mask: ``bool`` array of shape ``(H, W)``; ``True`` on the class object
* batches stack these along a leading ``N`` axis.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASS_NAMES",
    "CLASS_COLOURS",
    "CLASS_SHAPES",
    "SHAPE_NAMES",
    "MAX_DISTRACTOR_CHROMA",
    "SyntheticShapesConfig",
    "render_sample",
    "generate_dataset",
    "dataset_labels",
    "save_dataset",
    "class_file_stem",
    "write_labelled_folder",
]

# ---------------------------------------------------------------------------
# Class definitions
# ---------------------------------------------------------------------------

#: Shape primitives known to the renderer.
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

#: Human-readable class labels (index == class id). Used as ``id2label``.
CLASS_NAMES: tuple[str, ...] = (
    "red circle",
    "green square",
    "blue triangle",
    "yellow star",
    "magenta cross",
    "cyan diamond",
)

#: Nominal RGB colour of each class (index == class id).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (225, 35, 35),  # red
    (35, 190, 45),  # green
    (40, 70, 230),  # blue
    (235, 210, 25),  # yellow
    (215, 40, 210),  # magenta
    (25, 205, 215),  # cyan
)

#: Shape of each class (index == class id).
CLASS_SHAPES: tuple[str, ...] = tuple(name.split(" ", 1)[1] for name in CLASS_NAMES)

#: Upper bound on ``max(rgb) - min(rgb)`` of every distractor / background
#: colour *before* pixel noise. Class colours have a chroma above 150.
MAX_DISTRACTOR_CHROMA: int = 36

# Supersampling factor used to anti-alias the class object.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class SyntheticShapesConfig:
    """Parameters of the synthetic data set.

    Attributes:
        image_size: side length ``S`` of the square images (pixels).
        seed: seed of the random generator used by :func:`generate_dataset`.
        num_samples: number of images ``N``.
        min_object_frac: smallest object extent as a fraction of ``image_size``.
        max_object_frac: largest object extent as a fraction of ``image_size``.
        max_rotation_deg: the object is rotated uniformly in ``±max_rotation_deg``.
        colour_jitter: maximum per-channel offset added to the class colour.
        pixel_noise_std: standard deviation of the additive Gaussian pixel noise.
        num_distractor_shapes: inclusive ``(min, max)`` count of grey distractor shapes.
        num_distractor_lines: inclusive ``(min, max)`` count of grey random lines.
        num_distractor_blobs: inclusive ``(min, max)`` count of grey soft blobs.
    """

    image_size: int = 96
    seed: int = 0
    num_samples: int = 600
    min_object_frac: float = 0.22
    max_object_frac: float = 0.40
    max_rotation_deg: float = 15.0
    colour_jitter: int = 18
    pixel_noise_std: float = 7.0
    num_distractor_shapes: tuple[int, int] = (2, 5)
    num_distractor_lines: tuple[int, int] = (2, 5)
    num_distractor_blobs: tuple[int, int] = (1, 3)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 < self.min_object_frac <= self.max_object_frac <= 0.9:
            raise ValueError("need 0 < min_object_frac <= max_object_frac <= 0.9")
        if self.num_samples < 0:
            raise ValueError("num_samples must be >= 0")


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices ``(K, 2)`` of ``shape`` centred at 0 and fitting in ``[-1, 1]^2``."""
    if shape == "circle":
        t = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.85
    if shape == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2.0 * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        pts[:, 1] += 0.25  # centre the bounding box vertically
        return pts
    if shape == "star":
        t = -math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        pts[:, 1] += 0.1
        return pts
    if shape == "cross":
        a, b = 1.0, 0.33
        return np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b],
             [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]],
            dtype=np.float64,
        )
    if shape == "diamond":
        return np.array([[0, -1], [0.68, 0], [0, 1], [-0.68, 0]], dtype=np.float64)
    raise ValueError(f"unknown shape {shape!r}")


_UNIT_POLYGONS: dict[str, np.ndarray] = {name: _unit_polygon(name) for name in SHAPE_NAMES}


def _place_polygon(
    rng: np.random.Generator,
    shape: str,
    extent: float,
    angle_deg: float,
    image_size: int,
    margin: float = 1.0,
) -> np.ndarray:
    """Scale, rotate and translate ``shape`` so that it lies fully in the image.

    Returns vertices ``(K, 2)`` in pixel coordinates ``(x, y)``.
    """
    pts = _UNIT_POLYGONS[shape] * (extent / 2.0)
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = pts @ rot.T
    lo = pts.min(axis=0)
    hi = pts.max(axis=0)
    # Allowed range of the centre so that every vertex stays inside.
    cmin = margin - lo
    cmax = (image_size - 1 - margin) - hi
    cmax = np.maximum(cmax, cmin)
    centre = rng.uniform(cmin, cmax)
    return pts + centre


def _grey(rng: np.random.Generator, lo: int = 25, hi: int = 235) -> tuple[int, int, int]:
    """Random desaturated colour: a grey level plus a small chroma offset."""
    g = int(rng.integers(lo, hi + 1))
    off = rng.integers(-MAX_DISTRACTOR_CHROMA // 2, MAX_DISTRACTOR_CHROMA // 2 + 1, size=3)
    rgb = np.clip(g + off, 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Smooth low-saturation colour field, ``float32`` array ``(S, S, 3)``."""
    grid = int(rng.integers(3, 7))
    base = rng.uniform(70.0, 190.0)
    lum = base + rng.normal(0.0, 28.0, size=(grid, grid, 1))
    chroma = rng.uniform(-MAX_DISTRACTOR_CHROMA / 2, MAX_DISTRACTOR_CHROMA / 2, size=(grid, grid, 3))
    small = np.clip(lum + chroma, 0, 255).astype(np.uint8)
    big = Image.fromarray(small).resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _draw_distractors(
    rng: np.random.Generator, canvas: Image.Image, cfg: SyntheticShapesConfig
) -> None:
    """Draw grey distractor blobs, shapes and lines onto ``canvas`` in place."""
    s = cfg.image_size
    draw = ImageDraw.Draw(canvas)

    for _ in range(int(rng.integers(cfg.num_distractor_blobs[0], cfg.num_distractor_blobs[1] + 1))):
        cx, cy = rng.uniform(0, s, size=2)
        rx, ry = rng.uniform(0.06 * s, 0.2 * s, size=2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_grey(rng))

    for _ in range(int(rng.integers(cfg.num_distractor_shapes[0], cfg.num_distractor_shapes[1] + 1))):
        shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
        extent = rng.uniform(0.10, 0.30) * s
        angle = rng.uniform(-180.0, 180.0)
        pts = _place_polygon(rng, shape, extent, angle, s, margin=-0.1 * s)
        fill = _grey(rng)
        if rng.random() < 0.3:  # outline only
            draw.polygon([tuple(p) for p in pts], outline=fill, width=int(rng.integers(1, 3)))
        else:
            draw.polygon([tuple(p) for p in pts], fill=fill)

    for _ in range(int(rng.integers(cfg.num_distractor_lines[0], cfg.num_distractor_lines[1] + 1))):
        x0, y0, x1, y1 = rng.uniform(-0.1 * s, 1.1 * s, size=4)
        draw.line([(x0, y0), (x1, y1)], fill=_grey(rng), width=int(rng.integers(1, 4)))


def _render(
    rng: np.random.Generator, label: int, cfg: SyntheticShapesConfig
) -> tuple[np.ndarray, np.ndarray]:
    s = cfg.image_size
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")

    # 1. smooth background + clutter
    bg = _background(rng, s)
    canvas = Image.fromarray(bg.astype(np.uint8))
    _draw_distractors(rng, canvas, cfg)
    img = np.asarray(canvas, dtype=np.float32)

    # 2. class object, anti-aliased via supersampled coverage
    extent = rng.uniform(cfg.min_object_frac, cfg.max_object_frac) * s
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    pts = _place_polygon(rng, CLASS_SHAPES[label], extent, angle, s, margin=1.0)
    k = _SUPERSAMPLE
    hi_res = Image.new("L", (s * k, s * k), 0)
    # pixel (i, j) covers [j, j+1) x [i, i+1); vertex coords address pixel centres
    ImageDraw.Draw(hi_res).polygon([((x + 0.5) * k, (y + 0.5) * k) for x, y in pts], fill=255)
    alpha = (
        np.asarray(hi_res, dtype=np.float32).reshape(s, k, s, k).mean(axis=(1, 3)) / 255.0
    )
    mask = alpha >= 0.5

    colour = np.asarray(CLASS_COLOURS[label], dtype=np.float32)
    colour = colour + rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=3)
    colour = colour * rng.uniform(0.85, 1.08)
    # gentle linear shading across the object
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    shade = 1.0 + gx * xx + gy * yy
    obj = np.clip(colour[None, None, :] * shade[..., None], 0, 255)
    img = img * (1.0 - alpha[..., None]) + obj * alpha[..., None]

    # 3. pixel noise over everything
    img = img + rng.normal(0.0, cfg.pixel_noise_std, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def render_sample(
    rng: np.random.Generator,
    label: int,
    image_size: int = 96,
    config: SyntheticShapesConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image containing a single object of class ``label``.

    Args:
        rng: random generator; consumed deterministically.
        label: class id in ``[0, len(CLASS_NAMES))``.
        image_size: side length ``S``; ignored if ``config`` is given.
        config: optional full configuration (its ``seed``/``num_samples`` are unused).

    Returns:
        ``(image, mask)``: ``uint8 (S, S, 3)`` RGB image and ``bool (S, S)``
        object mask.
    """
    cfg = config if config is not None else SyntheticShapesConfig(image_size=image_size)
    return _render(rng, int(label), cfg)


def generate_dataset(
    n: int,
    seed: int,
    image_size: int = 96,
    config: SyntheticShapesConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` images with balanced labels, deterministically for ``seed``.

    Label counts differ by at most one between classes; the order is shuffled.
    Each sample has its own random stream, so ``generate_dataset(m, seed)`` is a
    prefix of ``generate_dataset(n, seed)`` for ``m <= n``.

    Args:
        n: number of images ``N``.
        seed: random seed.
        image_size: side length ``S``; ignored if ``config`` is given.
        config: optional full configuration (its ``seed``/``num_samples`` are unused).

    Returns:
        ``(images, labels, masks)`` with ``images`` ``uint8 (N, S, S, 3)``,
        ``labels`` ``int64 (N,)`` and ``masks`` ``bool (N, S, S)``.
    """
    cfg = config if config is not None else SyntheticShapesConfig(image_size=image_size)
    s = cfg.image_size
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    labels = dataset_labels(n, seed)
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    masks = np.empty((n, s, s), dtype=bool)
    for i in range(n):
        images[i], masks[i] = _render(_sample_rng(seed, i), int(labels[i]), cfg)
    return images, labels, masks


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    """Independent generator of sample ``index`` of the data set ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))


def dataset_labels(n: int, seed: int) -> np.ndarray:
    """Balanced label sequence ``int64 (n,)`` used by :func:`generate_dataset`.

    Consecutive blocks of ``len(CLASS_NAMES)`` labels are random permutations of
    all classes, so every prefix is balanced up to one and the sequence for a
    larger ``n`` extends the one for a smaller ``n``.
    """
    k = len(CLASS_NAMES)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    blocks = [rng.permutation(k) for _ in range(-(-n // k))]
    flat = np.concatenate(blocks) if blocks else np.empty(0, dtype=np.int64)
    return flat[:n].astype(np.int64)


def class_file_stem(label: int | str) -> str:
    """File-name friendly class name, e.g. ``"red circle" -> "red_circle"``."""
    name = CLASS_NAMES[label] if isinstance(label, (int, np.integer)) else label
    return str(name).replace(" ", "_")


def save_dataset(
    folder: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    names: list[str] | None = None,
) -> Path:
    """Write a data set to ``folder`` as PNG files plus ``labels.json`` and ``labels.csv``.

    Layout::

        folder/
            <name>.png            RGB image
            masks/<name>.png      object mask (0 / 255, mode "L")
            labels.json           {"<name>.png": {"label": "red circle",
                                                  "label_id": 0,
                                                  "mask": "masks/<name>.png"}, ...}
            labels.csv            image,label,mask rows in image order (the evaluation
                                  data-set format of :mod:`attnlens.evaluate.data`)

    Args:
        folder: output directory (created if needed).
        images: ``uint8 (N, S, S, 3)``.
        labels: integer ``(N,)``.
        masks: ``bool (N, S, S)``.
        names: optional file stems (without extension); default ``"000000_red_circle"``.

    Returns:
        The output folder as a :class:`~pathlib.Path`.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    masks = np.asarray(masks)
    n = len(images)
    if not (len(labels) == len(masks) == n):
        raise ValueError("images, labels and masks must have the same length")
    if names is None:
        names = [f"{i:06d}_{class_file_stem(int(labels[i]))}" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise ValueError("names must be unique and match the number of images")

    out = Path(folder)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, object]] = {}
    for i, stem in enumerate(names):
        img_file = f"{stem}.png"
        mask_file = f"masks/{stem}.png"
        Image.fromarray(images[i]).save(out / img_file)
        Image.fromarray(masks[i].astype(np.uint8) * 255).save(out / mask_file)
        index[img_file] = {
            "label": CLASS_NAMES[int(labels[i])],
            "label_id": int(labels[i]),
            "mask": mask_file,
        }
    with open(out / "labels.json", "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, sort_keys=True)
        fh.write("\n")
    with open(out / "labels.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "label", "mask"])
        writer.writerows([[f"{stem}.png", CLASS_NAMES[int(labels[i])], f"masks/{stem}.png"] for i, stem in enumerate(names)])
    return out


def write_labelled_folder(
    folder: str | os.PathLike[str], n: int, seed: int, image_size: int = 96, config: SyntheticShapesConfig | None = None
) -> Path:
    """Generate ``n`` images (:func:`generate_dataset`) and save them with their masks
    (:func:`save_dataset`): an offline evaluation data set where the object alone decides the
    class, in the ``labels.csv`` format of :mod:`attnlens.evaluate.data`. Deterministic for
    ``seed``; returns the folder."""
    images, labels, masks = generate_dataset(n, seed, image_size, config)
    return save_dataset(folder, images, labels, masks)
