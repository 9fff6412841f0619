"""Tests of the deterministic synthetic shapes generator (numpy + PIL only, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from attnlens.data import (
    CLASS_COLOURS,
    CLASS_NAMES,
    CLASS_SHAPES,
    MAX_DISTRACTOR_CHROMA,
    SyntheticShapesConfig,
    generate_dataset,
    render_sample,
    save_dataset,
)
from attnlens.data import synthetic

N = 48
SIZE = 64


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_dataset(N, seed=123, image_size=SIZE)


def test_class_definitions() -> None:
    assert len(CLASS_NAMES) == 6
    assert len(set(CLASS_NAMES)) == 6
    assert len(set(CLASS_COLOURS)) == 6
    assert len(set(CLASS_SHAPES)) == 6
    for colour in CLASS_COLOURS:
        chroma = max(colour) - min(colour)
        assert chroma > 4 * MAX_DISTRACTOR_CHROMA  # clearly saturated


def test_shapes_and_dtypes(dataset) -> None:
    images, labels, masks = dataset
    assert images.shape == (N, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.shape == (N,) and labels.dtype == np.int64
    assert masks.shape == (N, SIZE, SIZE) and masks.dtype == np.bool_
    assert labels.min() >= 0 and labels.max() < len(CLASS_NAMES)


def test_default_image_size() -> None:
    img, mask = render_sample(np.random.default_rng(0), 0)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.bool_
    assert SyntheticShapesConfig().image_size == 96


def test_deterministic_for_seed(dataset) -> None:
    images, labels, masks = dataset
    images2, labels2, masks2 = generate_dataset(N, seed=123, image_size=SIZE)
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(masks, masks2)

    images3, _, _ = generate_dataset(N, seed=124, image_size=SIZE)
    assert not np.array_equal(images, images3)


def test_prefix_stable(dataset) -> None:
    images, labels, masks = dataset
    images2, labels2, masks2 = generate_dataset(10, seed=123, image_size=SIZE)
    np.testing.assert_array_equal(images[:10], images2)
    np.testing.assert_array_equal(labels[:10], labels2)
    np.testing.assert_array_equal(masks[:10], masks2)


def test_render_sample_deterministic() -> None:
    a = render_sample(np.random.default_rng(5), 3, SIZE)
    b = render_sample(np.random.default_rng(5), 3, SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        render_sample(np.random.default_rng(5), len(CLASS_NAMES), SIZE)


@pytest.mark.parametrize("n", [6, 13, N])
def test_balanced_labels(n: int) -> None:
    labels = synthetic.dataset_labels(n, seed=9)
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert counts.sum() == n
    assert counts.max() - counts.min() <= 1


def test_masks_non_empty_and_inside(dataset) -> None:
    _, _, masks = dataset
    areas = masks.reshape(N, -1).sum(axis=1)
    assert (areas > 0).all()
    # object extent 22-40 % of the side -> area well below half the image
    assert (areas < 0.25 * SIZE * SIZE).all()
    # fully inside: the border rows/columns never belong to the object
    assert not masks[:, 0, :].any() and not masks[:, -1, :].any()
    assert not masks[:, :, 0].any() and not masks[:, :, -1].any()
    # one object: bounding box about the max extent (40 %, rotation adds <= ~6 %)
    for m in masks:
        ys, xs = np.nonzero(m)
        assert np.ptp(ys) + 1 <= 0.45 * SIZE + 2
        assert np.ptp(xs) + 1 <= 0.45 * SIZE + 2
        assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 0.15 * SIZE


def test_object_pixels_carry_class_colour(dataset) -> None:
    images, labels, masks = dataset
    palette = np.asarray(CLASS_COLOURS, dtype=np.float64)
    for img, label, mask in zip(images, labels, masks):
        # erode the mask by one pixel to skip anti-aliased edge pixels
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        pix = img[inner if inner.any() else mask].astype(np.float64)
        mean = pix.mean(axis=0)
        nearest = int(np.argmin(((palette - mean) ** 2).sum(axis=1)))
        assert nearest == label, (CLASS_NAMES[label], mean)
        assert mean.max() - mean.min() > 100  # saturated


def test_background_and_distractors_are_desaturated(dataset) -> None:
    images, _, masks = dataset
    # pixels away from the object: the chroma is bounded (noise adds a little)
    for img, mask in zip(images, masks):
        grown = mask.copy()
        for _ in range(2):
            g = grown.copy()
            g[1:, :] |= grown[:-1, :]
            g[:-1, :] |= grown[1:, :]
            g[:, 1:] |= grown[:, :-1]
            g[:, :-1] |= grown[:, 1:]
            grown = g
        rest = img[~grown].astype(np.int32)
        chroma = rest.max(axis=1) - rest.min(axis=1)
        assert np.percentile(chroma, 99) < MAX_DISTRACTOR_CHROMA + 40
        assert chroma.mean() < 40


def test_distractor_colours_never_class_colours() -> None:
    rng = np.random.default_rng(0)
    cols = np.array([synthetic._grey(rng) for _ in range(2000)])
    chroma = cols.max(axis=1) - cols.min(axis=1)
    assert chroma.max() <= MAX_DISTRACTOR_CHROMA
    palette = np.asarray(CLASS_COLOURS)
    dist = np.sqrt(((cols[:, None, :] - palette[None, :, :]) ** 2).sum(-1))
    assert dist.min() > 100


def test_save_dataset(tmp_path: Path) -> None:
    images, labels, masks = generate_dataset(6, seed=1, image_size=SIZE)
    out = save_dataset(tmp_path / "ds", images, labels, masks)
    index = json.loads((out / "labels.json").read_text())
    assert len(index) == 6
    for i, (fname, entry) in enumerate(sorted(index.items())):
        assert entry["label"] == CLASS_NAMES[labels[i]]
        assert entry["label_id"] == int(labels[i])
        img = np.asarray(Image.open(out / fname))
        np.testing.assert_array_equal(img, images[i])
        mask = np.asarray(Image.open(out / entry["mask"])) > 127
        np.testing.assert_array_equal(mask, masks[i])
