"""One call's LRP set-up: the model's parts, the functional forward and where relevance starts.

The methods of this package (one module each) call :func:`prepare` once per explanation, then run
their relevance pass (:mod:`.relprop` or an AttnLRP gradient, :mod:`.attnlrp`). All state of a call
lives in what :func:`prepare` returns; the only thing kept between calls is ``|W|`` of the linear
layers, on the model wrapper (:meth:`attnlens.model.AttnLensModel.derived`).
"""

from __future__ import annotations

from typing import Any

from attnlens.explainers.base import ExplainContext
from attnlens.explainers.lrp.functional import Record, forward
from attnlens.explainers.lrp.seeds import Seeds, resolve_seeds
from attnlens.explainers.lrp.spec import Spec, build_spec


def prepare(context: ExplainContext, *, pixels: bool = False, **forward_options: Any) -> tuple[Spec, Record, Seeds]:
    """Spec, functional forward and seeds for a method call (targets resolved on ``context``).

    Args:
        context: the call's context (model, pixels ``(B, 3, H, W)``, target).
        pixels: the method propagates relevance down to the pixels (full LRP): the embeddings and
            patch convolution are checked before anything runs.
        forward_options: passed to :func:`~attnlens.explainers.lrp.functional.forward`
            (``keep_from``, ``grad_from``, ``ops``, ``embeddings_leaf``).
    """
    spec = build_spec(context.model, context.pixels, context.layout)
    if pixels:
        spec.check_pixel_parts()
    record = forward(context.model, spec, context.pixels.detach(), **forward_options)
    return spec, record, resolve_seeds(context, spec, record)
