"""The parts of a model that the LRP methods recompute, resolved through the model's adapter.

:func:`build_spec` reads the parts the adapter names (embeddings, patch-embedding convolution,
pre-norm, every block's norms / projections / activation / layer scales, and for classifiers the
final norm, the readout, an optional pooling norm and the classifiers) into a :class:`Spec` of
plain constants (detached from the model's parameters) for one input size. The model is never
modified. Models whose parts cannot be recomputed are refused with a one-line
:class:`~attnlens.errors.UnsupportedModelError` that names the missing part: an adapter without
block parts, a gated (SwiGLU) MLP, query/key norms, an attention-pooling readout, or forward
hooks on a recomputed part (the hooks would be bypassed; the observer hooks ``transformers``
installs for ``output_hidden_states`` / ``output_attentions`` are allowed).

``|W|`` of every block's linear layers (for the α1β0 rule of Chefer et al., CVPR 2021) is kept on
the model wrapper (:meth:`AttnLensModel.derived`, 1x the memory of those weights) and recomputed
when a weight changes (new version, storage, dtype or device).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlens.adapters.base import Encoder, get_submodule
from attnlens.adapters.readouts import Readout
from attnlens.capture import ThreadHook, is_captured
from attnlens.errors import UnsupportedModelError
from attnlens.attribution import lrp_rules as rules
from attnlens.model import AttnLensModel
from attnlens.tokens import TokenLayout

LRP_CAPABILITIES = ("global_attention", "block_parts")


# =========================================================================== parts
@dataclass
class Linear:
    """A linear map ``y = x Wᵀ + b`` with constant ``weight`` ``(out, in)`` and ``bias`` ``(out,)``.

    ``source`` is the model's parameter the weight was read from and ``name`` its path in the
    model: together they key the ``|W|`` kept on ``model`` between calls.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    source: nn.Parameter
    name: str
    model: AttnLensModel

    def signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W⁺, W⁻)``, the positive and negative parts of the weight."""
        return rules.split_signs(self.weight)

    def absolute(self) -> torch.Tensor:
        """``|W|`` ``(out, in)``, kept on the model wrapper until the weight changes."""
        source = self.source
        stamp = (id(source), source._version, source.data_ptr(), self.weight.dtype, self.weight.device)
        return self.model.derived(("lrp", "absolute weight", self.name), stamp, self.weight.abs)

    def relprop(self, x: torch.Tensor, relevance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """LRP-α1β0 (Chefer et al., CVPR 2021): relevance ``(..., out)`` of the output -> ``(..., in)``.

        ``x`` is the layer's input and ``output`` its forward output (with bias), both ``(..., in/out)``.
        """
        product = output if self.bias is None else output - self.bias
        return rules.linear_alpha1_beta0_from_product(x, relevance, product, self.weight, self.absolute())


@dataclass
class Norm:
    """A normalisation layer: a layer norm with known parameters, the identity, or a black box."""

    module: nn.Module | None
    shape: tuple[int, ...] | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 1e-5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            return x
        if self.shape is not None:
            return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        return self.module(x)

    def identity_rule(self, x: torch.Tensor) -> torch.Tensor:
        """The forward with AttnLRP's backward (normalisation scale held constant; Achtibat et al., 2024)."""
        if self.module is None:
            return x
        if self.shape is None:
            raise UnsupportedModelError(
                f"AttnLRP needs layer-norm parameters; {type(self.module).__name__} is not a LayerNorm"
            )
        return rules.LayerNormIdentity.apply(x, self.shape, self.weight, self.bias, self.eps)


@dataclass
class Block:
    """One pre-norm block: ``x + s1(out(attn(norm1 x)))`` then ``x + s2(fc2(act(fc1(norm2 x))))``."""

    norm1: Norm
    norm2: Norm
    projections: list[Linear]  # [fused qkv] or [query, key, value]
    heads: int
    head_dim: int
    scale: float
    out: Linear
    fc1: Linear
    fc2: Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    scale1: Callable[[torch.Tensor], torch.Tensor] | None
    scale2: Callable[[torch.Tensor], torch.Tensor] | None
    attention_bias: torch.Tensor | None = None


@dataclass
class HeadParts:
    """A classifier head: ``logits = readout.combine([c(pool_norm(x)) for c, x in
    zip(classifiers, readout.pool(final_norm(tokens)))])``."""

    readout: Readout
    final_norm: Norm | None
    pool_norm: Norm | None
    classifiers: list[Linear]


@dataclass
class Spec:
    """Everything the functional forward and the relevance passes need, for one input size.

    ``head`` is ``None`` for backbones (the relevance then starts at the final tokens).
    ``embeddings`` is the module whose output (or, with ``embeddings_input``, whose input: timm,
    open_clip) is the token embeddings.
    """

    embeddings: nn.Module | None
    embeddings_input: bool
    embeddings_kwargs: dict[str, Any]
    first_block: nn.Module
    last_block: nn.Module
    patch_conv: nn.Conv2d | None
    pre_norm: Norm | None
    blocks: list[Block]
    head: HeadParts | None
    layout: TokenLayout
    prefix_positions: torch.Tensor | None
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def check_pixel_parts(self) -> None:
        """Raise unless the embeddings module and a ``Conv2d`` patch embedding are known (full LRP)."""
        if self.patch_conv is None or self.embeddings is None:
            raise UnsupportedModelError(
                "full LRP needs the embeddings module and the patch-embedding convolution (torch.nn.Conv2d) "
                "from the model's adapter"
            )


# =========================================================================== resolving parts
def _module(root: nn.Module, path: str | None, what: str, required: bool = True) -> nn.Module | None:
    if path is None:
        if required:
            raise UnsupportedModelError(f"the model's adapter does not say where its {what} is")
        return None
    try:
        return get_submodule(root, path)
    except AttributeError as error:
        if required:
            raise UnsupportedModelError(f"the model has no {what} at {path!r} ({error})") from None
        return None


def _attribute(root: nn.Module, path: str) -> Any:
    value: Any = root
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _linear_parameters(module: nn.Module, what: str) -> tuple[nn.Parameter, nn.Parameter | None]:
    """``(weight (out, in), bias (out,) or None)`` of an ``nn.Linear``, or of the fused input
    projection of an ``nn.MultiheadAttention`` (open_clip's blocks; rows ordered q, k, v)."""
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        return module.in_proj_weight, module.in_proj_bias
    raise UnsupportedModelError(f"LRP needs the {what} to be a torch.nn.Linear, got {type(module).__name__}")


def _linear(model: AttnLensModel, path: str | None, what: str, dtype: torch.dtype) -> Linear:
    """The linear map at ``path`` (relative to the model) as constants."""
    weight, bias = _linear_parameters(_module(model.module, path, what), what)
    return Linear(weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype), weight, path, model)


def _norm(module: nn.Module | None, dtype: torch.dtype) -> Norm | None:
    if module is None:
        return None
    if isinstance(module, nn.Identity):
        return Norm(None)
    shape = getattr(module, "normalized_shape", None)
    eps = getattr(module, "eps", None)
    if isinstance(module, nn.LayerNorm) or (shape is not None and eps is not None and hasattr(module, "weight")):
        weight = None if getattr(module, "weight", None) is None else module.weight.detach().to(dtype)
        bias = None if getattr(module, "bias", None) is None else module.bias.detach().to(dtype)
        return Norm(module, tuple(shape), weight, bias, float(eps))
    return Norm(module)


def _optional_norm(root: nn.Module, path: str | None, what: str, dtype: torch.dtype) -> Norm | None:
    return _norm(_module(root, path, what, required=False), dtype)


def _scale(block: nn.Module, path: str | None, dtype: torch.dtype) -> Callable | None:
    """A layer scale: a module (called), a parameter / tensor (multiplied) or a number."""
    if path is None:
        return None
    value = _attribute(block, path)
    if value is None or isinstance(value, nn.Identity):
        return None
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, torch.Tensor):
        gamma = value.detach().to(dtype)
        return lambda x: x * gamma
    if isinstance(value, (int, float)):
        if float(value) == 1.0:
            return None
        number = float(value)
        return lambda x: x * number
    raise UnsupportedModelError(f"unsupported layer scale {path!r} of type {type(value).__name__}")


def _geometry(attention: nn.Module, width: int) -> tuple[int, int, float]:
    """``(heads, head_dim, score scale)`` of an attention module of ``width`` channels."""
    heads = None
    for name in ("num_heads", "num_attention_heads", "n_heads"):
        value = getattr(attention, name, None)
        if isinstance(value, int) and value > 0:
            heads = value
            break
    if heads is None or width % heads:
        raise UnsupportedModelError(
            f"cannot read the number of attention heads of {type(attention).__name__} (looked for num_heads / num_attention_heads)"
        )
    head_dim = width // heads
    scale = None
    for name in ("scaling", "scale"):
        value = getattr(attention, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scale = float(value)
            break
    for name in ("q_norm", "k_norm"):
        norm = getattr(attention, name, None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            raise UnsupportedModelError(f"{type(attention).__name__} normalises queries/keys ({name}); LRP does not support it")
    return heads, head_dim, head_dim**-0.5 if scale is None else scale


def _projections(model: AttnLensModel, encoder: Encoder, path: str, dtype: torch.dtype) -> list[Linear]:
    """The fused qkv projection, or the query, key and value projections, of one block."""
    parts = encoder.block
    if parts.qkv is not None:
        projections = [_linear(model, f"{path}.{parts.qkv}", "fused qkv projection", dtype)]
        uneven = projections[0].weight.shape[0] % 3 != 0
    else:
        projections = [
            _linear(model, f"{path}.{part}" if part else part, f"{name} projection", dtype)
            for name, part in (("query", parts.query), ("key", parts.key), ("value", parts.value))
        ]
        uneven = len({p.weight.shape[0] for p in projections}) > 1
    if uneven:
        raise UnsupportedModelError("the query, key and value projections differ in width")
    return projections


def _block(model: AttnLensModel, encoder: Encoder, index: int, module: nn.Module, dtype: torch.dtype) -> Block:
    parts = encoder.block
    path = f"{encoder.blocks}.{index}"
    projections = _projections(model, encoder, path, dtype)
    width = projections[0].weight.shape[0] // (3 if len(projections) == 1 else 1)
    heads, head_dim, scale = _geometry(_module(module, parts.attention, "attention module"), width)
    fc1, fc2, activation = (_module(module, p, "MLP part", required=False) for p in (parts.fc1, parts.fc2, parts.activation))
    if fc1 is None or fc2 is None or activation is None:
        raise UnsupportedModelError(
            f"LRP needs a plain MLP (fc1, activation, fc2) in every block; {type(module).__name__} has "
            "another feed-forward layout (e.g. a gated SwiGLU MLP)"
        )
    return Block(
        norm1=_norm(_module(module, parts.norm1, "first norm"), dtype),
        norm2=_norm(_module(module, parts.norm2, "second norm"), dtype),
        projections=projections,
        heads=heads,
        head_dim=head_dim,
        scale=scale,
        out=_linear(model, f"{path}.{parts.out_proj}", "attention output projection", dtype),
        fc1=_linear(model, f"{path}.{parts.fc1}", "first MLP layer", dtype),
        fc2=_linear(model, f"{path}.{parts.fc2}", "second MLP layer", dtype),
        activation=activation,
        scale1=_scale(module, parts.layer_scale1, dtype),
        scale2=_scale(module, parts.layer_scale2, dtype),
    )


def _head(model: AttnLensModel, encoder: Encoder, dtype: torch.dtype) -> HeadParts | None:
    head = model.family.head
    if head is None:
        return None
    root = model.module
    return HeadParts(
        readout=head.readout,
        final_norm=_optional_norm(root, encoder.final_norm, "final norm", dtype),
        pool_norm=_optional_norm(root, head.pool_norm, "pooling norm", dtype),
        classifiers=[_linear(model, path, f"classifier {path!r}", dtype) for path in head.classifiers],
    )


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _prefix_positions(model: AttnLensModel, encoder: Encoder, layout: TokenLayout, dtype: torch.dtype) -> torch.Tensor | None:
    """``(num_prefix, D)`` position embedding of each prefix token (zeros for tokens without one)."""
    if encoder.position_embedding is None:
        return None
    table = _attribute(model.module, encoder.position_embedding)
    if isinstance(table, nn.Embedding):
        table = table.weight
    if not isinstance(table, torch.Tensor):
        return None  # the model has no absolute positions (e.g. BEiT with relative bias only)
    table = table.detach().to(dtype).reshape(-1, table.shape[-1])
    height, width = model.image_size
    native = (height // layout.patch_size[0]) * (width // layout.patch_size[1])
    extra = table.shape[0] - native
    if not 0 <= extra <= layout.num_prefix_tokens:
        return None
    positions = table.new_zeros(layout.num_prefix_tokens, table.shape[-1])
    positions[:extra] = table[:extra]
    return positions


def _attention_biases(model: AttnLensModel, encoder: Encoder, blocks: list[Block], pixels: torch.Tensor, layout: TokenLayout) -> None:
    """Set every block's additive attention-score bias (BEiT's relative position bias) for this input."""
    if encoder.attention_bias is None:
        return
    interpolate = bool(model.forward_kwargs(pixels))
    with torch.no_grad():
        for index, block in enumerate(blocks):
            bias = encoder.attention_bias(model.module, index, layout, interpolate)
            block.attention_bias = None if bias is None else bias.detach().to(pixels.dtype)


# =========================================================================== hooks
_OBSERVER_MODULES = ("transformers.utils.output_capturing",)
_CAPTURE_MODULES = ("attnlens.capture.",)


def _acts_here(hook: Callable[..., Any], module: nn.Module) -> bool:
    """Whether ``hook`` on ``module`` acts on this thread's forward passes.

    Not: ``transformers``' output-capturing observers (they return ``None`` and do not change the
    computation), attnlens captures of other threads (:func:`attnlens.capture.is_captured`) and
    :class:`ThreadHook` instances of other threads.
    """
    if isinstance(hook, ThreadHook):
        return hook.thread == threading.get_ident()
    origin = str(getattr(hook, "__module__", ""))
    if origin.startswith(_OBSERVER_MODULES):
        return False
    return not origin.startswith(_CAPTURE_MODULES) or is_captured(module)


def check_hooks(modules: list[nn.Module]) -> None:
    """Refuse forward hooks on the parts the functional forward recomputes (they would be bypassed)."""
    import torch.nn.modules.module as module_globals

    if getattr(module_globals, "_global_forward_hooks", None) or getattr(module_globals, "_global_forward_pre_hooks", None):
        raise UnsupportedModelError(
            "global module forward hooks are installed; LRP recomputes the encoder functionally and would bypass them"
        )
    for root in modules:
        for name, sub in root.named_modules():
            hooks = (*tuple(sub._forward_hooks.values()), *tuple(sub._forward_pre_hooks.values()))
            if any(_acts_here(hook, sub) for hook in hooks):
                raise UnsupportedModelError(
                    f"{type(sub).__name__} {name or ''} has forward hooks; LRP recomputes the encoder from its "
                    "parts and would bypass them (remove the hooks first)"
                )


def _recomputed_modules(model: AttnLensModel, encoder: Encoder, block_modules: list[nn.Module], spec: Spec) -> list[nn.Module]:
    """The modules whose forward the functional forward replaces."""
    root = model.module
    recomputed = list(block_modules)
    head = model.family.head
    if head is not None:
        paths = [encoder.final_norm, head.pool_norm, *head.classifiers]
        recomputed += [m for m in (_module(root, p, "head part", required=False) for p in paths) if m is not None]
    if encoder.pre_norm and spec.embeddings is not None:
        recomputed.append(_module(root, encoder.pre_norm, "pre-norm"))
    return recomputed


# =========================================================================== the spec
def build_spec(model: AttnLensModel, pixels: torch.Tensor, layout: TokenLayout) -> Spec:
    """Resolve the model's parts through its adapter for ``pixels`` ``(B, 3, H, W)``.

    Raises :class:`UnsupportedModelError` (one line, naming what is missing) for models the LRP
    methods cannot recompute.
    """
    model.require(LRP_CAPABILITIES, "LRP")
    try:
        model.readout.check_relprop()
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f"LRP cannot run on {type(model.module).__name__}: {error}") from None
    encoder = model.family.encoder()
    root = model.module
    dtype = pixels.dtype
    block_modules = encoder.block_modules(root)
    if not block_modules:
        raise UnsupportedModelError("the encoder has no blocks")
    blocks = [_block(model, encoder, index, module, dtype) for index, module in enumerate(block_modules)]
    _attention_biases(model, encoder, blocks, pixels, layout)
    embeddings = _module(root, encoder.embeddings, "embeddings", required=False)
    called = embeddings is not None and not encoder.embeddings_input
    interpolation = model.forward_kwargs(pixels) if called else {}
    conv = _module(root, encoder.patch_embedding, "patch embedding", required=False)
    spec = Spec(
        embeddings=embeddings,
        embeddings_input=encoder.embeddings_input,
        embeddings_kwargs={name: True for name in interpolation if _accepts(embeddings, name)},
        first_block=block_modules[0],
        last_block=block_modules[-1],
        patch_conv=conv if isinstance(conv, nn.Conv2d) else None,
        pre_norm=_optional_norm(root, encoder.pre_norm, "pre-norm", dtype) if embeddings is not None else None,
        blocks=blocks,
        head=_head(model, encoder, dtype),
        layout=layout,
        prefix_positions=_prefix_positions(model, encoder, layout, dtype),
        dtype=dtype,
    )
    check_hooks(_recomputed_modules(model, encoder, block_modules, spec))
    return spec
