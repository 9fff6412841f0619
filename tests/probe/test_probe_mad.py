"""Mean attention distance: tutorial goldens, invariants, streaming, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

# fixtures are used by name
from probe_support import dinoreg, golden_inputs, golden_model, goldens, pixels, vit, write_images  # noqa: F401

import attnlens
from attnlens.probe import (
    attention_distance_reducer,
    dataset_mean_attention_distance,
    mean_attention_distance,
    patch_distance_matrix,
)
from attnlens.capture import patches_installed
from attnlens.tokens import TokenLayout


def test_matches_notebook_golden(golden_model, golden_inputs, goldens):
    mad = mean_attention_distance(golden_model, golden_inputs)
    expected = goldens["mean_attention_distance"]
    assert mad.shape == expected.shape == (4, 3, 3)
    assert mad.dtype == torch.float64
    np.testing.assert_allclose(mad.numpy(), expected, rtol=1e-5)
    assert not patches_installed()


def test_layer_selection_matches_all_layers(golden_model, golden_inputs, goldens):
    mad = mean_attention_distance(golden_model, golden_inputs[:1], layers=[-1, 1])
    np.testing.assert_allclose(mad.numpy(), goldens["mean_attention_distance"][[1, 3], :1], rtol=1e-5)


def _brute_force(probs: torch.Tensor, layout: TokenLayout, renormalize: bool = False) -> torch.Tensor:
    """Loop reference: the notebook formula, one token pair at a time."""
    start = layout.num_prefix_tokens
    h, w = layout.grid
    ph, pw = layout.patch_size
    batch, heads = probs.shape[:2]
    result = torch.zeros(batch, heads, dtype=torch.float64)
    for b in range(batch):
        for k in range(heads):
            total = 0.0
            for i in range(h * w):
                row = probs[b, k, start + i, start:].double()
                if renormalize:
                    row = row / row.sum()
                for j in range(h * w):
                    dy, dx = (i // w - j // w) * ph, (i % w - j % w) * pw
                    total += float(row[j]) * math.hypot(dy, dx)
            result[b, k] = total / (h * w)
    return result


@pytest.mark.parametrize("renormalize", [False, True])
def test_vectorised_equals_loop_on_non_square_input(vit, renormalize):
    x = pixels(2, 32, 48)  # 4 x 6 grid
    layout = vit.token_layout(x)
    assert layout.grid == (4, 6)
    with torch.no_grad(), attnlens.capture_attention(vit, detach=True) as capture:
        vit(x)
    mad = mean_attention_distance(vit, x, renormalize=renormalize)
    for layer, probs in enumerate(capture.attentions):
        torch.testing.assert_close(mad[layer], _brute_force(probs, layout, renormalize), rtol=1e-5, atol=1e-6)


def test_non_square_patches_distance_matrix():
    layout = TokenLayout(("cls",), (2, 3), (4, 8))
    distances = patch_distance_matrix(layout)
    # patch 0 is (0, 0); patch 5 is (1, 2): 4 px down, 16 px right
    assert distances[0, 5].item() == pytest.approx(math.hypot(4, 16))
    assert distances.shape == (6, 6)
    torch.testing.assert_close(distances, distances.T)


def test_distance_matrix_is_cached():
    layout = TokenLayout(("cls",), (3, 5), (8, 8))
    assert patch_distance_matrix(layout) is patch_distance_matrix(layout)


def test_batch_equals_loop_of_singles(vit):
    x = pixels(3)
    batched = mean_attention_distance(vit, x)
    singles = torch.cat([mean_attention_distance(vit, x[i : i + 1]) for i in range(3)], dim=1)
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6)
    # batch_size only changes how the forward passes are grouped
    torch.testing.assert_close(mean_attention_distance(vit, x, batch_size=2), batched, rtol=1e-5, atol=1e-6)


def test_units(golden_model, golden_inputs):
    x = golden_inputs[:1]
    in_pixels = mean_attention_distance(golden_model, x)
    in_grid = mean_attention_distance(golden_model, x, units="grid")
    in_unit = mean_attention_distance(golden_model, x, units="unit")
    torch.testing.assert_close(in_grid * 16, in_pixels, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(in_unit * 224, in_pixels, rtol=1e-6, atol=1e-6)


def test_unit_square_scales_axes_separately():
    layout = TokenLayout(("cls",), (2, 4), (8, 8))
    distances = patch_distance_matrix(layout, "unit")
    assert distances[0, 1].item() == pytest.approx(1 / 4)  # one column of four
    assert distances[0, 4].item() == pytest.approx(1 / 2)  # one row of two


def test_renormalise_rows_sum_to_one():
    layout = TokenLayout(("cls", "register"), (2, 2), (16, 16))
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(1, 2, layout.num_tokens, layout.num_tokens, generator=generator)
    probs = probs / probs.sum(-1, keepdim=True)
    # give the prefix tokens half of every row's mass: dropping them halves the raw distance
    probs[..., :2] = 0.25
    probs[..., 2:] = probs[..., 2:] / probs[..., 2:].sum(-1, keepdim=True) * 0.5
    raw = attention_distance_reducer()(probs, layout)
    renormalised = attention_distance_reducer(renormalize=True)(probs, layout)
    torch.testing.assert_close(renormalised, 2 * raw, rtol=1e-6, atol=1e-9)
    # with renormalised rows, uniform patch attention gives the mean pairwise distance
    uniform = torch.full_like(probs, 1.0 / layout.num_tokens)
    expected = patch_distance_matrix(layout).mean()
    torch.testing.assert_close(attention_distance_reducer(renormalize=True)(uniform, layout), expected.expand(1, 2), rtol=1e-6, atol=1e-9)


def test_registers_are_dropped(dinoreg):
    x = pixels(2)
    layout = dinoreg.token_layout(x)
    assert layout.num_prefix_tokens == 5
    with torch.no_grad(), attnlens.capture_attention(dinoreg, detach=True) as capture:
        dinoreg(x)
    mad = mean_attention_distance(dinoreg, x)
    assert mad.shape == (2, 2, 2)
    for layer, probs in enumerate(capture.attentions):
        torch.testing.assert_close(mad[layer], _brute_force(probs, layout), rtol=1e-5, atol=1e-6)


def test_dataset_streaming_skips_unreadable_files(vit, tmp_path):
    files = write_images(tmp_path / "data", 5, corrupt=1)
    with pytest.warns(UserWarning, match="broken0.png"):
        stats = dataset_mean_attention_distance(vit, tmp_path / "data", batch_size=2, progress=False)
    per_image = mean_attention_distance(vit, files)
    assert stats.num_images == 5
    assert [name for name, _ in stats.skipped] == [str(tmp_path / "data" / "broken0.png")]
    torch.testing.assert_close(stats.mean, per_image.mean(1))
    torch.testing.assert_close(stats.std, per_image.std(1, unbiased=False))
    assert stats.layer_names == [name for name, _ in vit.attention_layers()]
    assert stats.to_dict()["num_skipped"] == 1
    assert len(stats.rows()) == 2 * 4


def test_dataset_accepts_iterables(vit):
    x = pixels(5)
    generator = (x[i] for i in range(5))  # no length: no progress total
    stats = dataset_mean_attention_distance(vit, generator, batch_size=2, progress=False)
    torch.testing.assert_close(stats.mean, mean_attention_distance(vit, x).mean(1))


def test_empty_folder_is_an_error(vit, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(attnlens.InputError, match="no image files"):
        dataset_mean_attention_distance(vit, tmp_path / "empty", progress=False)


def test_folder_of_unreadable_files_is_an_error(vit, tmp_path):
    write_images(tmp_path / "bad", 0, corrupt=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(attnlens.ImageReadError, match="none of the 2 image file"):
            dataset_mean_attention_distance(vit, tmp_path / "bad", progress=False)


def test_per_image_function_raises_on_unreadable_file(vit, tmp_path):
    write_images(tmp_path / "d", 1, corrupt=1)
    with pytest.raises(attnlens.ImageReadError, match="broken0.png"):
        mean_attention_distance(vit, sorted((tmp_path / "d").iterdir()))


def test_bad_layers_and_options(vit):
    x = pixels(1)
    with pytest.raises(attnlens.InputError, match="out of range"):
        mean_attention_distance(vit, x, layers=[5])
    with pytest.raises(attnlens.InputError, match="no attention layer named"):
        mean_attention_distance(vit, x, layers="encoder.nope")
    with pytest.raises(attnlens.InputError, match="unknown distance unit"):
        mean_attention_distance(vit, x, units="inches")
    with pytest.raises(attnlens.InputError, match="batch_size"):
        mean_attention_distance(vit, x, batch_size=0)
