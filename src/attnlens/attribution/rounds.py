"""Per-row gradients in rounds of backward passes: the one place attnlens differentiates an
explanation's objectives.

An explanation has ``N`` *rows*; row ``n`` explains batch item ``input_index[n]`` (several rows may
explain one item: several classes of one image, several texts for one image). One backward pass
of a sum of objectives gives every item its own gradient as long as no item appears twice in the
sum, so rows are grouped into *rounds* in which every item appears at most once
(:func:`rounds`); a round costs one backward pass through the shared forward graph, and no weight
gradients are computed. A plain classification batch (one row per image) is one round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def rounds(input_index: torch.Tensor) -> list[torch.Tensor]:
    """Row groups in which every batch item appears at most once, in row order.

    Row ``n`` goes to round ``k`` if it is the ``k``-th row (0-based) that explains its item.
    Returns one ``long`` tensor of row indices per round (on ``input_index``'s device).
    """
    count = int(input_index.numel())
    if count == 0:
        return []
    order = torch.argsort(input_index, stable=True)
    sorted_items = input_index[order]
    first = torch.searchsorted(sorted_items, sorted_items, right=False)
    rank = torch.empty_like(input_index)
    rank[order] = torch.arange(count, device=input_index.device) - first
    return [torch.nonzero(rank == number).flatten() for number in range(int(rank.max()) + 1)]


def is_one_row_per_item(input_index: torch.Tensor, batch: int) -> bool:
    """True if the rows are exactly the batch items in order (``input_index == arange(batch)``)."""
    return input_index.numel() == batch and bool((input_index.cpu() == torch.arange(batch)).all())


def row_gradients(
    round_objective: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    input_index: torch.Tensor,
    *,
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """Per explained row, the gradient of its objective w.r.t. each tensor of ``inputs``.

    Args:
        round_objective: ``rows -> scalar``: the sum of the objectives of ``rows`` (a ``long``
            tensor of row indices in which every batch item appears at most once).
        inputs: tensors ``(B, ...)`` of the forward graph (attention probabilities, features,
            embeddings), batch first.
        input_index: ``(N,)`` the batch item each row explains.
        retain_graph: keep the graph after the last round (for further passes).

    Returns:
        One ``(N, ...)`` tensor per input (zeros where an objective does not depend on it), row
        ``n`` holding ``d objective_n / d inputs[i][input_index[n]]``, detached. With one row per
        item in order (one round), the gradients are returned as computed, without copying.
    """
    groups = rounds(input_index)
    batch = int(inputs[0].shape[0]) if inputs else 0
    results: list[torch.Tensor | None] = [None] * len(inputs)
    for number, rows in enumerate(groups):
        keep = retain_graph or number + 1 < len(groups)
        grads = torch.autograd.grad(round_objective(rows), list(inputs), retain_graph=keep, allow_unused=True)
        if len(groups) == 1 and is_one_row_per_item(input_index, batch):
            return [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(inputs, grads)]
        items = input_index[rows]
        for slot, (tensor, grad) in enumerate(zip(inputs, grads)):
            if results[slot] is None:
                results[slot] = tensor.new_zeros((int(input_index.numel()), *tensor.shape[1:]))
            if grad is not None:
                results[slot][rows.to(grad.device)] = grad[items.to(grad.device)].detach()
    return [r if r is not None else x.new_zeros((0, *x.shape[1:])) for r, x in zip(results, inputs)]
