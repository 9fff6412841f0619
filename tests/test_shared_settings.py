"""Settings of a shared model changed for a call (eval mode, frozen parameters) survive
overlapping calls: the first caller applies them, only the last one restores them."""

from __future__ import annotations

from torch import nn

from attnlens.diffusion.guidance import frozen_parameters
from attnlens.model import eval_mode


def test_overlapping_eval_mode_restores_only_after_the_last_user() -> None:
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    first, second = eval_mode(module), eval_mode(module)
    first.__enter__()
    second.__enter__()  # another thread arrives while the first still runs
    first.__exit__(None, None, None)
    assert not module.training, "the first caller to leave must not switch dropout back on"
    second.__exit__(None, None, None)
    assert module.training


def test_overlapping_frozen_parameters_restore_only_after_the_last_user() -> None:
    module = nn.Linear(2, 2)
    module.bias.requires_grad_(False)  # already frozen by the user: stays frozen
    first, second = frozen_parameters(module), frozen_parameters(module)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not module.weight.requires_grad
    second.__exit__(None, None, None)
    assert module.weight.requires_grad and not module.bias.requires_grad
