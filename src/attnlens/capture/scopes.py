"""Scopes: one call of one watched attention module, in the thread that runs it.

Every watched module gets one forward pre-hook and one forward hook, shared by all captures that
watch it (reference counted). The pre-hook opens a :class:`Scope` on the calling thread's stack,
listing the captures *of that thread* that selected the module; the hook closes it. Whatever
computes the attention inside the scope (the SDPA/softmax interceptors or the capture processor)
hands the probabilities to :meth:`Scope.apply`, which lets every capture record them and, in
order, replace them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from attnlens.errors import AttentionNotFoundError


class Receiver(Protocol):
    """What a scope needs from a capture (implemented by :class:`AttentionCapture`)."""

    thread: int | None
    """The thread whose forward passes it sees (``None`` while inactive)."""

    def wants(self, index: int, num_queries: int) -> bool:
        """Whether it records/edits a call of its layer ``index`` with ``num_queries`` queries."""
        ...

    def process(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        """Record ``(B, H, Q, K)`` probabilities of layer ``index``; return the ones to use."""
        ...

    def layer_label(self, index: int) -> str:
        """Name of layer ``index`` for messages."""
        ...


Entry = tuple[Receiver, int]


@dataclass(eq=False)
class Scope:
    """One call of ``module``; ``entries`` are ``(capture, layer index)`` of the calling thread.

    ``done`` is set as soon as something takes charge of the attention of the call, so that nested
    softmax/SDPA calls are neither recorded twice nor edited twice.
    """

    module: nn.Module
    entries: tuple[Entry, ...]
    num_heads: int | None
    done: bool = False

    def wants(self, num_queries: int) -> bool:
        """Whether any capture records or edits a call with ``num_queries`` queries."""
        return any(receiver.wants(index, num_queries) for receiver, index in self.entries)

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        """Hand ``(B, H, Q, K)`` probabilities to every capture; return the ones the layer must use."""
        self.done = True
        for receiver, index in self.entries:
            probs = receiver.process(index, probs)
        return probs

    def apply_any_shape(self, probs: torch.Tensor) -> torch.Tensor:
        """:meth:`apply` for probabilities ``(B*H, Q, K)``, ``(B, H, Q, K)`` or ``(..., H, Q, K)``.

        The result has ``probs``' shape and is a view of the tensor the captures saw, so the
        recorded tensor lies on the path to the layer's output (gradients reach it).
        """
        if probs.dim() == 3:
            headed = probs.reshape(-1, self.num_heads or 1, *probs.shape[-2:])
        else:
            headed = probs.reshape(-1, *probs.shape[-3:])
        return self.apply(headed).reshape(probs.shape)


_local = threading.local()


def scope_stack() -> list[Scope]:
    """The calling thread's stack of open scopes (innermost last)."""
    if not hasattr(_local, "scopes"):
        _local.scopes = []
    return _local.scopes


def open_scope(module: nn.Module | None = None) -> Scope | None:
    """The innermost scope if nothing has taken charge of it yet (and it belongs to ``module``,
    when given); else ``None``."""
    scopes = scope_stack()
    if not scopes or scopes[-1].done:
        return None
    if module is not None and scopes[-1].module is not module:
        return None
    return scopes[-1]


def discard_scopes(receiver: Receiver) -> None:
    """Drop ``receiver``'s entries from the calling thread's open scopes (on capture exit)."""
    for scope in scope_stack():
        scope.entries = tuple(entry for entry in scope.entries if entry[0] is not receiver)


def num_heads(module: nn.Module) -> int | None:
    """Number of attention heads a module declares (``num_heads``, ``heads``, ...), if any."""
    for attribute in ("num_heads", "num_attention_heads", "heads", "n_heads"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
    return None


class _Watch:
    """The shared hooks of one module and the captures watching it."""

    def __init__(self, module: nn.Module) -> None:
        self.entries: tuple[Entry, ...] = ()
        self.num_heads = num_heads(module)
        self.handles = [
            module.register_forward_pre_hook(self.pre_hook),
            module.register_forward_hook(self.post_hook, always_call=True),
        ]

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        thread = threading.get_ident()
        entries = tuple(entry for entry in self.entries if entry[0].thread == thread)
        if entries:
            scope_stack().append(Scope(module, entries, self.num_heads))

    def post_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        scopes = scope_stack()
        if not scopes or scopes[-1].module is not module:
            return
        scope = scopes.pop()
        # ``output is None`` when the forward raised (hooks with always_call run then too): the
        # original exception must propagate, not a complaint about missing attention.
        if not scope.done and scope.entries and output is not None:
            receiver, index = scope.entries[0]
            raise AttentionNotFoundError(
                f"attention layer {receiver.layer_label(index)!r} ran but its attention probabilities could not "
                "be seen: it computes attention without scaled_dot_product_attention or a softmax over the keys "
                "(e.g. a custom fused kernel). Switch the model to eager/sdpa attention."
            )


_watch_lock = threading.Lock()
_watches: dict[nn.Module, _Watch] = {}


def watch(module: nn.Module, receiver: Receiver, index: int) -> Callable[[], None]:
    """Open scopes for ``receiver``'s layer ``index`` whenever ``module`` runs in its thread.

    Returns the function that stops it (the module's hooks go when no capture watches it any more).
    """
    entry = (receiver, index)
    with _watch_lock:
        shared = _watches.get(module)
        if shared is None:
            shared = _watches[module] = _Watch(module)
        shared.entries = shared.entries + (entry,)

    def unwatch() -> None:
        with _watch_lock:
            shared.entries = tuple(other for other in shared.entries if other is not entry)
            if not shared.entries and _watches.get(module) is shared:
                del _watches[module]
                for handle in shared.handles:
                    handle.remove()

    return unwatch


def is_captured(module: nn.Module) -> bool:
    """Whether a capture active in the calling thread watches ``module`` (records or edits its calls).

    Capture hooks found on a module watched only by other threads' captures do nothing in this one.
    """
    shared = _watches.get(module)
    thread = threading.get_ident()
    return shared is not None and any(receiver.thread == thread for receiver, _ in shared.entries)


class ThreadHook:
    """A forward (pre-)hook that acts only in the thread that registered it: other threads' forward
    passes of a shared model run as if it were not there."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.thread = threading.get_ident()

    def __call__(self, *args: Any) -> Any:
        if threading.get_ident() != self.thread:
            return None
        return self.function(*args)
