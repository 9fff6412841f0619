"""CKA: Kornblith's reference values, invariances, minibatch accumulation, model-level matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# fixtures are used by name
from probe_support import dinoreg, pixels, vit, vit_b, write_images  # noqa: F401

import attnlens
from attnlens.probe import MinibatchCKA, cka, gram, hsic, iter_image_batches, layer_cka_matrix, layer_features, model_cka_matrix


@pytest.fixture(scope="module")
def kornblith():
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def test_kornblith_reference_values(kornblith):
    X, Y = kornblith
    assert cka(X, Y) == pytest.approx(0.55761, abs=5e-6)
    assert cka(X, Y, kernel="rbf", threshold=0.5) == pytest.approx(0.65483, abs=5e-6)
    assert cka(X, Y, unbiased=True) == pytest.approx(0.51346, abs=5e-6)


def test_numpy_and_torch_inputs_agree(kornblith):
    X, Y = kornblith
    assert cka(torch.from_numpy(X), torch.from_numpy(Y).float()) == pytest.approx(cka(X, Y), rel=1e-6)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_symmetric_identity_and_range(kornblith, kernel, unbiased):
    X, Y = kornblith
    assert cka(X, Y, kernel, unbiased) == pytest.approx(cka(Y, X, kernel, unbiased), rel=1e-12)
    assert cka(X, X, kernel, unbiased) == pytest.approx(1.0, rel=1e-12)
    if not unbiased:
        rng = np.random.default_rng(0)
        for _ in range(5):
            value = cka(rng.normal(size=(20, 3)), rng.normal(size=(20, 7)), kernel)
            assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(kornblith, kernel):
    X, Y = kornblith
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    reference = cka(X, Y, kernel)
    assert cka(X @ Q, Y, kernel) == pytest.approx(reference, rel=1e-10)
    assert cka(3.7 * X, 0.2 * Y, kernel) == pytest.approx(reference, rel=1e-10)
    # not invariant to an anisotropic (non-orthogonal) linear map
    assert cka(X * np.arange(1, 11), Y, kernel) != pytest.approx(reference, rel=1e-3)


def test_hsic_and_gram():
    rng = np.random.default_rng(2)
    X = torch.from_numpy(rng.normal(size=(12, 4)))
    K = gram(X)
    torch.testing.assert_close(K, X @ X.T)
    n = 12
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    assert hsic(K, K) == pytest.approx(float(torch.trace(K @ H @ K @ H)) / (n - 1) ** 2)
    rbf = gram(X, "rbf")
    assert torch.allclose(rbf.diagonal(), torch.ones(n, dtype=torch.float64))
    with pytest.raises(attnlens.InputError, match="unknown kernel"):
        gram(X, "poly")


def test_unbiased_needs_four_examples():
    X = np.random.default_rng(0).normal(size=(3, 5))
    with pytest.raises(attnlens.InputError, match="at least 4"):
        cka(X, X, unbiased=True)
    assert cka(X, X) == pytest.approx(1.0)
    with pytest.raises(attnlens.InputError, match="at least 4"):
        MinibatchCKA(unbiased=True).update([torch.from_numpy(X)])


def test_input_errors():
    X = np.zeros((5, 2))
    with pytest.raises(attnlens.InputError, match="same number of examples"):
        cka(X, np.zeros((4, 2)))
    with pytest.raises(attnlens.InputError, match=r"\(examples, features\)"):
        cka(np.zeros((5, 2, 2)), X)
    with pytest.raises(attnlens.InputError, match="NaN"):
        cka(np.full((5, 2), np.nan), X)
    assert np.isnan(cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2))))  # no variance


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_one_minibatch_equals_full_cka(kornblith, kernel, unbiased):
    X, Y = kornblith
    accumulator = MinibatchCKA(kernel, unbiased, threshold=0.5)
    accumulator.update([torch.from_numpy(X)], [torch.from_numpy(Y)])
    assert float(accumulator.result()[0, 0]) == pytest.approx(cka(X, Y, kernel, unbiased, threshold=0.5), rel=1e-12)


def test_minibatch_average_of_hsic_terms():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 8))
    Y = X @ rng.normal(size=(8, 6)) + 2.0 * rng.normal(size=(2000, 6))
    batches = [(torch.from_numpy(X[i : i + 250]), torch.from_numpy(Y[i : i + 250])) for i in range(0, 2000, 250)]
    unbiased = MinibatchCKA("linear", unbiased=True)
    for x, y in batches:
        unbiased.update([x], [y])
    # the defining property: the ratio of the batch-averaged HSIC terms
    terms = np.array([[hsic(gram(x), gram(y), True), hsic(gram(x), gram(x), True), hsic(gram(y), gram(y), True)] for x, y in batches])
    xy, xx, yy = terms.mean(0)
    assert float(unbiased.result()[0, 0]) == pytest.approx(xy / np.sqrt(xx * yy), rel=1e-12)
    # unbiased minibatch CKA estimates the full-data value; the biased one is pulled towards the
    # small-sample bias, so it is not equal to the full-batch biased CKA
    assert float(unbiased.result()[0, 0]) == pytest.approx(cka(X, Y, unbiased=True), abs=0.02)
    biased = MinibatchCKA("linear", unbiased=False)
    for x, y in batches:
        biased.update([x], [y])
    assert float(biased.result()[0, 0]) != pytest.approx(cka(X, Y), abs=1e-6)
    # order of the batches does not matter
    reversed_order = MinibatchCKA("linear", unbiased=True)
    for x, y in reversed(batches):
        reversed_order.update([x], [y])
    assert float(reversed_order.result()[0, 0]) == pytest.approx(float(unbiased.result()[0, 0]), rel=1e-12)


def test_last_small_batch_is_merged():
    sizes = [len(batch) for batch in iter_image_batches(pixels(9), 4, min_batch=4)]
    assert sizes == [4, 5]
    assert [len(batch) for batch in iter_image_batches(pixels(9), 4)] == [4, 4, 1]


def test_layer_cka_matrix(vit):
    x = pixels(9)
    result = layer_cka_matrix(vit, x, batch_size=4, progress=False)
    matrix = result.matrix
    assert matrix.shape == (2, 2)
    torch.testing.assert_close(matrix, matrix.T)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(2, dtype=torch.float64))
    assert result.num_images == 9
    assert result.row_names == ["vit.layers.0", "vit.layers.1"]
    # one minibatch with all images equals cka() on the features
    features, _ = layer_features(vit, x)
    full = layer_cka_matrix(vit, x, batch_size=9, unbiased=False, progress=False)
    assert float(full.matrix[0, 1]) == pytest.approx(cka(features[0], features[1]), rel=1e-9)


@pytest.mark.parametrize("tokens", ["cls", "mean", "flatten"])
def test_model_vs_other_model_differs_from_self(vit, vit_b, tokens):
    x = pixels(8)
    itself = model_cka_matrix(vit, vit, x, tokens=tokens, batch_size=4, progress=False)
    torch.testing.assert_close(itself.matrix, layer_cka_matrix(vit, x, tokens=tokens, batch_size=4, progress=False).matrix)
    torch.testing.assert_close(itself.matrix.diagonal(), torch.ones(2, dtype=torch.float64))
    other = model_cka_matrix(vit, vit_b, x, tokens=tokens, batch_size=4, progress=False)
    assert other.matrix.shape == (2, 2)
    assert not torch.allclose(other.matrix, itself.matrix, atol=1e-3)
    assert float((other.matrix.diagonal() - 1).abs().min()) > 1e-3


def test_registers_and_folder(dinoreg, vit, tmp_path):
    write_images(tmp_path / "imgs", 6, corrupt=1)
    with pytest.warns(UserWarning, match="broken0"):
        result = model_cka_matrix(dinoreg, vit, tmp_path / "imgs", tokens="mean", batch_size=4, progress=False)
    assert result.matrix.shape == (2, 2)
    assert result.num_images == 6 and len(result.skipped) == 1
    assert result.to_dict()["columns"] == ["vit.layers.0", "vit.layers.1"]


def test_model_level_errors(vit):
    x = pixels(8)
    with pytest.raises(attnlens.InputError, match="batch_size >= 4"):
        layer_cka_matrix(vit, x, batch_size=3, progress=False)
    with pytest.raises(attnlens.InputError, match="at least 4"):
        layer_cka_matrix(vit, pixels(3), batch_size=4, progress=False)
    with pytest.raises(attnlens.InputError, match="unknown token treatment"):
        layer_cka_matrix(vit, x, tokens="max", progress=False)
    with pytest.raises(attnlens.InputError, match="out of range"):
        layer_cka_matrix(vit, x, layers=[0, 7], progress=False)
    with pytest.raises(attnlens.InputError, match="block index 7 is out of range"):
        model_cka_matrix(vit, vit, x, [0], [7], progress=False)
    with pytest.raises(attnlens.InputError, match="no block named 'nope'"):
        layer_features(vit, x, "nope")
    # the biased estimator accepts batches of 2
    assert layer_cka_matrix(vit, pixels(4), batch_size=2, unbiased=False, progress=False).matrix.shape == (2, 2)
