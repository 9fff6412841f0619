"""Token layout: which token is what, for a given model and input size.

Vision transformers put a few *prefix* tokens before the patch tokens: a class token (CLS), DeiT's
distillation token, DINOv2's register tokens. Every method and probe in attnlens addresses tokens
through a :class:`TokenLayout` instead of slicing with magic numbers such as ``[:, 1:]``, and reads
the patch grid ``(h, w)`` from the actual input, so non-square inputs and interpolated position
embeddings work everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlens.errors import InputError

CLS = "cls"
DISTILLATION = "distillation"
REGISTER = "register"
PREFIX_ROLES = (CLS, DISTILLATION, REGISTER)


@dataclass(frozen=True)
class TokenLayout:
    """Roles of the tokens of one sequence: prefix tokens first, then a row-major patch grid.

    Attributes:
        prefix_roles: role of each prefix token, in sequence order, e.g. ``("cls",)`` for ViT,
            ``("cls", "distillation")`` for DeiT, ``("cls", "register", ...)`` for DINOv2 with
            registers.
        grid: ``(h, w)`` number of patch rows and columns for the actual input.
        patch_size: ``(ph, pw)`` patch height and width in pixels of the model input.
    """

    prefix_roles: tuple[str, ...]
    grid: tuple[int, int]
    patch_size: tuple[int, int]

    def __post_init__(self) -> None:
        unknown = [role for role in self.prefix_roles if role not in PREFIX_ROLES]
        if unknown:
            raise InputError(f"unknown prefix token role(s) {unknown}; valid roles: {PREFIX_ROLES}")
        if min(self.grid) < 1:
            raise InputError(f"patch grid {self.grid} is empty: the input is smaller than one patch")

    @property
    def num_prefix_tokens(self) -> int:
        return len(self.prefix_roles)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of the model input covered by the patch grid."""
        return self.grid[0] * self.patch_size[0], self.grid[1] * self.patch_size[1]

    def indices(self, role: str) -> list[int]:
        """Sequence positions of every prefix token with ``role``."""
        return [i for i, r in enumerate(self.prefix_roles) if r == role]

    @property
    def cls_index(self) -> int:
        """Position of the class token; raises if the model has none (e.g. mean-pooled models)."""
        found = self.indices(CLS)
        if not found:
            raise InputError("this model has no class (CLS) token; use a patch query or pooled target")
        return found[0]

    @property
    def has_cls(self) -> bool:
        return bool(self.indices(CLS))

    @property
    def distillation_index(self) -> int | None:
        found = self.indices(DISTILLATION)
        return found[0] if found else None

    @property
    def register_indices(self) -> list[int]:
        return self.indices(REGISTER)

    @property
    def patch_slice(self) -> slice:
        """Slice of the patch tokens in the sequence (prefix tokens excluded)."""
        return slice(self.num_prefix_tokens, self.num_tokens)

    def patches(self, tokens: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Select the patch tokens of ``tokens`` along ``dim`` (whose size must be ``num_tokens``)."""
        self.check_length(tokens.shape[dim], what=f"dimension {dim}")
        return tokens.narrow(dim, self.num_prefix_tokens, self.num_patches)

    def prefix(self, tokens: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Select the prefix tokens of ``tokens`` along ``dim``."""
        self.check_length(tokens.shape[dim], what=f"dimension {dim}")
        return tokens.narrow(dim, 0, self.num_prefix_tokens)

    def to_grid(self, patch_values: torch.Tensor) -> torch.Tensor:
        """Reshape ``(..., num_patches)`` patch values to ``(..., h, w)`` (row-major)."""
        if patch_values.shape[-1] != self.num_patches:
            raise InputError(
                f"expected {self.num_patches} patch values ({self.grid[0]}x{self.grid[1]} grid), "
                f"got {patch_values.shape[-1]}"
            )
        return patch_values.reshape(*patch_values.shape[:-1], *self.grid)

    def check_length(self, length: int, what: str = "sequence") -> None:
        if length != self.num_tokens:
            raise InputError(
                f"{what} has {length} tokens but the layout expects {self.num_tokens} "
                f"({self.num_prefix_tokens} prefix {list(self.prefix_roles)} + "
                f"{self.grid[0]}x{self.grid[1]} patches)"
            )

    def patch_positions(self, device: torch.device | None = None) -> torch.Tensor:
        """``(num_patches, 2)`` float (row, col) grid coordinates of every patch, row-major."""
        rows = torch.arange(self.grid[0], device=device, dtype=torch.float64)
        cols = torch.arange(self.grid[1], device=device, dtype=torch.float64)
        return torch.cartesian_prod(rows, cols)

    def describe(self) -> str:
        roles = ", ".join(self.prefix_roles) or "none"
        return (
            f"{self.num_tokens} tokens: prefix [{roles}] + {self.grid[0]}x{self.grid[1]} patches "
            f"of {self.patch_size[0]}x{self.patch_size[1]} px"
        )


def grid_for_input(pixel_shape: tuple[int, int], patch_size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid ``(h, w)`` a patch-embedding convolution with stride = patch size produces."""
    height, width = pixel_shape
    return height // patch_size[0], width // patch_size[1]
