"""Cross-attention of a UNet call, aggregated over layers and heads per query grid.

A :class:`CrossAttentionSum` receives the :class:`~attnlens.capture.AttentionRecord` of every
captured cross-attention call (``on_record`` of :func:`attnlens.capture_attention`) and keeps, per
query grid ``(h, w)``, the sum over (layer, head) pairs of the chosen batch rows' probabilities
``(R, h*w, K)`` and the number of pairs. :meth:`CrossAttentionSum.mean` gives the mean over layers
and heads as maps ``(R, K, h, w)``: the aggregate of Attend-and-Excite (Chefer et al., SIGGRAPH
2023) and of DAAM (Tang et al., ACL 2023) before upsampling. Layers with more heads weigh more, as
in the reference implementations, which average over the concatenated ``(layer, head)`` maps.

With ``stop_after=n`` it raises :class:`EnoughAttention` once ``n`` layer calls were added: a
driver that needs nothing after those layers (a guidance loss) ends the UNet call there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from attnlens.capture import AttentionRecord
from attnlens.errors import InputError

Grid = tuple[int, int]


class EnoughAttention(Exception):
    """Every cross-attention call a driver needs has been recorded: the rest of the UNet call is skipped."""


class CrossAttentionSum:
    """Running sum of cross-attention probabilities per query grid (see the module docstring).

    Args:
        grids: the query grids to keep (``None``: every grid).
        rows: the batch rows to keep (``slice(B, 2B)``: the conditional half of a guided batch).
        heads: head indices to keep (``None``: all heads).
        detach: keep no autograd graph (heat maps); ``False`` keeps the probabilities differentiable.
        stop_after: raise :class:`EnoughAttention` after this many layer calls.
    """

    def __init__(
        self,
        grids: Collection[Grid] | None = None,
        rows: slice = slice(None),
        heads: Sequence[int] | None = None,
        *,
        detach: bool = True,
        stop_after: int | None = None,
    ) -> None:
        self.grids = None if grids is None else frozenset(grids)
        self.rows = rows
        self.heads = None if heads is None else list(heads)
        self.detach = detach
        self.stop_after = stop_after
        self.sums: dict[Grid, torch.Tensor] = {}
        self.counts: dict[Grid, int] = {}
        self.calls = 0

    def _heads_of(self, probs: torch.Tensor, name: str) -> torch.Tensor:
        if self.heads is None:
            return probs
        bad = [head for head in self.heads if not -probs.shape[1] <= head < probs.shape[1]]
        if bad:
            raise InputError(f"head(s) {bad} out of range: layer {name} has {probs.shape[1]} heads")
        return probs[:, self.heads]

    def __call__(self, record: AttentionRecord) -> None:
        grid = record.query_grid
        if grid is None or (self.grids is not None and grid not in self.grids):
            return
        probs = self._heads_of(record.probs[self.rows], record.name)
        if self.detach:
            probs = probs.detach()
        total = probs.float().sum(dim=1)
        self.sums[grid] = total if grid not in self.sums else self.sums[grid] + total
        self.counts[grid] = self.counts.get(grid, 0) + int(probs.shape[1])
        self.calls += 1
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise EnoughAttention

    def mean(self, grid: Grid) -> torch.Tensor:
        """``(R, K, h, w)``: the mean over the (layer, head) pairs at ``grid``, keys first."""
        if grid not in self.sums:
            raise InputError(f"no cross-attention was recorded at the query grid {grid}; recorded: {sorted(self.sums)}")
        mean = self.sums[grid] / self.counts[grid]
        rows, _, keys = mean.shape
        return mean.reshape(rows, grid[0], grid[1], keys).permute(0, 3, 1, 2)
