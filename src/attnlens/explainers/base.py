"""The shared base of every explanation method: the :class:`Explanation` result, the
:class:`Method` interface and registry, and the :class:`ExplainContext` a method works in.

A method turns a batch of images and an :class:`~attnlens.attribution.objectives.Objective` (the
resolved targets) into a raw relevance ``(N, num_patches)`` over the patch tokens. The context runs
the model once with attention captured, resolves the targets from that same forward pass, and hands
out per-row attention gradients (:func:`attnlens.attribution.rounds.row_gradients`), so methods
never re-implement batching, target handling, layer checks or readouts.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attnlens.adapters.readouts import Readout
from attnlens.attribution.layers import resolve_layer
from attnlens.attribution.objectives import Objective, logits_of
from attnlens.attribution.results import RelevanceMaps
from attnlens.attribution.rounds import row_gradients
from attnlens.attribution.targets import Target, class_label, resolve_targets
from attnlens.capture import capture_attention
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.images import load_images
from attnlens.model import AttnLensModel
from attnlens.options import Option, OptionSchema
from attnlens.tokens import TokenLayout


# --------------------------------------------------------------------------- the result
EXPLANATION_FORMAT = "attnlens.explanation/1"
"""Format tag of files written by :meth:`Explanation.save`."""
METADATA_KEY = "attnlens"
"""Key of the JSON metadata in an explanation file."""


@dataclass
class Explanation(RelevanceMaps):
    """Relevance maps over the patch grid, one per explained (image, target) row.

    Follows the result protocol (:mod:`attnlens.attribution.results`): ``relevance (N, h, w)``
    raw, ``input_index`` (alias ``image_index``), ``normalized()``, ``pixel_map()``,
    ``threshold()``, ``overlay(images)``, ``to_dict()`` / ``to_json()``.

    Attributes:
        targets: ``(N,)`` class index explained by each row (``-1`` for callable targets).
        target_names: label of each row's class (``"callable"`` for callable targets).
        method: registry name of the method.
        logits: ``(B, C)`` logits of the explained forward pass (``None`` for backbones).
        options: the method options used.
        extras: method-specific additional results, e.g. ``"pixel_relevance"`` ``(N, H, W)`` for
            full LRP (the relevance of every input pixel, summed over channels).
        image_names: optional name of each input image (file names; kept by :meth:`save`).
        source_sizes: ``(H, W)`` of each input image as given (files, PIL images, arrays), so that
            :meth:`overlay` refuses other images; ``None`` when a pixel tensor was explained.

    :meth:`save` / :meth:`load` round-trip the maps, the explained rows and classes, the logits,
    the method, its options, the image names and sizes through one ``.safetensors`` or ``.npz`` file
    (``extras`` are not saved); :meth:`concat` joins the explanations of consecutive batches.
    """

    targets: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    target_names: list[str] = field(default_factory=list)
    method: str = ""
    logits: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    image_names: list[str] = field(default_factory=list)
    source_sizes: list[tuple[int, int]] | None = None
    kind = "explanation"

    @property
    def image_index(self) -> torch.Tensor:
        """``(N,)`` index of the input image each row explains (alias of ``input_index``)."""
        return self.input_index

    @property
    def num_images(self) -> int:
        """Number of input images explained (from the logits, else the rows' image indices)."""
        if self.logits is not None:
            return int(self.logits.shape[0])
        return int(self.input_index.max()) + 1 if len(self.input_index) else 0

    @classmethod
    def concat(cls, parts: Sequence["Explanation"]) -> "Explanation":
        """One explanation of consecutive batches' explanations (same method, options and layout):
        rows in order, image indices offset by the images before each part."""
        if not parts:
            raise InputError("nothing to concatenate: pass at least one Explanation")
        offsets = np.cumsum([0] + [part.num_images for part in parts[:-1]]).tolist()
        first = parts[0]
        logits = None if any(part.logits is None for part in parts) else torch.cat([part.logits for part in parts])
        return cls(
            relevance=torch.cat([part.relevance for part in parts]),
            input_index=torch.cat([part.input_index + offset for part, offset in zip(parts, offsets)]),
            input_size=first.input_size, layout=first.layout,
            targets=torch.cat([part.targets for part in parts]),
            target_names=[name for part in parts for name in part.target_names],
            method=first.method, logits=logits, options=dict(first.options),
            image_names=[name for part in parts for name in part.image_names],
            source_sizes=None if any(part.source_sizes is None for part in parts)
            else [size for part in parts for size in part.source_sizes],
        )

    def _metadata(self) -> str:
        layout = self.layout
        return json.dumps({
            "format": EXPLANATION_FORMAT, "method": self.method, "options": self.options,
            "target_names": list(self.target_names), "image_names": list(self.image_names),
            "input_size": list(self.input_size),
            "source_sizes": None if self.source_sizes is None else [list(size) for size in self.source_sizes],
            "prefix_roles": list(layout.prefix_roles),
            "grid": list(layout.grid), "patch_size": list(layout.patch_size),
        }, default=str)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the explanation to ``path`` (``.safetensors`` or ``.npz``, atomically): tensors
        ``relevance (N, h, w)`` float32, ``input_index (N,)``, ``targets (N,)``, ``logits (B, C)``
        (if any), and the method, options, class names, image names, image sizes and token layout as JSON
        metadata. Returns the path; read it back with :meth:`load`."""
        from attnlens.viz.io import atomic_write, write_bytes_atomic

        target = Path(path)
        tensors = {
            "relevance": self.relevance.detach().float().cpu().contiguous(),
            "input_index": self.input_index.detach().long().cpu().contiguous(),
            "targets": self.targets.detach().long().cpu().contiguous(),
        }
        if self.logits is not None:
            tensors["logits"] = self.logits.detach().float().cpu().contiguous()
        if target.suffix == ".safetensors":
            from safetensors.torch import save

            return write_bytes_atomic(target, save(tensors, metadata={METADATA_KEY: self._metadata()}))
        if target.suffix != ".npz":
            raise InputError(f"cannot save an explanation as {target.name!r}; use a .safetensors or .npz file name")
        arrays = {key: value.numpy() for key, value in tensors.items()} | {METADATA_KEY: np.array(self._metadata())}
        return atomic_write(target, lambda handle: np.savez(handle, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Explanation":
        """Read an explanation written by :meth:`save` (``.safetensors`` or ``.npz``)."""
        source = Path(path)
        if source.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(source), framework="pt") as handle:
                text = (handle.metadata() or {}).get(METADATA_KEY)
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        elif source.suffix == ".npz":
            with np.load(source, allow_pickle=False) as archive:
                text = str(archive[METADATA_KEY]) if METADATA_KEY in archive.files else None
                tensors = {key: torch.from_numpy(archive[key]) for key in archive.files if key != METADATA_KEY}
        else:
            raise InputError(f"cannot load an explanation from {source.name!r}; expected a .safetensors or .npz file")
        if text is None:
            raise InputError(f"{source}: not an attnlens explanation file (no {METADATA_KEY!r} metadata); write it with Explanation.save")
        meta = json.loads(text)
        layout = TokenLayout(tuple(meta["prefix_roles"]), tuple(meta["grid"]), tuple(meta["patch_size"]))
        return cls(
            relevance=tensors["relevance"], input_index=tensors["input_index"], input_size=tuple(meta["input_size"]),
            layout=layout, targets=tensors["targets"], target_names=list(meta["target_names"]), method=meta["method"],
            logits=tensors.get("logits"), options=dict(meta["options"]), image_names=list(meta["image_names"]),
            source_sizes=None if meta.get("source_sizes") is None else [tuple(size) for size in meta["source_sizes"]],
        )

    def overlay(self, inputs: Any, *, alpha: float = 0.5, colormap: str = "jet") -> list:
        """One RGB PIL image per row: the normalised map blended over its image.

        ``inputs``: the images of the call (paths, PIL images or arrays), in the same order. When
        the explained images' sizes are known (:attr:`source_sizes`), an image of another size is
        refused with an :class:`InputError`.
        """
        arrays = load_images(inputs)
        for index, (array, expected) in enumerate(zip(arrays, self.source_sizes or [])):
            given = (int(array.shape[0]), int(array.shape[1]))
            if given != tuple(expected):
                raise InputError(
                    f"overlay() image {index} is {given[1]}x{given[0]} px but the explained image {index} was "
                    f"{expected[1]}x{expected[0]} px (W x H); pass the same images, in the same order, as to the call that made the maps"
                )
        return super().overlay(arrays, alpha=alpha, colormap=colormap)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "method": self.method,
            "options": dict(self.options),
            "targets": [{"index": int(t), "label": n} for t, n in zip(self.targets.tolist(), self.target_names)],
        }


# --------------------------------------------------------------------------- the context
class ExplainContext:
    """Everything a method needs for one call: model, pixels, token layout, targets, options.

    Methods call :meth:`forward_with_attention` (one forward pass with attention captured; it
    also resolves the targets into :attr:`objective`), then :meth:`attention_gradients` for
    gradient-based rules, and :meth:`readout` to turn a token x token matrix into patch relevance.
    All per-call state lives here, never in modules or globals.
    """

    def __init__(self, model: AttnLensModel, pixels: torch.Tensor, target: Target, options: dict[str, Any]) -> None:
        self.model = model
        self.pixels = pixels
        self.target = target
        self.options = options
        self.layout = model.token_layout(pixels)
        self.objective: Objective | None = None
        self.logits: torch.Tensor | None = None
        self.output: Any = None
        self.attentions: list[torch.Tensor] = []
        self.extras: dict[str, Any] = {}  # copied to Explanation.extras

    @property
    def num_layers(self) -> int:
        return len(self.model.attention_layers())

    @property
    def readout_of_model(self) -> Readout:
        """The model's readout: its classifier head's, or (backbones) its vision tower's."""
        return self.model.readout

    def layer(self, value: int, name: str = "layer") -> int:
        """A layer option (negative counts from the end) as a non-negative index, range-checked."""
        return resolve_layer(value, self.num_layers, name)

    def layers_from(self, start_layer: int, name: str = "start_layer") -> list[int]:
        """The layers ``start_layer .. last`` (a range-checked layer option)."""
        return list(range(self.layer(start_layer, name), self.num_layers))

    def resolve(self, output: Any) -> Objective:
        """Resolve the targets from a forward pass's output (sets :attr:`objective` and :attr:`logits`)."""
        self.output = output
        self.logits = logits_of(output) if self.model.family.is_classifier else None
        self.objective = resolve_targets(self.target, self.pixels.shape[0], self.logits, self.model.id2label)
        return self.objective

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
        for attention in self.attentions:
            self.layout.check_length(attention.shape[-1], what="captured attention")
        return self.attentions

    def attention_gradients(self) -> list[torch.Tensor]:
        """Per explained row, the gradient of its objective w.r.t. each captured attention.

        Returns one ``(N, H, T, T)`` tensor per captured layer (``N`` = rows of the objective);
        one backward pass per round of rows; the model's parameters get no ``.grad``.
        """
        if self.objective is None or not self.attentions:
            raise RuntimeError("call forward_with_attention(gradients=True) first")
        objective, output = self.objective, self.output
        return row_gradients(lambda rows: objective.round_value(output, rows), self.attentions, objective.input_index)

    def per_row(self, tensor: torch.Tensor) -> torch.Tensor:
        """Index a per-image tensor ``(B, ...)`` by the objective's rows -> ``(N, ...)``."""
        return tensor[self.objective.input_index.to(tensor.device)]

    def readout(self, matrix: torch.Tensor) -> torch.Tensor:
        """The relevance row(s) of the token(s) the prediction is read from -> patch columns.

        ``matrix`` is ``(N, ..., T, T)`` (query x key); the model's readout object picks (or pools)
        its query rows. Returns ``(N, ..., num_patches)``.
        """
        return self.layout.patches(self.readout_of_model.read(matrix, self.layout), dim=-1)


# --------------------------------------------------------------------------- methods
START_LAYER = Option(
    "start_layer", int, 0, "first block whose attention enters the product; negative counts from the end", layer=True
)
class Method(ABC):
    """An explanation method. Subclasses set the class attributes and implement :meth:`relevance`.

    Attributes:
        name: registry name.
        description: one line for :func:`attnlens.methods`.
        paper: the paper the rules come from.
        options: the method's typed :class:`~attnlens.options.OptionSchema` (names, defaults,
            ranges, help); unknown options are refused.
        class_specific: the map depends on the target (``False`` for plain attention/rollout).
        requires: capabilities the model must have (see :attr:`AttnLensModel.capabilities`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str] = ""
    options: ClassVar[OptionSchema] = OptionSchema()
    class_specific: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("global_attention",)

    @property
    def defaults(self) -> dict[str, Any]:
        """Option name -> default value (from :attr:`options`)."""
        return self.options.defaults()

    def check_model(self, model: AttnLensModel) -> None:
        """Raise :class:`UnsupportedModelError` if ``model`` lacks a capability the method needs."""
        model.require(self.requires, f"method {self.name!r}")

    @abstractmethod
    def relevance(self, context: ExplainContext, **options: Any) -> torch.Tensor:
        """Raw relevance ``(N, num_patches)`` for every row of the context's objective."""


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

    package = importlib.import_module("attnlens.explainers")
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


def target_names(model: AttnLensModel, classes: torch.Tensor) -> list[str]:
    return [class_label(model.id2label, int(c)) for c in classes.tolist()]
