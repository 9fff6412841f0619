"""The model wrapper every attnlens function works with.

:class:`AttnLensModel` keeps the user's ``torch.nn.Module`` untouched (``.module``) and adds what
interpretation needs: preprocessing, labels, the model family's adapter and the token layout for an
actual input.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from attnlens.adapters import Family, attention_layers, discover_attention_layers, find_family, get_submodule
from attnlens.adapters.readouts import Readout
from attnlens.attribution.targets import top_k as predictions
from attnlens.capture import AttentionCapture, capture_attention, unwrap_module
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.images import ImageLike, load_images
from attnlens.processors import default_processor, resize_normalize_processor
from attnlens.tokens import TokenLayout, grid_for_input


def family_of(module: nn.Module) -> Family:
    """The adapter of ``module``; a model without any attention layer gets its own clear error."""
    try:
        return find_family(module)
    except UnsupportedModelError:
        if not discover_attention_layers(module):
            raise UnsupportedModelError(
                f"{type(module).__name__} has no attention layers (it is not a transformer); attnlens "
                "explains and probes attention models such as ViT, DeiT, BEiT, DINOv2 and CLIP"
            ) from None
        raise

T = TypeVar("T")


class AttnLensModel:
    """A model plus what attnlens needs to interpret it.

    Attributes:
        module: the underlying ``torch.nn.Module`` (DataParallel / DDP / ``torch.compile`` / accelerate
            wrappers removed; full access; attnlens never modifies it).
        family: the adapter describing the model family (see :mod:`attnlens.adapters`).
        processor: the image processor (Hugging Face image processor or compatible callable).
        tokenizer: the text tokenizer for text-image models (CLIP), else ``None``.
        id2label: class index -> label name (empty for backbones).
        source: where the model was loaded from.
    """

    def __init__(
        self,
        module: nn.Module,
        processor: Any = None,
        *,
        tokenizer: Any = None,
        id2label: dict[int, str] | None = None,
        source: str = "<module>",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = unwrap_module(module)
        self.family: Family = family_of(self.module)
        self.processor = processor
        self.tokenizer = tokenizer
        config = getattr(module, "config", None)
        labels = id2label if id2label is not None else getattr(config, "id2label", None) or {}
        self.id2label = {int(index): str(label) for index, label in labels.items()} if self.family.is_classifier else {}
        self.source = source
        self._derived: dict[Hashable, tuple[Hashable, Any]] = {}
        self._derived_lock = threading.Lock()

    # ----------------------------------------------------------------- basic properties
    def __repr__(self) -> str:
        return f"AttnLensModel({type(self.module).__name__}, family={self.family.name!r}, source={self.source!r})"

    @property
    def device(self) -> torch.device:
        for parameter in self.module.parameters():
            return parameter.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for parameter in self.module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32

    def to(self, *args, **kwargs) -> "AttnLensModel":
        self.module.to(*args, **kwargs)
        return self

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.family.patch_size(self.module)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.family.image_size(self.module)

    # ----------------------------------------------------------------- preprocessing
    def preprocess(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Pixel tensor ``(B, 3, H, W)`` the model expects, on the model's device and dtype.

        ``images``: file paths, PIL images or numpy arrays of any size and mode (see
        :func:`attnlens.images.to_rgb_array`); a ``(B, 3, H, W)`` / ``(3, H, W)`` tensor is taken as
        already preprocessed. ``size`` (``(H, W)``) overrides the model's input size, e.g. for
        non-square inputs (position embeddings are then interpolated).
        """
        if isinstance(images, torch.Tensor):
            return self._check_pixels(images)
        arrays = load_images(images)
        if self.processor is None:
            raise InputError("this model has no image processor; pass a preprocessed (B, 3, H, W) tensor")
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if size is not None:
            height, width = int(size[0]), int(size[1])
            self.check_input_size((height, width))
            kwargs.update(size={"height": height, "width": width}, do_center_crop=False)
        pixels = self.processor(images=[a for a in arrays], **kwargs)["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def check_input_size(self, size: tuple[int, int]) -> None:
        """Refuse an input size ``(H, W)`` the model cannot take (a timm ViT without
        ``dynamic_img_size``) with a one-line :class:`InputError` naming the fix."""
        size = (int(size[0]), int(size[1]))
        fix_of = self.family.size_fix
        if fix_of is None or size == tuple(self.image_size):
            return
        fix = fix_of(self.module)
        if fix is not None:
            (height, width), expected = size, self.image_size
            raise InputError(
                f"{type(self.module).__name__} takes only {expected[0]}x{expected[1]} (H x W) inputs, got "
                f"{height}x{width}; {fix}"
            )

    def _check_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(0)
        if pixels.dim() != 4:
            raise InputError(f"pixel tensor must be (B, C, H, W) or (C, H, W), got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise InputError(f"pixel tensor must be floating point (normalised), got {pixels.dtype}")
        self._check_channels(pixels)
        patch = self.patch_size
        if pixels.shape[-2] < patch[0] or pixels.shape[-1] < patch[1]:
            raise InputError(f"input {tuple(pixels.shape[-2:])} is smaller than one {patch} patch")
        self.check_input_size(pixels.shape[-2:])
        return pixels.to(device=self.device, dtype=self.dtype)

    @property
    def num_channels(self) -> int:
        """Colour channels the model expects (its config's ``num_channels`` or timm's ``in_chans``; default 3)."""
        config = getattr(self.module, "config", None)
        config = getattr(config, "vision_config", None) or config
        for value in (getattr(config, "num_channels", None), getattr(self.module, "in_chans", None)):
            if isinstance(value, int):
                return value
        return 3

    def _check_channels(self, pixels: torch.Tensor) -> None:
        """One-line errors for channels-last tensors and for a channel count the model does not take."""
        expected = self.num_channels
        if pixels.shape[1] == expected:
            return
        shape = tuple(pixels.shape)
        if pixels.shape[-1] == expected:
            raise InputError(
                f"pixel tensor {shape} looks channels-last (B, H, W, C); the model takes (B, C, H, W): "
                "pass pixels.permute(0, 3, 1, 2), or pass the images as arrays / PIL images to preprocess them"
            )
        fix = "repeat it to 3 channels (pixels.expand(-1, 3, -1, -1)) or pass the image as a file / PIL image" if pixels.shape[1] == 1 else "pass images as files, PIL images or arrays to preprocess them"
        raise InputError(f"pixel tensor {shape} has {shape[1]} channel(s) but the model takes {expected}; {fix}")

    # ----------------------------------------------------------------- tokens and forward
    def token_layout(self, pixels: torch.Tensor | tuple[int, int] | None = None) -> TokenLayout:
        """Token layout for an input (a pixel tensor or its ``(H, W)``; default: the model's size)."""
        if self.family.windowed:
            raise UnsupportedModelError(
                f"{type(self.module).__name__} uses windowed (hierarchical) attention: its tokens are "
                "not one global sequence of prefix tokens + patch grid"
            )
        if pixels is None:
            shape = self.image_size
        elif isinstance(pixels, torch.Tensor):
            shape = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        else:
            shape = (int(pixels[0]), int(pixels[1]))
        patch = self.patch_size
        return TokenLayout(self.family.prefix_roles(self.module), grid_for_input(shape, patch), patch)

    def forward_kwargs(self, pixels: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments that make the model accept ``pixels`` of a non-default size."""
        kwarg = self.family.interpolate_kwarg
        if kwarg and tuple(pixels.shape[-2:]) != tuple(self.image_size):
            return {kwarg: True}
        return {}

    def __call__(self, pixels: torch.Tensor, **kwargs: Any) -> Any:
        """Run the underlying module on a pixel tensor (interpolating positions if needed)."""
        self.check_input_size(pixels.shape[-2:])
        module = get_submodule(self.module, self.family.image_module) if self.family.image_module else self.module
        argument = self.family.pixel_argument
        if argument is None:
            return module(pixels, **self.forward_kwargs(pixels), **kwargs)
        return module(**{argument: pixels}, **self.forward_kwargs(pixels), **kwargs)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` class logits of a classifier."""
        if not self.family.is_classifier:
            raise UnsupportedModelError(
                f"{type(self.module).__name__} is a backbone without a classification head: it has no logits; "
                "explain a callable target instead (e.g. a CLS-embedding dimension or a similarity)"
            )
        output = self(pixels)
        return output.logits if hasattr(output, "logits") else output

    @torch.no_grad()
    def predict(self, images: ImageLike | Sequence[ImageLike] | torch.Tensor, top_k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k ``(label, probability)`` per image."""
        rows = predictions(self.logits(self.preprocess(images)), self.id2label, top_k)
        return [[(entry["label"], entry["probability"]) for entry in row] for row in rows]

    def derived(self, key: Hashable, stamp: Hashable, compute: Callable[[], T]) -> T:
        """A value derived from the model (e.g. ``|W|`` of a weight), kept on this wrapper.

        Recomputed when ``stamp`` (e.g. the weight's version, storage, dtype and device) differs
        from the stored one. Thread-safe; the cache lives and dies with this wrapper (no global
        state), so explaining other models never evicts it.
        """
        with self._derived_lock:
            hit = self._derived.get(key)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            value = compute()
            self._derived[key] = (stamp, value)
            return value

    # ----------------------------------------------------------------- capabilities
    @property
    def readout(self) -> Readout:
        """Where predictions are read from: the classifier head's readout, or (backbones) the
        vision tower's pooled output."""
        if self.family.head is not None:
            return self.family.head.readout
        return self.family.encoder().readout

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model can do, as methods need it (methods gate on these, never on families).

        * ``global_attention``: one global token sequence (not windowed like Swin);
        * ``logits``: a classification head (class targets apply);
        * ``block_parts``: the adapter names every block's parts (the LRP family recomputes them);
        * ``pixel_relevance``: embeddings and a patch convolution are named (full LRP);
        * ``image_text``: an image tower and a text tower with a similarity logit (CLIP, SigLIP).
        """
        family = self.family
        found: set[str] = set()
        if not family.windowed and family.encoders:
            found.update(("global_attention", "block_parts"))
            vision = family.encoder()
            if vision.embeddings is not None and vision.patch_embedding is not None:
                found.add("pixel_relevance")
            names = {encoder.name for encoder in family.encoders}
            if {"vision", "text"} <= names and family.logit_scale is not None:
                found.add("image_text")
        if family.is_classifier:
            found.add("logits")
        return frozenset(found)

    def require(self, capabilities: Iterable[str], user: str) -> None:
        """Raise a one-line :class:`UnsupportedModelError` if a capability is missing."""
        missing = [name for name in capabilities if name not in self.capabilities]
        if missing:
            reasons = [CAPABILITY_REASONS.get(name, name) for name in missing]
            raise UnsupportedModelError(f"{user} cannot run on {type(self.module).__name__}: it {'; it '.join(reasons)}")

    # ----------------------------------------------------------------- attention
    def attention_layers(self, encoder: str | None = None) -> list[tuple[str, nn.Module]]:
        return attention_layers(self.module, encoder)

    def capture(self, layers=None, *, encoder: str | None = None, **kwargs: Any) -> AttentionCapture:
        """Shortcut for :func:`attnlens.capture_attention` on this model."""
        return capture_attention(self, layers, encoder=encoder, **kwargs)


CAPABILITY_REASONS = {
    "global_attention": "uses windowed (hierarchical) attention, not one global token sequence",
    "logits": "has no classification head (explain it with a callable target instead)",
    "block_parts": "has no adapter naming its blocks' parts",
    "pixel_relevance": "has no adapter naming its embeddings and patch-embedding convolution",
    "image_text": "is not an image-text model with two towers (load a CLIP or SigLIP model)",
}


def family_processor(module: nn.Module, family: Family) -> Any:
    """The image processor of a module passed without one: its family's preprocessing (timm,
    open_clip), else resize to the model's size and normalise with 0.5 / 0.5."""
    if family.preprocessing is None:
        return default_processor(module, family)
    wanted = family.preprocessing(module)
    return resize_normalize_processor(wanted.size, mean=wanted.mean, std=wanted.std, resample=wanted.resample)


def as_model(model: AttnLensModel | nn.Module) -> AttnLensModel:
    """Wrap a plain module (HF, timm or open_clip) into an :class:`AttnLensModel` with its family's
    image processor (and tokenizer: open_clip); pass wrappers through."""
    if isinstance(model, AttnLensModel):
        return model
    if isinstance(model, nn.Module):
        inner = unwrap_module(model)
        family = family_of(inner)
        tokenizer = family.tokenizer(inner) if family.tokenizer is not None else None
        return AttnLensModel(inner, family_processor(inner, family), tokenizer=tokenizer)
    raise TypeError(f"expected an attnlens model (attnlens.load) or a torch.nn.Module, got {type(model).__name__}")



_shared_lock = threading.Lock()
_shared_users: dict[tuple[str, int], tuple[int, Any]] = {}


@contextmanager
def shared_setting(kind: str, owner: object, apply: Callable[[], Any], restore: Callable[[Any], None]) -> Iterator[None]:
    """Change a setting of a shared object for the block, reference counted across threads.

    The first caller for ``(kind, owner)`` runs ``apply()`` (which returns what ``restore`` needs);
    the last one to leave runs ``restore(saved)``. Several threads using one model at once so all
    see the setting, and none restores it under another (a plain save / set / restore per call
    would).
    """
    key = (kind, id(owner))
    with _shared_lock:
        users, saved = _shared_users.get(key, (0, None))
        if users == 0:
            saved = apply()
        _shared_users[key] = (users + 1, saved)
    try:
        yield
    finally:
        with _shared_lock:
            users, saved = _shared_users[key]
            if users == 1:
                del _shared_users[key]
                restore(saved)
            else:
                _shared_users[key] = (users - 1, saved)


def eval_mode(module: nn.Module):
    """Put ``module`` in eval mode for the block and restore its mode afterwards (thread-safe,
    see :func:`shared_setting`: concurrent explanations never switch dropout back on under another)."""

    def apply() -> bool:
        was_training = module.training
        module.eval()
        return was_training

    return shared_setting("eval", module, apply, module.train)
