"""Centered kernel alignment (CKA): how similar two sets of representations are.

Kornblith et al. 2019 ("Similarity of Neural Network Representations Revisited") compare feature
matrices ``X (n, p)`` and ``Y (n, q)`` of the same ``n`` examples through their Gram matrices
``K = k(X, X)`` and ``L = k(Y, Y)``::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

with the linear kernel ``k(x, y) = x . y`` or the RBF kernel ``exp(-|x - y|^2 / (2 sigma^2))``
whose bandwidth ``sigma`` is ``threshold`` times the median distance between examples (the median
of the squared distances, diagonal included, as in their reference code). HSIC is the biased
estimator ``tr(K H L H) / (n - 1)^2`` or the unbiased one of Song et al. 2012 (needs ``n >= 4``).

Raghu et al. 2021 ("Do Vision Transformers See Like Convolutional Neural Networks?") compare
layers within and across models over a dataset with *minibatch CKA* (Nguyen, Raghu & Kornblith
2021, "Do Wide and Deep Networks Learn the Same Things?"): the three HSIC terms are averaged over
minibatches, then the ratio is taken. :class:`MinibatchCKA` does this in float64 with memory
independent of the dataset size; :func:`layer_cka_matrix` and :func:`model_cka_matrix` build the
layer x layer heatmaps from the residual stream of transformer blocks, with an explicit token
treatment (``"cls"``, ``"mean"`` of patches, ``"flatten"`` of patches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlens.errors import InputError
from attnlens.model import AttnLensModel, as_model
from attnlens.options import Option, OptionSchema
from attnlens.probe._stream import (
    CKA_MIN_BATCH, Images, LayerSelection, StreamReport, block_pass, iter_image_batches, to_pixels,
)
from attnlens.tokens import TokenLayout

__all__ = [
    "KERNELS",
    "TOKENS",
    "CKAResult",
    "MinibatchCKA",
    "cka",
    "gram",
    "hsic",
    "layer_cka_matrix",
    "layer_features",
    "model_cka_matrix",
]

KERNELS = ("linear", "rbf")
TOKENS = ("cls", "mean", "flatten")
"""How a block output ``(B, tokens, dim)`` becomes one feature vector per image: the class token,
the mean of the patch tokens, or all patch tokens flattened (prefix tokens excluded)."""

OPTIONS = OptionSchema(
    Option("layer", int, None, "blocks of the model (none given: all)", layer=True, names=True, multiple=True),
    Option("layer_b", int, None, "blocks of the second model (none given: all)", layer=True, names=True, multiple=True),
    Option("tokens", str, "cls", "token treatment: the class token, the mean of the patches, or the patches flattened", choices=TOKENS),
    Option("kernel", str, "linear", "kernel of the Gram matrices", choices=KERNELS),
    Option("threshold", float, 1.0, "RBF bandwidth as a multiple of the median distance", minimum=0.0),
    Option("biased", bool, False, "biased HSIC per minibatch (default: unbiased, which needs batch size >= 4)"),
)
"""Options of the minibatch-CKA probe (``attnlens probe cka``)."""


# ------------------------------------------------------------------------------ kernels and HSIC
def _matrix(values: Any, name: str) -> torch.Tensor:
    """A float64 ``(examples, features)`` tensor from a numpy array or torch tensor."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if not isinstance(values, torch.Tensor):
        raise InputError(f"{name} must be a numpy array or torch tensor, got {type(values).__name__}")
    if values.dim() != 2:
        raise InputError(
            f"{name} must be an (examples, features) matrix, got shape {tuple(values.shape)}; flatten or pool "
            "the other axes first"
        )
    values = values.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        raise InputError(f"{name} contains NaN or infinite values")
    return values


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of all entries, averaging the two middle ones for an even count (like ``np.median``)."""
    flat = values.flatten()
    count = flat.numel()
    low = flat.kthvalue((count + 1) // 2).values
    high = flat.kthvalue(count // 2 + 1).values
    return (low + high) / 2


def gram(features: torch.Tensor, kernel: str = "linear", threshold: float = 1.0) -> torch.Tensor:
    """``(n, n)`` float64 Gram matrix of ``(n, features)`` rows for ``kernel`` (see the module doc).

    RBF: ``sigma^2 = threshold^2 * median of the squared distances``; identical rows (median 0)
    give an all-ones Gram matrix.
    """
    if kernel not in KERNELS:
        raise InputError(f"unknown kernel {kernel!r}; valid kernels: {KERNELS}")
    features = features.to(torch.float64)
    dot = features @ features.T
    if kernel == "linear":
        return dot
    if not threshold > 0:
        raise InputError(f"RBF threshold (bandwidth factor) must be positive, got {threshold!r}")
    squared_norms = dot.diagonal()
    squared_distances = (squared_norms[:, None] + squared_norms[None, :] - 2 * dot).clamp_min(0)
    median = _median(squared_distances)
    if float(median) == 0.0:
        return torch.ones_like(dot)
    return torch.exp(-squared_distances / (2 * threshold**2 * median))


def _min_examples(unbiased: bool) -> int:
    return CKA_MIN_BATCH if unbiased else 2


@dataclass
class _Prepared:
    """Gram matrices reduced to what HSIC needs: flattened (centered or zero-diagonal) matrices,
    and for the unbiased estimator their total sums and row sums."""

    flat: torch.Tensor  # (m, n*n)
    sums: torch.Tensor | None  # (m,)
    row_sums: torch.Tensor | None  # (m, n)
    n: int


def _prepare(grams: torch.Tensor, unbiased: bool) -> _Prepared:
    """``grams``: ``(m, n, n)`` float64."""
    n = grams.shape[-1]
    if n < _min_examples(unbiased):
        raise InputError(
            f"{'unbiased' if unbiased else 'biased'} HSIC needs at least {_min_examples(unbiased)} examples per "
            f"(mini)batch, got {n}; "
            + (
                f"give at least {CKA_MIN_BATCH} images (and batch_size >= {CKA_MIN_BATCH}), or use the biased "
                "estimator (biased=True; CLI: --biased)" if unbiased else "give at least 2 images"
            )
        )
    if unbiased:
        zero_diagonal = grams - torch.diag_embed(grams.diagonal(dim1=-2, dim2=-1))
        return _Prepared(zero_diagonal.flatten(1), zero_diagonal.sum((-2, -1)), zero_diagonal.sum(-1), n)
    centered = grams - grams.mean(-1, keepdim=True) - grams.mean(-2, keepdim=True) + grams.mean((-2, -1), keepdim=True)
    return _Prepared(centered.flatten(1), None, None, n)


def _hsic_cross(a: _Prepared, b: _Prepared) -> torch.Tensor:
    """``(m_a, m_b)`` HSIC of every pair of prepared Gram matrices (same examples)."""
    n = a.n
    if a.sums is None:  # biased: tr(K H L H) / (n-1)^2 = <HKH, HLH> / (n-1)^2
        return a.flat @ b.flat.T / (n - 1) ** 2
    # unbiased (Song et al. 2012, eq. 5) with K~, L~ the Gram matrices with zeroed diagonals:
    # [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))
    trace = a.flat @ b.flat.T
    sums = torch.outer(a.sums, b.sums) / ((n - 1) * (n - 2))
    rows = 2.0 * (a.row_sums @ b.row_sums.T) / (n - 2)
    return (trace + sums - rows) / (n * (n - 3))


def _hsic_self(a: _Prepared) -> torch.Tensor:
    """``(m,)`` HSIC of each prepared Gram matrix with itself."""
    n = a.n
    trace = (a.flat * a.flat).sum(-1)
    if a.sums is None:
        return trace / (n - 1) ** 2
    return (trace + a.sums**2 / ((n - 1) * (n - 2)) - 2.0 * (a.row_sums**2).sum(-1) / (n - 2)) / (n * (n - 3))


def hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool = False) -> float:
    """HSIC of two ``(n, n)`` Gram matrices: biased ``tr(KHLH)/(n-1)^2`` or unbiased (Song et al.)."""
    K, L = _matrix(K, "K"), _matrix(L, "L")
    if K.shape != L.shape or K.shape[0] != K.shape[1]:
        raise InputError(f"Gram matrices must be square and of the same shape, got {tuple(K.shape)} and {tuple(L.shape)}")
    return float(_hsic_cross(_prepare(K[None], unbiased), _prepare(L[None], unbiased))[0, 0])


def _ratio(cross: torch.Tensor, self_x: torch.Tensor, self_y: torch.Tensor) -> torch.Tensor:
    """CKA from HSIC terms; NaN where a representation has no (estimated) variance."""
    denominator = torch.sqrt(torch.outer(self_x, self_y))
    return torch.where(denominator > 0, cross / denominator, torch.full_like(cross, float("nan")))


def cka(
    X: np.ndarray | torch.Tensor,
    Y: np.ndarray | torch.Tensor,
    kernel: str = "linear",
    unbiased: bool = False,
    threshold: float = 1.0,
) -> float:
    """CKA between two feature matrices of the same examples (Kornblith et al. 2019).

    Args:
        X: ``(n, p)`` features (numpy or torch); rows are examples.
        Y: ``(n, q)`` features of the same ``n`` examples.
        kernel: ``"linear"`` or ``"rbf"``.
        unbiased: use the unbiased HSIC estimator (Song et al. 2012; "debiased CKA"), ``n >= 4``.
        threshold: RBF bandwidth as a multiple of the median distance between examples.

    Returns:
        CKA in ``[0, 1]`` for the biased estimator (the unbiased one can be slightly negative for
        unrelated features); NaN when ``X`` or ``Y`` has no variance. Computed in float64 with
        ``(n, n)`` Gram matrices: for very many examples use :class:`MinibatchCKA`.

    Example (Kornblith's reference values)::

        np.random.seed(1337); X = np.random.randn(100, 10); Y = np.random.randn(100, 10) + X
        cka(X, Y)                               # 0.55761
        cka(X, Y, kernel="rbf", threshold=0.5)  # 0.65483
        cka(X, Y, unbiased=True)                # 0.51346
    """
    X, Y = _matrix(X, "X"), _matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"X and Y must have the same number of examples (rows), got {X.shape[0]} and {Y.shape[0]}")
    a = _prepare(gram(X, kernel, threshold)[None], unbiased)
    b = _prepare(gram(Y, kernel, threshold)[None], unbiased)
    return float(_ratio(_hsic_cross(a, b), _hsic_self(a), _hsic_self(b))[0, 0])


class MinibatchCKA:
    """CKA of every pair of ``m_x`` and ``m_y`` representations, accumulated over minibatches.

    Nguyen, Raghu & Kornblith 2021: for each minibatch, HSIC(K, L), HSIC(K, K) and HSIC(L, L) are
    computed (float64) and summed; :meth:`result` is the ratio of the averaged terms. Memory is
    ``O(m_x m_y + batch^2)``, independent of the number of batches. With the unbiased estimator (the
    default, as in the paper) the average is an unbiased estimate of the full-data HSIC, and every
    batch needs at least 4 examples. The RBF bandwidth is set per minibatch.

    Example::

        acc = MinibatchCKA()
        for xs, ys in batches:          # lists of (batch, features) tensors
            acc.update(xs, ys)
        matrix = acc.result()           # (len(xs), len(ys))
    """

    def __init__(self, kernel: str = "linear", unbiased: bool = True, threshold: float = 1.0) -> None:
        if kernel not in KERNELS:
            raise InputError(f"unknown kernel {kernel!r}; valid kernels: {KERNELS}")
        self.kernel = kernel
        self.unbiased = unbiased
        self.threshold = threshold
        self.num_batches = 0
        self.num_examples = 0
        self._cross: torch.Tensor | None = None
        self._self_x: torch.Tensor | None = None
        self._self_y: torch.Tensor | None = None

    def _prepare(self, features: Sequence[torch.Tensor], name: str) -> _Prepared:
        if not features:
            raise InputError(f"{name}: no representations given")
        matrices = [_matrix(f, f"{name}[{i}]") for i, f in enumerate(features)]
        counts = {m.shape[0] for m in matrices}
        if len(counts) != 1:
            raise InputError(f"{name}: representations have different numbers of examples {sorted(counts)}")
        grams = torch.stack([gram(m, self.kernel, self.threshold) for m in matrices])
        return _prepare(grams, self.unbiased)

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor] | None = None) -> None:
        """Add one minibatch: ``xs`` (and ``ys``) are lists of ``(batch, features)`` matrices of the
        same examples. Without ``ys`` the representations are compared with each other."""
        a = self._prepare(xs, "xs")
        b = a if ys is None else self._prepare(ys, "ys")
        if a.n != b.n:
            raise InputError(f"xs and ys hold different numbers of examples ({a.n} and {b.n})")
        cross = _hsic_cross(a, b)
        self_x = _hsic_self(a)
        self_y = self_x if ys is None else _hsic_self(b)
        if self._cross is None:
            self._cross, self._self_x, self._self_y = cross, self_x, self_y
        else:
            if cross.shape != self._cross.shape:
                raise InputError(f"minibatch has {tuple(cross.shape)} representations, earlier ones {tuple(self._cross.shape)}")
            self._cross = self._cross + cross
            self._self_x = self._self_x + self_x
            self._self_y = self._self_y + self_y
        self.num_batches += 1
        self.num_examples += a.n

    def result(self) -> torch.Tensor:
        """``(m_x, m_y)`` float64 CKA matrix (NaN for representations without variance)."""
        if self._cross is None:
            raise InputError("no minibatch was added")
        return _ratio(self._cross, self._self_x, self._self_y)


# ------------------------------------------------------------------------------ model level
def _token_features(tokens: str):
    if tokens not in TOKENS:
        raise InputError(f"unknown token treatment {tokens!r}; valid: {TOKENS}")

    def reduce(hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        if tokens == "cls":
            return hidden[:, layout.cls_index].double()
        patches = layout.patches(hidden, 1).double()
        return patches.mean(1) if tokens == "mean" else patches.flatten(1)

    return reduce


@dataclass
class CKAResult:
    """A CKA heatmap over a dataset.

    Attributes:
        matrix: ``(rows, columns)`` float64 CKA values.
        row_names, column_names: block names (prefixed with the model source for model x model).
        num_images: images used; skipped: ``(file, reason)`` of unreadable image files.
        options: kernel, estimator, threshold, token treatment, batch size.
    """

    matrix: torch.Tensor
    row_names: list[str]
    column_names: list[str]
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": "cka",
            "options": dict(self.options),
            "rows": list(self.row_names),
            "columns": list(self.column_names),
            "matrix": [[None if np.isnan(v) else v for v in row] for row in self.matrix.tolist()],
            **StreamReport(self.num_images, self.skipped).to_dict(),
        }


def _check_batch(batch_size: int, unbiased: bool) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < _min_examples(unbiased):
        raise InputError(
            f"minibatch CKA with the {'unbiased' if unbiased else 'biased'} HSIC estimator needs batch_size >= "
            f"{_min_examples(unbiased)}, got {batch_size!r}"
        )


def _feature_batches(
    models: Sequence[AttnLensModel], selections: Sequence[LayerSelection], images: Images,
    reduce: Callable[[torch.Tensor, TokenLayout], torch.Tensor], *,
    batch_size: int, size: tuple[int, int] | None, **stream: Any,
) -> Iterator[list[tuple[list[torch.Tensor], list[str]]]]:
    """The feature-extraction loop of CKA: for each batch of images, each model's per-block features
    ``(batch, features)`` (``reduce``: see :func:`_token_features`) and block names, in the order of
    ``models`` / ``selections``. Every model sees the same images (its own preprocessing) in one
    pass over ``images``; ``stream``: options of :func:`iter_image_batches`. (A ``map``, like
    :func:`attnlens.probe._stream.iter_passes`, so that warnings point at the caller's loop.)"""

    def features(batch: list[Any]) -> list[tuple[list[torch.Tensor], list[str]]]:
        return [
            block_pass(model, to_pixels(model, batch, size), layers, reduce)[:2]
            for model, layers in zip(models, selections)
        ]

    return map(features, iter_image_batches(images, batch_size, **stream))


def layer_features(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    tokens: str = "cls", batch_size: int = 16, size: tuple[int, int] | None = None,
) -> tuple[list[torch.Tensor], list[str]]:
    """Per-block features ``(images, features)`` float64 (see :data:`TOKENS`), kept in memory.

    For use with :func:`cka` on small sets; :func:`layer_cka_matrix` streams instead.
    """
    model = as_model(model)
    reduce = _token_features(tokens)
    parts: list[list[torch.Tensor]] = []
    names: list[str] = []
    batches = _feature_batches([model], [layers], images, reduce, batch_size=batch_size, size=size, on_error="raise")
    for [(values, names)] in batches:
        parts = parts or [[] for _ in values]
        for chunks, value in zip(parts, values):
            chunks.append(value.cpu())
    return [torch.cat(chunks) for chunks in parts], names


def _options(kernel: str, unbiased: bool, threshold: float, tokens: str, batch_size: int) -> dict[str, Any]:
    return {
        "kernel": kernel,
        "unbiased": unbiased,
        "threshold": threshold if kernel == "rbf" else None,
        "tokens": tokens,
        "batch_size": batch_size,
        "estimator": "minibatch (Nguyen et al. 2021)",
    }


def _minibatch_cka(
    models: Sequence[AttnLensModel | torch.nn.Module], selections: Sequence[LayerSelection], images: Images, *,
    tokens: str, kernel: str, unbiased: bool, threshold: float, batch_size: int, size: tuple[int, int] | None,
    progress: bool,
) -> CKAResult:
    """The streaming body of :func:`layer_cka_matrix` (one model: its blocks against each other) and
    :func:`model_cka_matrix` (two models: the first one's blocks against the second one's)."""
    _check_batch(batch_size, unbiased)
    models = [as_model(model) for model in models]
    reduce = _token_features(tokens)
    accumulator = MinibatchCKA(kernel, unbiased, threshold)
    report = StreamReport()
    names: list[list[str]] = [[] for _ in models]
    batches = _feature_batches(
        models, selections, images, reduce, batch_size=batch_size, size=size,
        report=report, on_error="skip", min_batch=_min_examples(unbiased), progress=progress, desc="CKA",
    )
    for passes in batches:
        names = [block_names for _, block_names in passes]
        accumulator.update(*[features for features, _ in passes])
    return CKAResult(
        accumulator.result(), list(names[0]), list(names[-1]), report.num_images, list(report.skipped),
        _options(kernel, unbiased, threshold, tokens, batch_size),
    )


def layer_cka_matrix(
    model: AttnLensModel | torch.nn.Module, images: Images, layers: LayerSelection = None, *,
    tokens: str = "cls", kernel: str = "linear", unbiased: bool = True, threshold: float = 1.0,
    batch_size: int = 32, size: tuple[int, int] | None = None, progress: bool = True,
) -> CKAResult:
    """Layer x layer minibatch CKA of one model's block outputs over a dataset (Raghu et al. 2021).

    Args:
        model: the model; its blocks come from the family adapter.
        images: a folder, paths, or any iterable of images/tensors, streamed in batches.
        layers: block indices or names (default: all blocks).
        tokens: ``"cls"``, ``"mean"`` (of patches) or ``"flatten"`` (patches), see :data:`TOKENS`.
        kernel, threshold: see :func:`cka`.
        unbiased: unbiased HSIC per minibatch (default, as Nguyen et al.); needs ``batch_size >= 4``.
        batch_size: images per minibatch (a smaller last batch is merged into the previous one).

    Unreadable files are skipped with a warning and counted in ``result.skipped``.
    """
    return _minibatch_cka(
        [model], [layers], images, tokens=tokens, kernel=kernel, unbiased=unbiased, threshold=threshold,
        batch_size=batch_size, size=size, progress=progress,
    )


def model_cka_matrix(
    model_a: AttnLensModel | torch.nn.Module, model_b: AttnLensModel | torch.nn.Module, images: Images,
    layers_a: LayerSelection = None, layers_b: LayerSelection = None, *,
    tokens: str = "cls", kernel: str = "linear", unbiased: bool = True, threshold: float = 1.0,
    batch_size: int = 32, size: tuple[int, int] | None = None, progress: bool = True,
) -> CKAResult:
    """Model A layers x model B layers minibatch CKA over a dataset (Raghu et al. 2021, Fig. 1).

    Each model preprocesses the images with its own processor (tensors are fed to both as they
    are). Options as in :func:`layer_cka_matrix`. Row names are model A's blocks, columns model B's.
    """
    return _minibatch_cka(
        [model_a, model_b], [layers_a, layers_b], images, tokens=tokens, kernel=kernel, unbiased=unbiased,
        threshold=threshold, batch_size=batch_size, size=size, progress=progress,
    )
