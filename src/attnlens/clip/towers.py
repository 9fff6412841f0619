"""The towers of an image-text model and the generic relevance of a similarity on one of them.

A :class:`Tower` is one encoder of the model (its adapter's :class:`~attnlens.adapters.base.Encoder`)
explained from a start layer on. On a tower, the relevance of a cotangent objective (see
:mod:`attnlens.clip.objective`) follows Chefer et al., ICCV 2021 ("Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers"): with ``A_l`` the
attention probabilities of block ``l`` and ``G_l = ds/dA_l``, ``R = I``, then
``R <- R + mean_h((G_l * A_l)^+) @ R`` for the blocks from the start layer on
(:func:`attnlens.explainers.generic.generic_relevance`), and the explanation is the row of ``R``
the tower's readout reads (:meth:`attnlens.adapters.readouts.Readout.read`):

* ``CLS_TOKEN`` (CLIP vision): the class-token row;
* ``END_OF_TEXT`` (CLIP text) / ``LAST_TOKEN`` (SigLIP text): the row at each text's readout
  position, passed as ``positions``;
* :class:`~attnlens.adapters.readouts.AttentionPool` (SigLIP vision): the tower has no class token;
  a learned probe query attends over the final tokens (``nn.MultiheadAttention``), then an MLP.
  The pooling attention is captured as one more layer whose single query is the readout: with
  ``A_p (H, 1, T)`` its probabilities and ``G_p`` their gradient, the relevance row is
  ``mean_h((G_p * A_p)^+) @ R`` (no identity term: the probe is not a token of the sequence, so
  there is no residual path from the tokens around the pooling attention).

Gradients come from :func:`attnlens.attribution.rounds.row_gradients`, one round of rows at a time
(every batch item at most once per round: one backward pass, through the blocks from the start
layer on only, no weight gradients), so memory holds the attention gradients of one round.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from attnlens.adapters.base import Encoder
from attnlens.adapters.readouts import AttentionPool, Readout
from attnlens.attribution.layers import resolve_layer
from attnlens.attribution.objectives import Cotangent
from attnlens.attribution.rounds import row_gradients
from attnlens.capture import AttentionCapture, ThreadHook
from attnlens.clip.text import TokenizedTexts
from attnlens.errors import UnsupportedModelError
from attnlens.explainers.generic import generic_relevance
from attnlens.model import AttnLensModel, eval_mode
from attnlens.tokens import TokenLayout

START_LAYER_HINT = "-1 = last layer only, 0 = all layers"


@dataclass(frozen=True)
class Tower:
    """One tower of an image-text model, explained from block ``start`` on.

    Attributes:
        model: the wrapped model.
        encoder: the tower's adapter description (blocks, embeddings, readout).
        start: the first block whose attention enters the relevance (non-negative).
        count: the number of blocks of the tower.
    """

    model: AttnLensModel
    encoder: Encoder
    start: int
    count: int

    @classmethod
    def choose(cls, model: AttnLensModel, name: str, start_layer: int, option: str) -> "Tower":
        """Tower ``name`` (``"vision"``/``"text"``) from the user's ``option=start_layer``
        (negative counts from the end; range-checked with a one-line error)."""
        encoder = model.family.encoder(name)
        count = len(encoder.attention_layers(model.module))
        start = resolve_layer(start_layer, count, option, what=f"{name} attention layers; {START_LAYER_HINT}")
        return cls(model, encoder, start, count)

    @property
    def readout(self) -> Readout:
        return self.encoder.readout

    @property
    def pooled(self) -> bool:
        """The tower pools through an attention-pooling head (captured as one more layer, last)."""
        return isinstance(self.readout, AttentionPool)

    def capture(self) -> AttentionCapture:
        """A capture of the blocks from :attr:`start` on, plus the pooling attention if :attr:`pooled`."""
        modules = list(self.encoder.attention_layers(self.model.module))
        layers = list(range(self.start, self.count))
        if self.pooled:
            path = self.readout.attention
            layers.append(len(modules))
            modules.append((path, self.model.module.get_submodule(path)))
        return AttentionCapture(modules, layers, keep_grad=False)

    def relevance(
        self,
        features: torch.Tensor,
        attentions: Sequence[torch.Tensor],
        objective: Cotangent,
        layout: TokenLayout | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The readout row of the generic-rule relevance ``R`` of every row of ``objective``.

        Args:
            features: ``(B, D)`` the tower's projected features (the objective's output).
            attentions: the captured ``(B, H, T, T)`` maps from :attr:`start` on (then the pooling
                map ``(B, H, 1, T)`` if :attr:`pooled`), from the forward pass of ``features``.
            objective: row ``n``: ``<cotangents[n], features[input_index[n]]>``.
            layout: the token layout of an image tower (``None`` for a text tower).
            positions: ``(N,)`` per-row readout positions (text towers).

        Returns:
            ``(N, T)`` relevance of every token for every row (detached).
        """
        if layout is not None:
            for attention in attentions:
                layout.check_length(attention.shape[-1], what=f"captured {self.encoder.name} attention")
        reference = attentions[0]
        result = torch.zeros((objective.num_rows, reference.shape[-1]), dtype=reference.dtype, device=reference.device)
        for rows in objective.rounds():
            part = Cotangent(objective.input_index[rows], objective.cotangents[rows.to(objective.cotangents.device)])
            gradients = row_gradients(partial(part.round_value, features), attentions, part.input_index, retain_graph=True)
            query = None if positions is None else positions[rows]
            result[rows.to(result.device)] = self._read(attentions, gradients, part.input_index, layout, query)
        return result

    def _read(
        self,
        attentions: Sequence[torch.Tensor],
        gradients: Sequence[torch.Tensor],
        items: torch.Tensor,
        layout: TokenLayout | None,
        positions: torch.Tensor | None,
    ) -> torch.Tensor:
        """The readout rows of one round: ``attentions`` of the batch, ``gradients`` per row."""
        maps = [attention.detach()[items.to(attention.device)] for attention in attentions]
        if not self.pooled:
            return self.readout.read(generic_relevance(maps, gradients), layout, positions)
        matrix = generic_relevance(maps[:-1], gradients[:-1])
        weights = (gradients[-1] * maps[-1]).clamp(min=0).mean(dim=1)[:, 0, :]  # (N, T): the probe's row
        return self.readout.read(matrix, layout, weights)


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise UnsupportedModelError("cannot read the projected features from the image-text model's output")
    return pooled


def encode_images(model: AttnLensModel, pixels: torch.Tensor) -> torch.Tensor:
    """``(I, D)`` projected image features of ``pixels`` ``(I, 3, H, W)``: the family's
    ``encode_image`` (open_clip), else Hugging Face's ``get_image_features``."""
    model.check_input_size(pixels.shape[-2:])
    encode = model.family.encode_image
    if encode is not None:
        return encode(model.module, pixels, **model.forward_kwargs(pixels))
    return _features(model.module.get_image_features(pixel_values=pixels, **model.forward_kwargs(pixels)))


def encode_texts(model: AttnLensModel, tokenized: TokenizedTexts) -> torch.Tensor:
    """``(T, D)`` projected text features (the mask is passed where the text tower takes one): the
    family's ``encode_text`` (open_clip), else Hugging Face's ``get_text_features``."""
    device = model.device
    input_ids = tokenized.input_ids.to(device)
    mask = tokenized.attention_mask.to(device) if model.family.encoder("text").attention_mask else None
    encode = model.family.encode_text
    if encode is not None:
        return encode(model.module, input_ids, mask)
    return _features(model.module.get_text_features(input_ids=input_ids, attention_mask=mask))


def _requires_grad_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Make an embedding output part of the graph even if the model's weights are frozen."""
    if isinstance(output, torch.Tensor) and output.is_floating_point() and not output.requires_grad:
        return output.detach().requires_grad_(True)
    return None


@contextmanager
def tower_run(model: AttnLensModel, towers: Sequence[Tower]) -> Iterator[list[AttentionCapture]]:
    """Forward passes of ``towers`` with their attention captured, one capture per tower.

    Inside the block the model is in eval mode (:func:`attnlens.model.eval_mode`), gradients are
    enabled and each tower's embedding output requires grad (so frozen weights still give
    attention gradients); on exit, even through an exception, every hook and patch is removed
    and the train/eval mode restored.
    """
    with ExitStack() as stack:
        stack.enter_context(eval_mode(model.module))
        stack.enter_context(torch.enable_grad())
        captures = []
        for tower in towers:
            embeddings = model.module.get_submodule(tower.encoder.embeddings)
            stack.callback(embeddings.register_forward_hook(ThreadHook(_requires_grad_hook)).remove)
            captures.append(stack.enter_context(tower.capture()))
        yield captures
