"""The floor and the ceiling of every table: a random map and an oracle map.

* ``random`` — per image, a map over the patch grid with i.i.d. uniform values in ``[0, 1)``,
  drawn from a generator seeded by ``(seed, image index, stage)``: the same map for an image in
  every run, shard and resume, whatever the batch it falls in. Its sanity "randomised" maps are
  fresh draws (``stage >= 1``), so its correlation is chance level (about 0).
* ``oracle`` — the mask's coverage of each patch (the fraction of the patch's pixels that are
  object, at the model's input size), which needs masks. It ignores the model, so its sanity
  correlation is 1 (a map that fails the check).

Both are upsampled like any method's map before they are scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def random_maps(indices: Sequence[int], grid: tuple[int, int], seed: int, stage: int = 0) -> torch.Tensor:
    """``(len(indices), h, w)`` float32 uniform maps, one generator per ``(seed, index, stage)``."""
    maps = []
    for index in indices:
        generator = np.random.default_rng(np.random.SeedSequence((int(seed), int(index), int(stage))))
        maps.append(torch.from_numpy(generator.random(grid, dtype=np.float32)))
    return torch.stack(maps) if maps else torch.zeros((0, *grid))


def oracle_maps(masks: torch.Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The coverage of every patch by boolean ``masks (B, H, W)`` -> ``(B, h, w)`` float32."""
    covered = masks[:, : grid[0] * patch[0], : grid[1] * patch[1]].float().unsqueeze(1)
    return F.avg_pool2d(covered, kernel_size=patch, stride=patch).squeeze(1)
