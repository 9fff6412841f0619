"""The LRP engine: a functional forward of an adapter-described encoder, and relevance passes.

The model is never modified. :func:`build_spec` reads the parts the adapter names (embeddings,
patch-embedding convolution, pre-norm, the blocks' norms / projections / activation / layer
scales, the final norm, the head's classifiers and pooling) and :func:`forward` recomputes the
model with plain tensor operations from those parts, keeping the activations the relevance rules
need. Its logits equal the model's (tested for every supported family).

Two kinds of backward pass run on top of it:

* :func:`chefer_relprop`: Chefer et al.'s explicit LRP (``ViT_LRP.relprop``) from the head (or
  from the final tokens for callable targets) down to any block's attention, or to the pixels;
* the AttnLRP modified-gradient pass, by running :func:`forward` with :class:`AttnLRPOps` and
  one ``torch.autograd.grad`` call (see :mod:`attnlens.explain.lrp.attnlrp`).

Where the relevance starts (:class:`Seeds`):

* class targets: at the logits, the one-hot vector of the target class (the reference's start);
* a callable target ``f(output)``: the model's own forward is run once with its last block's
  output replaced by the functional forward's final tokens; for classifiers the gradient of
  ``f`` w.r.t. the logits is the start vector (the one-hot vector again when ``f`` picks a logit),
  otherwise (backbones, or an ``f`` that does not use the logits) the relevance starts at the
  final tokens as gradient × output, ``R = x_L ⊙ ∂f/∂x_L``.

Head rules of the explicit pass (the reference only has a linear head on the CLS token):
α1β0 for every classifier; the reference's ``IndexSelect`` rule ``x ⊙ safe_divide(R, x)`` for a
selected token; the ``Add`` rule between the two halves of DeiT's distillation average; the
z-rule for mean pooling (``R_i = x_i / n ⊙ R / mean``); pooling and final norms pass relevance
through, as the reference's layer norms do.

Every method runs the forward pass once per call; relevance passes are batched over all explained
rows (several targets per image reuse the image's activations). Token rows without relevance
(all but the readout tokens in the top block) are skipped in the token-wise layers. Models with
forward hooks on the recomputed parts are refused (the hooks would be bypassed), except the
observer hooks ``transformers`` installs for ``output_hidden_states`` / ``output_attentions``.

Cost of the explicit α1β0 rule: three matrix products per linear layer (``z⁺`` from the forward
product and ``|x| |W|ᵀ``, then ``S W`` and ``S |W|``), against one for the forward pass; ``|W|`` is
cached per model (:data:`ABSOLUTE_WEIGHTS`).
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnlens.adapters.base import Encoder, get_submodule
from attnlens.errors import UnsupportedModelError
from attnlens.explain.lrp import rules
from attnlens.tokens import TokenLayout


# =========================================================================== model parts
class AbsoluteWeights:
    """``|W|`` of the linear layers of the most recently explained model.

    Computing ``|W|`` costs a pass over every weight, as much as the relevance pass itself for a
    single image, so it is kept between calls for one model (1x the memory of its linear weights)
    and recomputed when a weight changes (new version, storage, dtype or device). Explaining
    another model, or :meth:`clear`, releases it. Set :attr:`enabled` to ``False`` to never keep it.
    """

    enabled: bool = True

    def __init__(self) -> None:
        self._owner: weakref.ref | None = None
        self._entries: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}

    def clear(self) -> None:
        self._owner = None
        self._entries = {}

    def get(self, owner: nn.Module | None, source: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled or owner is None or source is None:
            return weight.abs()
        if self._owner is None or self._owner() is not owner:
            self._owner = weakref.ref(owner)
            self._entries = {}
        stamp = (source._version, source.data_ptr(), weight.dtype, weight.device)
        hit = self._entries.get(id(source))
        if hit is not None and hit[0]() is source and hit[1] == stamp:
            return hit[2]
        absolute = weight.abs()
        self._entries[id(source)] = (weakref.ref(source), stamp, absolute)
        return absolute


ABSOLUTE_WEIGHTS = AbsoluteWeights()


@dataclass
class Linear:
    """A linear map ``y = x Wᵀ + b`` (constants: detached from the model's parameters)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    source: torch.Tensor | None = None  # the model's parameter (for the |W| cache)
    owner: nn.Module | None = None
    _signs: tuple[torch.Tensor, torch.Tensor] | None = None
    _absolute: torch.Tensor | None = None

    def signs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._signs is None:
            self._signs = rules.split_signs(self.weight)
        return self._signs

    def relprop(self, x: torch.Tensor, relevance: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """LRP-α1β0 given the input ``x`` and the forward ``output`` (with bias) of this layer."""
        if self._absolute is None:
            self._absolute = ABSOLUTE_WEIGHTS.get(self.owner, self.source, self.weight)
        product = output if self.bias is None else output - self.bias
        return rules.linear_alpha1_beta0_from_product(x, relevance, product, self.weight, self._absolute)


@dataclass
class Norm:
    """A normalisation layer: layer norm with known parameters, the identity, or a black box."""

    module: nn.Module | None
    shape: tuple[int, ...] | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 1e-5

    @property
    def is_identity(self) -> bool:
        return self.module is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.module is None:
            return x
        if self.shape is not None:
            return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        return self.module(x)

    def identity_rule(self, x: torch.Tensor) -> torch.Tensor:
        """Forward with the AttnLRP backward (normalisation scale held constant)."""
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
class Spec:
    """Everything the functional forward needs, resolved for one input size."""

    embeddings: nn.Module | None
    embeddings_kwargs: dict[str, Any]
    first_block: nn.Module
    last_block: nn.Module
    patch_conv: nn.Conv2d | None
    pre_norm: Norm | None
    blocks: list[Block]
    final_norm: Norm | None
    pooling: str
    classifiers: list[Linear]
    pool_norm: Norm | None
    layout: TokenLayout
    prefix_positions: torch.Tensor | None
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        return len(self.blocks)


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


def _linear(module: nn.Module | None, what: str, dtype: torch.dtype, owner: nn.Module | None = None) -> Linear:
    if not isinstance(module, nn.Linear):
        raise UnsupportedModelError(
            f"LRP needs {what} to be a torch.nn.Linear, got {type(module).__name__}"
        )
    bias = None if module.bias is None else module.bias.detach().to(dtype)
    return Linear(module.weight.detach().to(dtype), bias, module.weight, owner)


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


def _block(encoder: Encoder, module: nn.Module, dtype: torch.dtype, owner: nn.Module) -> Block:
    parts = encoder.block
    attention = _module(module, parts.attention, "attention module")
    if parts.qkv is not None:
        projections = [_linear(_module(module, parts.qkv, "fused qkv projection"), "the qkv projection", dtype, owner)]
        width, remainder = divmod(projections[0].weight.shape[0], 3)
    else:
        projections = [
            _linear(_module(module, path, f"{name} projection"), f"the {name} projection", dtype, owner)
            for name, path in (("query", parts.query), ("key", parts.key), ("value", parts.value))
        ]
        width = projections[0].weight.shape[0]
        remainder = int(any(p.weight.shape[0] != width for p in projections))
    if remainder:
        raise UnsupportedModelError("the query, key and value projections differ in width")
    heads, head_dim, scale = _geometry(attention, width)
    fc1 = _module(module, parts.fc1, "first MLP layer", required=False)
    fc2 = _module(module, parts.fc2, "second MLP layer", required=False)
    activation = _module(module, parts.activation, "MLP activation", required=False)
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
        out=_linear(_module(module, parts.out_proj, "attention output projection"), "the attention output projection", dtype, owner),
        fc1=_linear(fc1, "the first MLP layer", dtype, owner),
        fc2=_linear(fc2, "the second MLP layer", dtype, owner),
        activation=activation,
        scale1=_scale(module, parts.layer_scale1, dtype),
        scale2=_scale(module, parts.layer_scale2, dtype),
    )


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _prefix_positions(model, encoder: Encoder, layout: TokenLayout, dtype: torch.dtype) -> torch.Tensor | None:
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


_OBSERVER_MODULES = ("transformers.utils.output_capturing",)


def check_hooks(modules: list[nn.Module]) -> None:
    """Refuse models with forward hooks on parts the functional forward recomputes (they would be bypassed)."""
    import torch.nn.modules.module as module_globals

    if getattr(module_globals, "_global_forward_hooks", None) or getattr(module_globals, "_global_forward_pre_hooks", None):
        raise UnsupportedModelError(
            "global module forward hooks are installed; LRP recomputes the encoder functionally and would bypass them"
        )
    def foreign(hooks) -> bool:
        # transformers installs persistent output-capturing hooks (observers that return None) the
        # first time hidden states / attentions are requested; they do not change the computation
        return any(not str(getattr(hook, "__module__", "")).startswith(_OBSERVER_MODULES) for hook in hooks.values())

    for root in modules:
        for name, sub in root.named_modules():
            if foreign(sub._forward_hooks) or foreign(sub._forward_pre_hooks):
                raise UnsupportedModelError(
                    f"{type(sub).__name__} {name or ''} has forward hooks; LRP recomputes the encoder from its "
                    "parts and would bypass them (remove the hooks first)"
                )


def build_spec(model, pixels: torch.Tensor, layout: TokenLayout) -> Spec:
    """Resolve the model's parts through its adapter (raises :class:`UnsupportedModelError`)."""
    family = model.family
    if family.windowed or not family.encoders:
        raise UnsupportedModelError(f"{type(model.module).__name__} has no global token sequence to explain with LRP")
    encoder = family.encoder()
    root = model.module
    dtype = pixels.dtype
    block_modules = encoder.block_modules(root)
    if not block_modules:
        raise UnsupportedModelError("the encoder has no blocks")
    blocks = [_block(encoder, module, dtype, root) for module in block_modules]
    head = family.head
    classifiers: list[Linear] = []
    if head.pooling != "none":
        classifiers = [_linear(_module(root, path, "classifier"), f"the classifier {path!r}", dtype) for path in head.classifiers]
        expected = 2 if head.pooling == "cls_distillation_average" else 1
        if len(classifiers) != expected:
            raise UnsupportedModelError(f"pooling {head.pooling!r} needs {expected} classifier(s), the adapter names {len(classifiers)}")
    embeddings = _module(root, encoder.embeddings, "embeddings", required=False)
    kwargs: dict[str, Any] = {}
    if embeddings is not None and model.forward_kwargs(pixels):
        for name in model.forward_kwargs(pixels):
            if _accepts(embeddings, name):
                kwargs[name] = True
    interpolate = bool(model.forward_kwargs(pixels))
    if encoder.attention_bias is not None:
        with torch.no_grad():
            for index, block in enumerate(blocks):
                bias = encoder.attention_bias(root, index, layout, interpolate)
                block.attention_bias = None if bias is None else bias.detach().to(dtype)
    conv = _module(root, encoder.patch_embedding, "patch embedding", required=False)
    spec = Spec(
        embeddings=embeddings,
        embeddings_kwargs=kwargs,
        first_block=block_modules[0],
        last_block=block_modules[-1],
        patch_conv=conv if isinstance(conv, nn.Conv2d) else None,
        pre_norm=_norm(_module(root, encoder.pre_norm, "pre-norm", required=False), dtype) if embeddings is not None else None,
        blocks=blocks,
        final_norm=_norm(_module(root, encoder.final_norm, "final norm", required=False), dtype),
        pooling=head.pooling,
        classifiers=classifiers,
        pool_norm=_norm(_module(root, head.pool_norm, "pooling norm", required=False), dtype),
        layout=layout,
        prefix_positions=_prefix_positions(model, encoder, layout, dtype),
        dtype=dtype,
    )
    recomputed = list(block_modules)
    if head.pooling != "none":
        recomputed += [m for m in (_module(root, encoder.final_norm, "final norm", required=False),) if m is not None]
        recomputed += [_module(root, path, "classifier") for path in head.classifiers]
        if head.pool_norm:
            recomputed.append(_module(root, head.pool_norm, "pooling norm"))
    if encoder.pre_norm and embeddings is not None:
        recomputed.append(_module(root, encoder.pre_norm, "pre-norm"))
    check_hooks(recomputed)
    return spec


# =========================================================================== forward
class PlainOps:
    """The ordinary operations (Chefer's LRP reads the activations they produce)."""

    @staticmethod
    def linear(x: torch.Tensor, layer: Linear) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)

    @staticmethod
    def norm(layer: Norm, x: torch.Tensor) -> torch.Tensor:
        return layer(x)

    @staticmethod
    def activation(function, x: torch.Tensor) -> torch.Tensor:
        return function(x)

    @staticmethod
    def bilinear(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return a, b


class AttnLRPOps:
    """Operations whose backward implements AttnLRP (see :mod:`attnlens.explain.lrp.attnlrp`)."""

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def linear(self, x: torch.Tensor, layer: Linear) -> torch.Tensor:
        return rules.EpsilonLinear.apply(x, layer.weight, layer.bias, self.epsilon)

    @staticmethod
    def norm(layer: Norm, x: torch.Tensor) -> torch.Tensor:
        return layer.identity_rule(x)

    @staticmethod
    def activation(function, x: torch.Tensor) -> torch.Tensor:
        return rules.IdentityRule.apply(x, function)

    @staticmethod
    def bilinear(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rules.ScaleGradient.apply(a, 0.5), rules.ScaleGradient.apply(b, 0.5)


@dataclass
class BlockRecord:
    """Activations of one block (heads layout ``(B, H, T, d)`` for q, k, v)."""

    x: torch.Tensor
    h1: torch.Tensor
    projected: list[torch.Tensor]  # outputs of the q/k/v projection(s), with bias
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    qk: torch.Tensor
    attention: torch.Tensor
    o: torch.Tensor
    a: torch.Tensor
    a_scaled: torch.Tensor
    x1: torch.Tensor
    h2: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    m: torch.Tensor
    m_scaled: torch.Tensor
    x2: torch.Tensor


@dataclass
class Record:
    """What :func:`forward` keeps."""

    embeddings: torch.Tensor | None
    tokens: torch.Tensor
    blocks: list[BlockRecord | None]
    attentions: list[torch.Tensor | None]
    final: torch.Tensor
    normed: torch.Tensor | None = None
    head_input: torch.Tensor | None = None
    head_outputs: list[torch.Tensor] = field(default_factory=list)
    pooled: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def block_forward(block: Block, x: torch.Tensor, ops=PlainOps, keep: bool = False):
    """One block; returns ``(output, attention probabilities, BlockRecord or None)``."""
    batch, tokens, _ = x.shape
    h1 = ops.norm(block.norm1, x)
    projected = [ops.linear(h1, projection) for projection in block.projections]
    if len(projected) == 1:
        q, k, v = projected[0].view(batch, tokens, 3, block.heads, block.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (p.view(batch, tokens, block.heads, block.head_dim).transpose(1, 2) for p in projected)
    left, right = ops.bilinear(q, k.transpose(-1, -2))
    qk = torch.matmul(left, right)
    scores = qk * block.scale
    if block.attention_bias is not None:
        scores = scores + block.attention_bias
    if scores.dtype in (torch.float16, torch.bfloat16):
        attention = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    else:
        attention = torch.softmax(scores, dim=-1)
    left, right = ops.bilinear(attention, v)
    o = torch.matmul(left, right).transpose(1, 2).reshape(batch, tokens, block.heads * block.head_dim)
    a = ops.linear(o, block.out)
    a_scaled = block.scale1(a) if block.scale1 is not None else a
    x1 = x + a_scaled
    h2 = ops.norm(block.norm2, x1)
    f = ops.linear(h2, block.fc1)
    g = ops.activation(block.activation, f)
    m = ops.linear(g, block.fc2)
    m_scaled = block.scale2(m) if block.scale2 is not None else m
    x2 = x1 + m_scaled
    record = BlockRecord(x, h1, projected, q, k, v, qk, attention, o, a, a_scaled, x1, h2, f, g, m, m_scaled, x2) if keep else None
    return x2, attention, record


class _Stop(Exception):
    pass


def embed(model, spec: Spec, pixels: torch.Tensor) -> torch.Tensor:
    """The token embeddings ``(B, T, D)``: the embedding module's output (before any pre-norm).

    Without an embeddings module in the adapter, the first block's input is used instead; it is
    read by running the model until that block (a forward pre-hook that stops the forward there).
    """
    if spec.embeddings is None:
        return first_block_input(model, spec, pixels)
    with torch.no_grad():
        embeddings = spec.embeddings(pixels, **spec.embeddings_kwargs)
    if isinstance(embeddings, (tuple, list)):
        embeddings = embeddings[0]
    return embeddings


def first_block_input(model, spec: Spec, pixels: torch.Tensor) -> torch.Tensor:
    """The input of the first block, read by running the model up to it (then stopping)."""
    captured: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        captured.append(hidden.detach())
        raise _Stop

    handle = spec.first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(pixels)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UnsupportedModelError("the model's forward never reached its first block")
    return captured[0]


def forward(
    model,
    spec: Spec,
    pixels: torch.Tensor,
    *,
    keep_from: int | None = None,
    grad_from: int | None = None,
    ops=PlainOps,
    embeddings_leaf: bool = False,
) -> Record:
    """The functional forward.

    Args:
        keep_from: keep :class:`BlockRecord`\\ s of blocks ``>= keep_from`` (``None``: none).
        grad_from: build the autograd graph from the input of this block on (``None``: no graph);
            the attention probabilities of blocks ``>= grad_from`` are kept in
            :attr:`Record.attentions` for gradients.
        ops: :class:`PlainOps` or :class:`AttnLRPOps`.
        embeddings_leaf: make the embeddings an autograd leaf and build the graph from there
            (AttnLRP).
    """
    layers = spec.num_layers
    embeddings = embed(model, spec, pixels)
    spec.layout.check_length(embeddings.shape[1], what="the embeddings")
    graph_from = 0 if embeddings_leaf else grad_from
    if embeddings_leaf:
        embeddings = embeddings.detach().requires_grad_(True)
    record = Record(embeddings=embeddings, tokens=embeddings, blocks=[None] * layers, attentions=[None] * layers, final=embeddings)
    with torch.set_grad_enabled(embeddings_leaf):
        tokens = ops.norm(spec.pre_norm, embeddings) if spec.pre_norm is not None else embeddings
    record.tokens = tokens
    x = tokens
    for index, block in enumerate(spec.blocks):
        tracking = graph_from is not None and index >= graph_from
        if tracking and index == graph_from and not embeddings_leaf:
            x = x.detach().requires_grad_(True)
        keep = keep_from is not None and index >= keep_from
        with torch.set_grad_enabled(tracking):
            x, attention, block_record = block_forward(block, x, ops, keep)
        record.blocks[index] = block_record
        if tracking:
            record.attentions[index] = attention
    record.final = x
    if spec.pooling != "none":
        with torch.set_grad_enabled(graph_from is not None):
            head(spec, record, ops)
    return record


def head(spec: Spec, record: Record, ops=PlainOps) -> None:
    """The classifier head on the final tokens (sets ``normed``, ``head_input``, ``logits``)."""
    layout = spec.layout
    normed = ops.norm(spec.final_norm, record.final) if spec.final_norm is not None else record.final
    record.normed = normed
    if spec.pooling == "cls":
        record.head_input = normed[:, layout.cls_index]
        record.logits = ops.linear(record.head_input, spec.classifiers[0])
    elif spec.pooling == "cls_distillation_average":
        first = ops.linear(normed[:, layout.cls_index], spec.classifiers[0])
        second_index = layout.distillation_index
        if second_index is None:
            raise UnsupportedModelError("distillation-token pooling without a distillation token in the layout")
        second = ops.linear(normed[:, second_index], spec.classifiers[1])
        record.head_outputs = [first, second]
        record.logits = (first + second) / 2
    elif spec.pooling in ("mean_patches", "cls_mean_patches"):
        pooled = layout.patches(normed, dim=1).mean(dim=1)
        record.pooled = pooled
        if spec.pooling == "mean_patches":
            inputs = ops.norm(spec.pool_norm, pooled) if spec.pool_norm is not None else pooled
        else:
            inputs = torch.cat([normed[:, layout.cls_index], pooled], dim=-1)
        record.head_input = inputs
        record.logits = ops.linear(inputs, spec.classifiers[0])
    else:
        raise UnsupportedModelError(f"unsupported pooling {spec.pooling!r}")


# =========================================================================== where relevance starts
@dataclass
class Seeds:
    """Per explained row, the start of the backward passes.

    ``kind`` is ``"logits"`` (``values`` ``(N, C)``: d objective / d logits, one-hot for class
    targets) or ``"tokens"`` (``values`` ``(N, T, D)``: d objective / d final tokens). ``rounds``
    are the plan's row groups (each image at most once per group).
    """

    kind: str
    values: torch.Tensor
    rounds: list[torch.Tensor]
    image_index: torch.Tensor

    def round_seed(self, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """``(B, ...)`` seeds of one round (zeros for images not in it)."""
        out = self.values.new_zeros((batch, *self.values.shape[1:]))
        out[self.image_index[rows].to(out.device)] = self.values[rows.to(out.device)]
        return out


def _callable_gradients(context, model, spec: Spec, record: Record) -> tuple[str, torch.Tensor]:
    """Run the model with its last block's output replaced by ``record.final``; grad of the objective."""
    final = record.final.detach().requires_grad_(True)
    previous = torch.is_grad_enabled()

    def replace(module, args, output):
        torch.set_grad_enabled(True)
        if isinstance(output, (tuple, list)):
            return type(output)([final, *output[1:]])
        return final

    handle = spec.last_block.register_forward_hook(replace)
    try:
        with torch.no_grad():
            output = model(context.pixels)
    finally:
        handle.remove()
        torch.set_grad_enabled(previous)
    plan = context.resolve(output)
    logits = context.logits
    use_logits = spec.pooling != "none" and isinstance(logits, torch.Tensor) and logits.requires_grad
    rows_total = plan.num_rows
    targets = [logits, final] if use_logits else [final]
    rounds = plan.rounds()
    gradients = {0: None, 1: None}
    for number, rows in enumerate(rounds):
        with torch.enable_grad():
            objective = plan.objective(output, logits, rows)
        grads = torch.autograd.grad(objective, targets, retain_graph=number + 1 < len(rounds), allow_unused=True)
        images = plan.image_index[rows]
        for slot, grad in enumerate(grads):
            if grad is None:
                continue
            if gradients[slot] is None:
                gradients[slot] = grad.new_zeros((rows_total, *grad.shape[1:]))
            gradients[slot][rows.to(grad.device)] = grad[images.to(grad.device)]
    if use_logits and gradients[0] is not None and bool(gradients[0].abs().sum() > 0):
        return "logits", gradients[0].detach()
    tokens = gradients[1] if use_logits else gradients[0]
    if tokens is None:
        tokens = final.new_zeros((rows_total, *final.shape[1:]))
    return "tokens", tokens.detach()


def seeds(context, spec: Spec, record: Record) -> Seeds:
    """Resolve the targets (sets ``context.plan``) and the start of the backward passes."""
    target = context.target
    is_callable = callable(target) and not isinstance(target, (torch.Tensor, str))
    if is_callable:
        kind, values = _callable_gradients(context, context.model, spec, record)
    else:
        if spec.pooling == "none":
            context.resolve(None)  # raises: backbones need callable targets
        plan = context.resolve(record.logits.detach())
        values = record.logits.new_zeros((plan.num_rows, record.logits.shape[-1]))
        values[torch.arange(plan.num_rows, device=values.device), plan.classes.to(values.device)] = 1
        kind = "logits"
    plan = context.plan
    return Seeds(kind, values, plan.rounds(), plan.image_index)


def attention_gradients(spec: Spec, record: Record, start: Seeds, layers: list[int]) -> dict[int, torch.Tensor]:
    """Per explained row, the gradient of its objective w.r.t. the attention of ``layers``."""
    wanted = [record.attentions[index] for index in layers]
    output = record.logits if start.kind == "logits" else record.final
    batch = output.shape[0]
    if len(start.rounds) == 1 and Rows(start.image_index, batch).identity:  # one row per image, in order
        grads = torch.autograd.grad(output, wanted, grad_outputs=start.values.to(output.dtype), allow_unused=True)
        return {
            index: torch.zeros_like(attention) if grad is None else grad
            for index, attention, grad in zip(layers, wanted, grads)
        }
    result = {index: None for index in layers}
    for number, rows in enumerate(start.rounds):
        grads = torch.autograd.grad(
            output, wanted, grad_outputs=start.round_seed(rows, batch), retain_graph=number + 1 < len(start.rounds), allow_unused=True
        )
        images = start.image_index[rows]
        for index, grad in zip(layers, grads):
            if result[index] is None:
                shape = (start.values.shape[0], *record.attentions[index].shape[1:])
                result[index] = record.attentions[index].new_zeros(shape)
            if grad is not None:
                result[index][rows.to(grad.device)] = grad[images.to(grad.device)]
    return result


# =========================================================================== Chefer's relprop
class Rows:
    """Gathers per-image activations for the explained rows."""

    def __init__(self, image_index: torch.Tensor, batch: int) -> None:
        self.identity = image_index.numel() == batch and bool((image_index == torch.arange(batch)).all())
        self.index = image_index

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return tensor.detach()
        return tensor.detach().index_select(0, self.index.to(tensor.device))


def head_relprop(spec: Spec, record: Record, relevance: torch.Tensor, take: Rows) -> torch.Tensor:
    """Relevance ``(N, C)`` at the logits -> relevance ``(N, T, D)`` at the final tokens."""
    layout = spec.layout
    normed = take(record.normed)
    result = torch.zeros_like(normed)

    def select(index: int, share: torch.Tensor) -> None:
        # the reference's IndexSelect rule: x ⊙ safe_divide(R, x)
        token = normed[:, index]
        result[:, index] += token * rules.safe_divide(share, token)

    def mean(share: torch.Tensor) -> None:
        patches = layout.patches(normed, dim=1)
        pooled = take(record.pooled)[:, None]
        relevance_patches = patches * rules.safe_divide(share[:, None], pooled) / patches.shape[1]
        result[:, layout.patch_slice] += relevance_patches

    if spec.pooling == "cls":
        share = rules.linear_alpha1_beta0(take(record.head_input), relevance, *spec.classifiers[0].signs())
        select(layout.cls_index, share)
    elif spec.pooling == "cls_distillation_average":
        first, second = (take(t) / 2 for t in record.head_outputs)
        first_share, second_share = rules.add_rule(first, second, relevance)
        for classifier, share, index in (
            (spec.classifiers[0], first_share, layout.cls_index),
            (spec.classifiers[1], second_share, layout.distillation_index),
        ):
            select(index, rules.linear_alpha1_beta0(normed[:, index], share, *classifier.signs()))
    elif spec.pooling == "mean_patches":
        share = rules.linear_alpha1_beta0(take(record.head_input), relevance, *spec.classifiers[0].signs())
        mean(share)  # the pooling norm passes relevance through
    elif spec.pooling == "cls_mean_patches":
        share = rules.linear_alpha1_beta0(take(record.head_input), relevance, *spec.classifiers[0].signs())
        width = normed.shape[-1]
        select(layout.cls_index, share[:, :width])
        mean(share[:, width:])
    return result  # the final norm passes relevance through


def _active_tokens(relevance: torch.Tensor) -> torch.Tensor | None:
    """Indices of the tokens with any nonzero relevance, if they are at most half of them."""
    mask = relevance.ne(0).any(dim=-1).any(dim=0)
    count = int(mask.sum())
    if 2 * count > mask.numel():
        return None
    return mask.nonzero().squeeze(1)


class _TokenSubset:
    """Select / scatter back a subset of the token dimension (dimension 1)."""

    def __init__(self, index: torch.Tensor | None) -> None:
        self.index = index

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.index is None else tensor.index_select(1, self.index)

    def scatter(self, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return tensor
        full = torch.zeros_like(like)
        full[:, self.index] = tensor
        return full


def block_relprop(
    block: Block,
    record: BlockRecord,
    relevance: torch.Tensor,
    take: Rows,
    *,
    stop_at_attention: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One block of ``ViT_LRP.Block.relprop``.

    Returns ``(relevance at the block input or None, attn_cam)`` where ``attn_cam`` ``(N, H, T, T)``
    is the relevance of the attention probabilities (already halved between A and V, as the
    reference stores it). With ``stop_at_attention`` the pass ends there.
    """
    x1 = take(record.x1)
    # tokens without relevance (e.g. all but the readout token in the top block) are skipped in
    # the token-wise layers
    active = _active_tokens(relevance)
    sub = _TokenSubset(active)
    # second residual: x2 = x1 + s2(m)
    residual, branch = rules.add_rule(x1, take(record.m_scaled), relevance, total=take(record.x2))
    branch = block.fc2.relprop(sub(take(record.g)), sub(branch), sub(take(record.m)))  # layer scale, activation: pass
    branch = sub.scatter(block.fc1.relprop(sub(take(record.h2)), branch, sub(take(record.f))), x1)  # norm2: pass
    relevance = rules.clone_rule(x1, residual, branch)
    # first residual: x1 = x + s1(a)
    x = take(record.x)
    residual, branch = rules.add_rule(x, take(record.a_scaled), relevance, total=x1)
    branch = sub.scatter(block.out.relprop(sub(take(record.o)), sub(branch), sub(take(record.a))), x)
    batch, tokens, _ = branch.shape
    branch = branch.view(batch, tokens, block.heads, block.head_dim).transpose(1, 2)
    attention = take(record.attention)
    v = take(record.v)
    o = take(record.o).view(batch, tokens, block.heads, block.head_dim).transpose(1, 2)
    attention_relevance, v_relevance = rules.matmul_z_rule(attention, v, branch, product=o)
    attention_relevance = attention_relevance / 2
    if stop_at_attention:
        return None, attention_relevance
    v_relevance = v_relevance / 2
    # the softmax passes relevance through; scores = q kᵀ · scale: z-rule on q kᵀ
    q, k = take(record.q), take(record.k)
    q_relevance, k_relevance = rules.matmul_z_rule(q, k.transpose(-1, -2), attention_relevance, product=take(record.qk))
    q_relevance = q_relevance / 2
    k_relevance = (k_relevance / 2).transpose(-1, -2)
    h1 = take(record.h1)
    width = block.heads * block.head_dim
    relevances = [r.transpose(1, 2).reshape(batch, tokens, width) for r in (q_relevance, k_relevance, v_relevance)]
    if len(block.projections) == 1:  # fused: 'qkv b h n d -> b n (qkv h d)'
        branch = block.projections[0].relprop(h1, torch.cat(relevances, dim=-1), take(record.projected[0]))
    else:  # LRP-αβ is per output unit: three projections = one fused projection
        branch = None
        for projection, share, output in zip(block.projections, relevances, record.projected):
            part = projection.relprop(h1, share, take(output))
            branch = part if branch is None else branch + part
    # norm1 passes relevance through
    return rules.clone_rule(x, residual, branch), attention_relevance


def start_relevance(spec: Spec, record: Record, start: Seeds, take: Rows) -> torch.Tensor:
    """Relevance ``(N, T, D)`` at the final tokens."""
    if start.kind == "logits":
        return head_relprop(spec, record, start.values.to(spec.dtype), take)
    return take(record.final) * start.values


def chefer_relprop(
    spec: Spec,
    record: Record,
    start: Seeds,
    *,
    down_to: int,
    to_input: bool = False,
    on_attention: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor | None:
    """Chefer's relprop from the top down to block ``down_to``'s attention, or to the tokens.

    ``on_attention(layer, attn_cam)`` receives the attention relevance of every visited block.
    With ``to_input`` returns the relevance ``(N, T, D)`` of the first block's input.
    """
    take = Rows(start.image_index, record.final.shape[0])
    with torch.no_grad():
        relevance = start_relevance(spec, record, start, take)
        for index in range(spec.num_layers - 1, down_to - 1, -1):
            stop = index == down_to and not to_input
            relevance, attention_relevance = block_relprop(
                spec.blocks[index], record.blocks[index], relevance, take, stop_at_attention=stop
            )
            if on_attention is not None:
                on_attention(index, attention_relevance)
    return relevance


def pixel_relprop(spec: Spec, record: Record, relevance: torch.Tensor, pixels: torch.Tensor, start: Seeds) -> torch.Tensor:
    """Relevance at the first block's input -> ``(N, H, W)`` pixel relevance (summed over channels).

    The pre-norm passes relevance through. At the embeddings ``E = content + positions`` the
    reference's ``Add`` rule splits the relevance and the positions' share is dropped; the patch
    tokens' content share goes through the patch convolution with the z^B rule.
    """
    if spec.patch_conv is None or spec.embeddings is None:
        raise UnsupportedModelError(
            "full LRP needs the embeddings module and the patch-embedding convolution (torch.nn.Conv2d) from the model's adapter"
        )
    layout = spec.layout
    take = Rows(start.image_index, record.final.shape[0])
    with torch.no_grad():
        embeddings = take(record.embeddings)
        rows_pixels = take(pixels)
        conv = spec.patch_conv
        patches = F.conv2d(rows_pixels.to(conv.weight.dtype), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        grid = tuple(patches.shape[-2:])
        if grid != tuple(layout.grid):
            raise UnsupportedModelError(f"the patch convolution gives a {grid} grid, the layout expects {layout.grid}")
        patches = patches.flatten(2).transpose(1, 2).to(embeddings.dtype)
        prefix = layout.num_prefix_tokens
        prefix_positions = spec.prefix_positions
        if prefix_positions is None:
            prefix_positions = embeddings.new_zeros(prefix, embeddings.shape[-1])
        prefix_positions = prefix_positions.expand(embeddings.shape[0], -1, -1)
        content = torch.cat([embeddings[:, :prefix] - prefix_positions, patches], dim=1)
        positions = torch.cat([prefix_positions, embeddings[:, prefix:] - patches], dim=1)
        content_relevance, _ = rules.add_rule(content, positions, relevance, total=embeddings)
        patch_relevance = layout.patches(content_relevance, dim=1)
        patch_relevance = patch_relevance.transpose(1, 2).reshape(patch_relevance.shape[0], -1, *layout.grid)
        pixel_relevance = rules.conv_zb_rule(rows_pixels.to(patch_relevance.dtype), patch_relevance, conv)
    return pixel_relevance.sum(dim=1)


def prepare(context, *, keep_from: int | None, grad_from: int | None = None) -> tuple[Spec, Record, Seeds]:
    """Spec, functional forward and seeds for a method call (targets resolved on ``context``)."""
    spec = build_spec(context.model, context.pixels, context.layout)
    record = forward(context.model, spec, context.pixels.detach(), keep_from=keep_from, grad_from=grad_from)
    return spec, record, seeds(context, spec, record)
