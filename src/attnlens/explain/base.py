"""The shared base of every explanation method: the :class:`Explanation` result, the
:class:`Method` interface and registry, and the :class:`ExplainContext` a method works in.

A method turns a batch of images and a :class:`~attnlens.explain.targets.TargetPlan` into a raw
relevance ``(N, num_patches)`` over the patch tokens. The context runs the model once with
attention captured, resolves the targets from that same forward pass, and hands out per-target
attention gradients (one backward pass per *round* of targets, see
:meth:`TargetPlan.rounds`), so methods never re-implement batching or target handling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from attnlens.capture import capture_attention
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explain.targets import CALLABLE_CLASS, Target, TargetPlan, resolve_targets
from attnlens.model import AttnLensModel
from attnlens.tokens import TokenLayout


# --------------------------------------------------------------------------- the result
@dataclass
class Explanation:
    """Relevance maps over the patch grid, one per explained (image, target) row.

    Attributes:
        relevance: ``(N, h, w)`` raw relevance over the patch tokens (no normalisation).
        targets: ``(N,)`` class index explained by each row (``-1`` for callable targets).
        target_names: label of each row's class (``"callable"`` for callable targets).
        image_index: ``(N,)`` index of the input image each row explains (``N == B`` unless
            several targets were requested for one image).
        method: registry name of the method.
        layout: the :class:`~attnlens.tokens.TokenLayout` of the input.
        input_size: ``(H, W)`` of the model input in pixels.
        logits: ``(B, C)`` logits of the explained forward pass (``None`` for backbones).
        options: the method options used.
        extras: method-specific additional results, e.g. ``"pixel_relevance"`` ``(N, H, W)`` for
            full LRP (the relevance of every input pixel, summed over channels).
    """

    relevance: torch.Tensor
    targets: torch.Tensor
    target_names: list[str]
    image_index: torch.Tensor
    method: str
    layout: TokenLayout
    input_size: tuple[int, int]
    logits: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.relevance.shape[0])

    def pixel_map(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """``(N, H, W)`` relevance upsampled bilinearly (``align_corners=False``) to the input size."""
        from attnlens.viz.overlay import upsample_maps

        return upsample_maps(self.relevance, size or self.input_size)

    def normalized(self) -> torch.Tensor:
        """``(N, h, w)`` per-row min-max normalised relevance in ``[0, 1]``.

        A constant map (e.g. all zeros, where the reference code divides 0 by 0 and returns NaN)
        normalises to all zeros, so the result is always finite.
        """
        return min_max(self.relevance)

    def threshold(self, method: str | float = "otsu", *, upsample: bool = True) -> torch.Tensor:
        """Boolean foreground masks ``(N, H, W)`` (or ``(N, h, w)`` with ``upsample=False``).

        ``method``: ``"otsu"`` (Otsu's threshold on the min-max normalised map), ``"mean"``
        (above the map's mean, as in Chefer et al.'s segmentation test) or a float in ``[0, 1]``
        applied to the normalised map.
        """
        maps = min_max(self.pixel_map() if upsample else self.relevance)
        if method == "otsu":
            cut = torch.stack([otsu_threshold(m) for m in maps]).view(-1, 1, 1)
        elif method == "mean":
            cut = maps.mean(dim=(-2, -1), keepdim=True)
        elif isinstance(method, (int, float)) and not isinstance(method, bool) and 0.0 <= method <= 1.0:
            cut = torch.full((maps.shape[0], 1, 1), float(method))
        else:
            raise InputError(f"unknown threshold method {method!r}; use 'otsu', 'mean' or a float in [0, 1]")
        return maps > cut

    def overlay(self, images, *, alpha: float = 0.5, colormap: str = "jet"):
        """One RGB PIL image per row: the heat map blended over its input image.

        ``images`` are the B input images (paths, PIL images or arrays) this explanation was
        computed on.
        """
        from attnlens.viz.overlay import overlay_maps

        return overlay_maps(images, self.normalized(), self.image_index, alpha=alpha, colormap=colormap)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation over all but the first dimension; constant rows become 0."""
    flat = maps.reshape(maps.shape[0], -1).float()
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of values in ``[0, 1]`` (maximises the between-class variance)."""
    histogram = torch.histc(values.float().flatten(), bins=bins, min=0.0, max=1.0).double()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    weight_low = histogram.cumsum(0)
    weight_high = histogram.sum() - weight_low
    mass_low = (histogram * centers).cumsum(0)
    mean_low = mass_low / weight_low.clamp_min(1e-12)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp_min(1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return ((between.argmax() + 1).double() / bins).float()


# --------------------------------------------------------------------------- the context
class ExplainContext:
    """Everything a method needs for one call: model, pixels, token layout, targets, options.

    Methods call :meth:`forward_with_attention` (one forward pass with attention captured; it
    also resolves the targets), then :meth:`attention_gradients` for gradient-based rules.
    """

    def __init__(self, model: AttnLensModel, pixels: torch.Tensor, target: Target, options: dict[str, Any]) -> None:
        self.model = model
        self.pixels = pixels
        self.target = target
        self.options = options
        self.layout: TokenLayout = model.token_layout(pixels)
        self.plan: TargetPlan | None = None
        self.logits: torch.Tensor | None = None
        self.output: Any = None
        self.attentions: list[torch.Tensor] = []
        self._layers: list[int] = []
        self.extras: dict[str, Any] = {}  # copied to Explanation.extras

    @property
    def num_layers(self) -> int:
        return len(self.model.attention_layers())

    def resolve(self, output: Any) -> TargetPlan:
        """Resolve the targets from a forward pass's output (sets :attr:`plan` and :attr:`logits`)."""
        self.output = output
        logits = getattr(output, "logits", output if isinstance(output, torch.Tensor) else None)
        if self.model.family.head.pooling == "none":
            logits = None
        self.logits = logits
        self.plan = resolve_targets(self.target, self.pixels.shape[0], logits, self.model.id2label)
        return self.plan

    def forward_with_attention(self, layers: Sequence[int] | None = None, *, gradients: bool = False) -> list[torch.Tensor]:
        """Run the model once, recording the ``(B, H, T, T)`` attention of ``layers`` (default: all).

        With ``gradients=True`` the graph is kept so that :meth:`attention_gradients` works.
        """
        pixels = self.pixels.detach()
        if gradients:
            pixels = pixels.requires_grad_(True)
        with torch.set_grad_enabled(gradients), capture_attention(self.model, layers, keep_grad=False) as capture:
            output = self.model(pixels)
        self.resolve(output)
        self.attentions = capture.attentions
        self._layers = capture.layers
        for attention in self.attentions:
            self.layout.check_length(attention.shape[-1], what="captured attention")
        return self.attentions

    def attention_gradients(self) -> list[torch.Tensor]:
        """Per explained row, the gradient of its objective w.r.t. each captured attention.

        Returns one ``(N, H, T, T)`` tensor per captured layer (``N`` = rows of the target plan).
        One backward pass per round of targets; the model's parameters get no ``.grad``.
        """
        if self.plan is None or not self.attentions:
            raise RuntimeError("call forward_with_attention(gradients=True) first")
        plan = self.plan
        gradients = [torch.zeros((plan.num_rows, *a.shape[1:]), dtype=a.dtype, device=a.device) for a in self.attentions]
        rounds = plan.rounds()
        for number, rows in enumerate(rounds):
            objective = plan.objective(self.output, self.logits, rows)
            grads = torch.autograd.grad(
                objective, self.attentions, retain_graph=number + 1 < len(rounds), allow_unused=True
            )
            images = plan.image_index[rows]
            for gradient, grad in zip(gradients, grads):
                if grad is not None:
                    gradient[rows.to(gradient.device)] = grad[images.to(grad.device)].detach()
        return gradients

    def per_row(self, tensor: torch.Tensor) -> torch.Tensor:
        """Index a per-image tensor ``(B, ...)`` by the plan's rows -> ``(N, ...)``."""
        return tensor[self.plan.image_index.to(tensor.device)]

    def readout(self, matrix: torch.Tensor) -> torch.Tensor:
        """The relevance row(s) of the token(s) the prediction is read from -> patch columns.

        ``matrix`` is ``(N, T, T)`` (query x key). For models read out from a class token this is
        the CLS row; for mean-pooled models (BEiT) the mean of the patch rows. Returns
        ``(N, num_patches)``.
        """
        layout = self.layout
        if self.model.family.head.pooling == "mean_patches" or not layout.has_cls:
            rows = layout.patches(matrix, dim=-2).mean(dim=-2)
        else:
            rows = matrix[..., layout.cls_index, :]
        return layout.patches(rows, dim=-1)

    def check_start_layer(self, start_layer: int) -> int:
        """Validate ``start_layer`` (negative counts from the end) and return it non-negative."""
        count = self.num_layers
        if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not -count <= start_layer < count:
            raise InputError(
                f"start_layer={start_layer!r} is out of range: the model has {count} attention layers "
                f"(valid: {-count}..{count - 1})"
            )
        return start_layer % count


# --------------------------------------------------------------------------- methods
class Method(ABC):
    """An explanation method. Subclasses set the class attributes and implement :meth:`relevance`.

    Attributes:
        name: registry name.
        description: one line for :func:`attnlens.methods`.
        paper: the paper the rules come from.
        defaults: option name -> default value (unknown options are refused).
        class_specific: the map depends on the target (``False`` for plain attention/rollout).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    class_specific: ClassVar[bool] = True

    def check_model(self, model: AttnLensModel) -> None:
        """Raise :class:`UnsupportedModelError` if the method cannot apply to ``model``."""
        if model.family.windowed:
            raise UnsupportedModelError(
                f"method {self.name!r} needs global attention over one token sequence, but "
                f"{type(model.module).__name__} uses windowed (hierarchical) attention"
            )

    @abstractmethod
    def relevance(self, context: ExplainContext, **options: Any) -> torch.Tensor:
        """Raw relevance ``(N, num_patches)`` for every row of the context's target plan."""


_METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    _load_all_methods()
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; valid methods: {sorted(_METHODS)}")
    return _METHODS[name]


def methods() -> dict[str, str]:
    """Registered method names with a one-line description each."""
    _load_all_methods()
    return {name: _METHODS[name].description for name in sorted(_METHODS)}


def _load_all_methods() -> None:
    import importlib
    import pkgutil

    package = importlib.import_module("attnlens.explain")  # the package (attnlens.explain is also a function)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


def target_names(model: AttnLensModel, classes: torch.Tensor) -> list[str]:
    return [
        "callable" if int(c) == CALLABLE_CLASS else model.id2label.get(int(c), str(int(c))) for c in classes.tolist()
    ]
