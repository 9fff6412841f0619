"""Record the attention probabilities of any transformer, however it computes attention.

:class:`AttentionCapture` is a context manager. While it is active, every selected attention layer
of the model runs inside a *scope* (a forward pre-hook opens it, a forward hook closes it). Inside a
scope, the attention computation is intercepted at the two places every implementation goes
through:

* fused attention, ``torch.nn.functional.scaled_dot_product_attention`` (Hugging Face ``sdpa``,
  timm ``fused_attn``, diffusers, ``nn.MultiheadAttention(need_weights=False)``): the call is
  answered by an explicit computation that also returns the probabilities;
* eager attention (Hugging Face ``eager``, timm without fused attention, ``nn.MultiheadAttention``
  with weights): the first softmax over the key axis is the probability matrix and is recorded.

``nn.MultiheadAttention``'s native fast path (inference only) computes attention in one C++ call,
so it is switched off while capturing. The recorded probabilities are ordinary tensors of the
autograd graph: after a backward pass their gradients are in :attr:`AttentionRecord.grad`. All
hooks and patches are removed on exit, also when an exception escapes the block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnlens.capture.kernel import eager_attention
from attnlens.errors import AttentionNotFoundError, InputError


@dataclass
class AttentionRecord:
    """One call of one attention layer.

    Attributes:
        layer: index of the layer among the model's attention layers (0 = first).
        name: qualified module name of the layer.
        probs: ``(batch, heads, queries, keys)`` attention probabilities (post-softmax, pre-dropout).
        grad: gradient of the backward pass's objective w.r.t. ``probs``, once available.
    """

    layer: int
    name: str
    probs: torch.Tensor
    grad: torch.Tensor | None = None


@dataclass
class _Scope:
    capture: "AttentionCapture"
    layer: int
    name: str
    num_heads: int | None
    recorded: bool = False


_state = threading.local()


def _scopes() -> list[_Scope]:
    if not hasattr(_state, "scopes"):
        _state.scopes = []
    return _state.scopes


def _open_scope() -> _Scope | None:
    """The innermost attention scope that has not recorded yet, if any."""
    scopes = _scopes()
    if scopes and not scopes[-1].recorded:
        return scopes[-1]
    return None


_ORIGINAL_SDPA = F.scaled_dot_product_attention
_ORIGINAL_TENSOR_SOFTMAX = torch.Tensor.softmax
_ORIGINAL_TORCH_SOFTMAX = torch.softmax


def _intercepted_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    scope = _open_scope()
    if scope is None:
        return _ORIGINAL_SDPA(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )
    scope.recorded = True  # the kernel's own softmax must not be recorded a second time
    output, probabilities = eager_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    scope.capture._record(scope, probabilities)
    return output


def _softmax_dim(args: tuple, kwargs: dict) -> int | None:
    if "dim" in kwargs:
        return kwargs["dim"]
    return args[0] if args else None


def _record_softmax(input: torch.Tensor, output: torch.Tensor, dim: int | None) -> None:
    scope = _open_scope()
    if scope is None or dim is None or input.dim() < 3:
        return
    if dim not in (-1, input.dim() - 1):
        return
    scope.capture._record(scope, output)


def _headed_softmax(original: Callable, input: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Softmax of a ``(B*H, Q, K)`` score tensor (``nn.MultiheadAttention`` with weights) computed as
    ``(B, H, Q, K)`` and recorded so, the result returned as a view of the recorded tensor.

    Recording a reshaped *copy-view* of the softmax output instead would leave it off the path to
    the layer's output, so no gradient would ever reach it. ``None`` if not applicable.
    """
    scope = _open_scope()
    dim = _softmax_dim(args, kwargs)
    if scope is None or input.dim() != 3 or dim not in (-1, 2) or not scope.num_heads:
        return None
    if input.shape[0] % scope.num_heads:
        return None
    rest = args[1:] if args else ()
    options = {key: value for key, value in kwargs.items() if key != "dim"}
    probabilities = original(input.reshape(-1, scope.num_heads, *input.shape[-2:]), -1, *rest, **options)
    scope.capture._record(scope, probabilities)
    return probabilities.reshape(input.shape)


def _softmax_interceptor(original: Callable) -> Callable:
    """A replacement for ``original`` (``Tensor.softmax`` or ``torch.softmax``) that records the
    attention probabilities while an attention scope is open."""

    def intercepted(input, *args, **kwargs):
        headed = _headed_softmax(original, input, args, kwargs)
        if headed is not None:
            return headed
        output = original(input, *args, **kwargs)
        _record_softmax(input, output, _softmax_dim(args, kwargs))
        return output

    return intercepted


_intercepted_tensor_softmax = _softmax_interceptor(_ORIGINAL_TENSOR_SOFTMAX)
_intercepted_torch_softmax = _softmax_interceptor(_ORIGINAL_TORCH_SOFTMAX)


_patch_lock = threading.Lock()
_patch_users = 0
_saved_fastpath: list[bool] = []


@contextmanager
def _interception_patches() -> Iterator[None]:
    """Install the SDPA/softmax interceptors (reference counted) and always remove them."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            fastpath = torch.backends.mha.get_fastpath_enabled()
            F.scaled_dot_product_attention = _intercepted_sdpa
            torch.Tensor.softmax = _intercepted_tensor_softmax
            torch.softmax = _intercepted_torch_softmax
            torch.backends.mha.set_fastpath_enabled(False)
            _saved_fastpath.append(fastpath)
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                F.scaled_dot_product_attention = _ORIGINAL_SDPA
                del torch.Tensor.softmax
                torch.softmax = _ORIGINAL_TORCH_SOFTMAX
                torch.backends.mha.set_fastpath_enabled(_saved_fastpath.pop())



def patches_installed() -> bool:
    """True while any capture's interceptors are installed (for tests and debugging)."""
    return F.scaled_dot_product_attention is not _ORIGINAL_SDPA or "softmax" in torch.Tensor.__dict__


def _num_heads(module: nn.Module) -> int | None:
    for attribute in ("num_heads", "num_attention_heads", "heads", "n_heads"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    return None


def select_layers(
    names: Sequence[str], layers: int | str | Sequence[int | str] | None
) -> list[int]:
    """Resolve a layer selection (indices, negative indices, module names) to sorted indices."""
    if layers is None:
        return list(range(len(names)))
    if isinstance(layers, (int, str)):
        layers = [layers]
    chosen: set[int] = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, str)):
            raise InputError(f"layer {layer!r} must be an int index or a module name")
        if isinstance(layer, str):
            if layer not in names:
                raise InputError(f"no attention layer named {layer!r}; attention layers: {list(names)}")
            chosen.add(names.index(layer))
        elif -len(names) <= layer < len(names):
            chosen.add(layer % len(names))
        else:
            raise InputError(
                f"attention layer index {layer} is out of range: the model has {len(names)} attention "
                f"layers (valid: {-len(names)}..{len(names) - 1})"
            )
    return sorted(chosen)


class AttentionCapture:
    """Context manager recording ``(batch, heads, queries, keys)`` attention probabilities.

    Args:
        modules: ``(name, module)`` of every attention layer of the model, in order (an adapter's
            ``attention_layers`` gives them; see :func:`attnlens.capture.capture_attention`).
        layers: which of them to record: ``None`` (all), indices (negative allowed) or names.
        keep_grad: register tensor hooks so that ``record.grad`` holds the gradient after backward.
        store: keep the records (set ``False`` with ``on_record`` to stream in constant memory).
        on_record: called with each :class:`AttentionRecord` as soon as it is made.
        detach: store detached probabilities (no graph kept; for forward-only probing).

    After the block, :attr:`records` holds one record per layer call in call order;
    :attr:`attentions` / :attr:`gradients` give the latest call of each selected layer.
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        layers: int | str | Sequence[int | str] | None = None,
        *,
        keep_grad: bool = True,
        store: bool = True,
        on_record: Callable[[AttentionRecord], None] | None = None,
        detach: bool = False,
    ) -> None:
        if not modules:
            raise AttentionNotFoundError(
                "the model has no attention layers attnlens can see (no known attention modules, "
                "no nn.MultiheadAttention); pass the attention modules explicitly or add an adapter"
            )
        self._names = [name for name, _ in modules]
        self._modules = [module for _, module in modules]
        self.layers = select_layers(self._names, layers)
        self.keep_grad = keep_grad
        self.store = store
        self.on_record = on_record
        self.detach = detach
        self.records: list[AttentionRecord] = []
        self._stack: ExitStack | None = None

    @property
    def layer_names(self) -> list[str]:
        return [self._names[index] for index in self.layers]

    def __enter__(self) -> "AttentionCapture":
        stack = ExitStack()
        try:
            stack.enter_context(_interception_patches())
            for index in self.layers:
                module = self._modules[index]
                stack.callback(module.register_forward_pre_hook(self._make_pre_hook(index)).remove)
                stack.callback(module.register_forward_hook(self._post_hook, always_call=True).remove)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc_info) -> None:
        stack, self._stack = self._stack, None
        scopes = _scopes()
        scopes[:] = [scope for scope in scopes if scope.capture is not self]
        if stack is not None:
            stack.close()

    def _make_pre_hook(self, index: int) -> Callable:
        name = self._names[index]
        num_heads = _num_heads(self._modules[index])

        def pre_hook(module: nn.Module, args: tuple) -> None:
            _scopes().append(_Scope(self, index, name, num_heads))

        return pre_hook

    def _post_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        scopes = _scopes()
        scope = scopes.pop() if scopes and scopes[-1].capture is self else None
        # ``output is None`` when the forward raised (hooks with always_call run then too): the
        # original exception must propagate, not a complaint about missing attention.
        if scope is not None and not scope.recorded and output is not None:
            raise AttentionNotFoundError(
                f"attention layer {scope.name!r} ran but its attention probabilities could not be seen: "
                "it computes attention without scaled_dot_product_attention or a softmax over the keys "
                "(e.g. a custom fused kernel). Switch the model to eager/sdpa attention."
            )

    def _record(self, scope: _Scope, probabilities: torch.Tensor) -> None:
        scope.recorded = True
        if probabilities.dim() == 3:
            heads = scope.num_heads or 1
            probabilities = probabilities.reshape(-1, heads, *probabilities.shape[-2:])
        elif probabilities.dim() != 4:
            probabilities = probabilities.reshape(-1, *probabilities.shape[-3:])
        if self.detach:
            probabilities = probabilities.detach()
        record = AttentionRecord(scope.layer, scope.name, probabilities)
        if self.keep_grad and probabilities.requires_grad:
            def store_grad(grad: torch.Tensor, record: AttentionRecord = record) -> None:
                record.grad = grad

            probabilities.register_hook(store_grad)
        if self.store:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def _latest(self) -> dict[int, AttentionRecord]:
        latest: dict[int, AttentionRecord] = {}
        for record in self.records:
            latest[record.layer] = record
        return latest

    def _require_records(self) -> dict[int, AttentionRecord]:
        latest = self._latest()
        missing = [self._names[index] for index in self.layers if index not in latest]
        if missing:
            raise AttentionNotFoundError(
                f"no attention was recorded for layer(s) {missing}: run a forward pass of the model "
                "inside the capture block"
            )
        return latest

    @property
    def attentions(self) -> list[torch.Tensor]:
        """Latest ``(B, H, Q, K)`` probabilities of each selected layer, in layer order."""
        latest = self._require_records()
        return [latest[index].probs for index in self.layers]

    @property
    def gradients(self) -> list[torch.Tensor]:
        """Gradients w.r.t. :attr:`attentions` after a backward pass, in layer order."""
        latest = self._require_records()
        missing = [latest[index].name for index in self.layers if latest[index].grad is None]
        if missing:
            raise AttentionNotFoundError(
                f"no attention gradient for layer(s) {missing}: call backward() on an output that depends "
                "on them, with gradients enabled during the forward pass"
            )
        return [latest[index].grad for index in self.layers]

    def clear(self) -> None:
        self.records.clear()
