"""The capture context manager: selects layers, installs a backend for each, records and edits.

While an :class:`AttentionCapture` is active, every call of a selected attention layer in the
thread that entered it runs inside a *scope* (:mod:`attnlens.capture.scopes`). The layer's backend
computes the probabilities explicitly and hands them to the capture, which records them and, with
``edit``, replaces them before they are applied to the values:

* ``"processor"``: diffusers ``Attention`` modules with a default processor get a
  :class:`~attnlens.capture.processors.CaptureProcessor` (default for them);
* ``"interception"``: everything else; SDPA and the first softmax over the keys are intercepted
  (:mod:`attnlens.capture.interception`).

The probabilities are ordinary tensors of the autograd graph: after a backward pass their gradients
are in :attr:`AttentionRecord.grad`. All hooks, patches and processors are removed on exit, also
when an exception escapes the block. Captures nest, and captures in different threads (even on the
same model) each see only their own thread's forward passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial

import torch
from torch import nn

from attnlens.capture.interception import interception_patches, patches_installed
from attnlens.capture.processors import install_processor, supports_processor
from attnlens.capture.records import AttentionRecord, EditFn, checked_edit
from attnlens.capture.resolve import as_subject
from attnlens.capture.scopes import discard_scopes, watch
from attnlens.capture.selection import LayerSelection, Resolutions, filter_layers, parse_resolutions, select_layers
from attnlens.capture.subjects import AttentionLayer, ModuleSubject, QueryGrids, Subject
from attnlens.errors import AttentionNotFoundError, InputError

AUTO, PROCESSOR, INTERCEPTION = "auto", "processor", "interception"
BACKENDS = (AUTO, PROCESSOR, INTERCEPTION)

__all__ = ["AttentionCapture", "AttentionRecord", "patches_installed", "select_layers"]


def _store_grad(record: AttentionRecord, grad: torch.Tensor) -> None:
    record.grad = grad


class AttentionCapture:
    """Context manager recording (and optionally editing) ``(batch, heads, queries, keys)`` attention.

    Args:
        modules: a :class:`~attnlens.capture.Subject`, a model (see
            :func:`attnlens.capture.as_subject`) or the ``(name, module)`` of every attention layer
            of a model, in order (the names then serve as canonical names and module paths).
        layers: which layers to touch (see :data:`~attnlens.capture.selection.LayerSelection`):
            ``None`` (all), indices (negative allowed), canonical names, module paths, glob patterns.
        keep_grad: register tensor hooks so that ``record.grad`` holds the gradient after backward.
        store: keep the records (set ``False`` with ``on_record`` to stream in constant memory).
        on_record: called with each :class:`AttentionRecord` as soon as it is made.
        detach: store detached probabilities (no graph kept; for forward-only probing).
        edit: ``record -> (B, H, Q, K) tensor or None``, called with the layer's original
            probabilities; a tensor replaces them in the layer's computation (and in the record,
            which keeps the original in ``record.original``); ``None`` keeps them.
        kind: only ``"self"`` or ``"cross"`` attention layers (``None``: both).
        resolutions: only layers at these downsampling factors / query grids ``(h, w)`` (see
            :data:`~attnlens.capture.selection.Resolutions`); grids are checked per call, calls at
            other grids run untouched.
        backend: ``"auto"`` (processor for diffusers attention with a default processor,
            interception otherwise), ``"processor"`` or ``"interception"``.

    After the block, :attr:`records` holds one record per layer call in call order;
    :attr:`attentions` / :attr:`gradients` give the latest call of each selected layer.
    :attr:`step` is stamped on every record; a driver may set it, and for subjects with a
    step-counting input (diffusion UNets) it advances by one after each call of the model.
    """

    def __init__(
        self,
        modules: Subject | Sequence[tuple[str, nn.Module]],
        layers: LayerSelection = None,
        *,
        keep_grad: bool = True,
        store: bool = True,
        on_record: Callable[[AttentionRecord], None] | None = None,
        detach: bool = False,
        edit: EditFn | None = None,
        kind: str | None = None,
        resolutions: Resolutions = None,
        backend: str = AUTO,
    ) -> None:
        if isinstance(modules, nn.Module):
            modules = as_subject(modules)
        elif not isinstance(modules, Subject):
            modules = ModuleSubject(None, [(name, name, module) for name, module in modules])
        self.subject: Subject = modules
        self._layers: list[AttentionLayer] = list(modules.attention_layers())
        if not self._layers:
            raise AttentionNotFoundError(
                "the model has no attention layers attnlens can see (no known attention modules, "
                "no nn.MultiheadAttention); pass the attention modules explicitly or add an adapter"
            )
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
        names = [layer.name for layer in self._layers]
        chosen = select_layers(names, layers, aliases=[layer.module_name for layer in self._layers])
        self._factors, self._grids = parse_resolutions(resolutions)
        self.layers: list[int] = filter_layers(self._layers, chosen, kind, self._factors, self._grids)
        self.keep_grad = keep_grad
        self.store = store
        self.on_record = on_record
        self.detach = detach
        self.edit = edit
        self.backend = backend
        self.step = 0
        self.records: list[AttentionRecord] = []
        self.thread: int | None = None
        self._query_grids: QueryGrids | None = None
        self._stack: ExitStack | None = None

    # ------------------------------------------------------------------ selected layers
    @property
    def selected(self) -> list[AttentionLayer]:
        """The selected layers' descriptors, in layer order."""
        return [self._layers[index] for index in self.layers]

    @property
    def canonical_names(self) -> list[str]:
        """Canonical names of the selected layers (as in :attr:`AttentionRecord.name`)."""
        return [layer.name for layer in self.selected]

    @property
    def layer_names(self) -> list[str]:
        """Module paths of the selected layers (as in :attr:`AttentionRecord.module_name`)."""
        return [layer.module_name for layer in self.selected]

    def layer_label(self, index: int) -> str:
        """Canonical name of layer ``index`` (for messages)."""
        return self._layers[index].name

    # ------------------------------------------------------------------ context manager
    def _backend_of(self, layer: AttentionLayer) -> str:
        if self.backend == INTERCEPTION:
            return INTERCEPTION
        if supports_processor(layer.module):
            return PROCESSOR
        if self.backend == PROCESSOR:
            raise InputError(
                f"backend='processor' needs diffusers Attention modules with a default processor; "
                f"layer {layer.name!r} is a {type(layer.module).__name__}"
            )
        return INTERCEPTION

    def __enter__(self) -> "AttentionCapture":
        stack = ExitStack()
        try:
            backends = {index: self._backend_of(self._layers[index]) for index in self.layers}
            if INTERCEPTION in backends.values():
                stack.enter_context(interception_patches())
            for index, backend in backends.items():
                module = self._layers[index].module
                if backend == PROCESSOR:
                    stack.callback(install_processor(module))
                stack.callback(watch(module, self, index))
            self._watch_input(stack)
        except BaseException:
            stack.close()
            raise
        self.thread = threading.get_ident()
        self._query_grids = None
        self._stack = stack
        return self

    def __exit__(self, *exc_info) -> None:
        stack, self._stack = self._stack, None
        discard_scopes(self)
        self.thread = None
        if stack is not None:
            stack.close()

    def _watch_input(self, stack: ExitStack) -> None:
        input_watch = self.subject.input_watch()
        if input_watch is None:
            return

        def see_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if threading.get_ident() == self.thread:
                self._query_grids = input_watch.read(args, kwargs)

        def advance_step(module: nn.Module, args: tuple, output: object) -> None:
            if threading.get_ident() == self.thread:
                self.step += 1

        stack.callback(input_watch.module.register_forward_pre_hook(see_input, with_kwargs=True).remove)
        if input_watch.steps:
            stack.callback(input_watch.module.register_forward_hook(advance_step).remove)

    # ------------------------------------------------------------------ called from the scopes
    def _query_grid(self, index: int, num_queries: int) -> tuple[int, int] | None:
        if self._query_grids is None:
            return None
        return self._query_grids(self._layers[index], num_queries)

    def wants(self, index: int, num_queries: int) -> bool:
        """Whether a call of layer ``index`` with ``num_queries`` queries is to be recorded/edited
        (only query-grid resolutions can say no: the rest was decided when selecting)."""
        if not self._grids or self._layers[index].factor in self._factors:
            return True
        return self._query_grid(index, num_queries) in self._grids

    def process(self, index: int, probs: torch.Tensor) -> torch.Tensor:
        """Record (and edit) ``(B, H, Q, K)`` probabilities of layer ``index``; return the ones the
        layer must use."""
        num_queries = probs.shape[-2]
        if not self.wants(index, num_queries):
            return probs
        layer = self._layers[index]
        record = AttentionRecord(
            index,
            layer.name,
            probs,
            module_name=layer.module_name,
            kind=layer.kind,
            query_grid=self._query_grid(index, num_queries),
            num_keys=probs.shape[-1],
            step=self.step,
        )
        used = probs
        if self.edit is not None:
            edited = self.edit(record)
            if edited is not None:
                used = checked_edit(edited, probs, layer.name)
                record.probs, record.original = used, probs
        if self.detach:
            record.probs = record.probs.detach()
            record.original = None if record.original is None else record.original.detach()
        elif self.keep_grad and used.requires_grad:
            used.register_hook(partial(_store_grad, record))
        if self.store:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return used

    # ------------------------------------------------------------------ results
    def _require_records(self) -> dict[int, AttentionRecord]:
        latest = {record.layer: record for record in self.records}
        missing = [self._layers[index].name for index in self.layers if index not in latest]
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
        """Gradients ``(B, H, Q, K)`` w.r.t. :attr:`attentions` after a backward pass, in layer order."""
        latest = self._require_records()
        missing = [latest[index].name for index in self.layers if latest[index].grad is None]
        if missing:
            raise AttentionNotFoundError(
                f"no attention gradient for layer(s) {missing}: call backward() on an output that depends "
                "on them, with gradients enabled during the forward pass"
            )
        return [latest[index].grad for index in self.layers]

    def clear(self) -> None:
        """Forget the records (the step counter is kept)."""
        self.records.clear()
