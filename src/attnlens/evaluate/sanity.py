"""The model-randomisation sanity check of Adebayo et al. (NeurIPS'18), cascading from the top.

A faithful explanation depends on the weights: re-initialising them must change it. The stages
re-initialise cumulatively from the output down, each stage keeping the previous ones random:

``head`` (classifier(s) and a pooling norm) -> ``final_norm`` -> ``block_{L-1}`` -> ... ->
``block_0`` -> ``embeddings`` (patch embedding, class/position tokens, a pre-norm),

read from the model's adapter (stages without parameters are left out). At every stage each map is
recomputed for the class the trained model's map explained (the trained prediction or the label,
so that the class stays fixed), and compared with the trained model's map by Spearman's rank
correlation of the upsampled maps (:func:`attnlens.evaluate.metrics.spearman`). An image's score is
its mean correlation over the stages; a method whose correlation stays high fails the check.

Re-initialisation (documented choice; Adebayo et al. use each layer's own initialiser): biases
become 0, the 1-D weights of normalisation layers 1, every other parameter is drawn from a normal
distribution with standard deviation 0.02 truncated at two standard deviations (the ViT
initialiser of timm and Hugging Face). The draws come from a generator seeded by ``(seed, stage)``
on the CPU, so every run, shard and device re-initialises identically. The user's model is never
modified: a copy is randomised.

The data-randomisation variant compares the trained model's maps with those of a model trained on
permuted labels (``permuted_model``), for the same classes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attnlens.model import AttnLensModel


@dataclass(frozen=True)
class Stage:
    """One step of the cascade: its name and the qualified names of the parameters it re-initialises."""

    name: str
    parameters: tuple[str, ...]


def _stage_paths(model: AttnLensModel) -> list[tuple[str, list[str]]]:
    family = model.family
    encoder = family.encoder()
    paths: list[tuple[str, list[str]]] = []
    if family.head is not None:
        paths.append(("head", [*family.head.classifiers, *([family.head.pool_norm] if family.head.pool_norm else [])]))
    if encoder.final_norm:
        paths.append(("final_norm", [encoder.final_norm]))
    for number in reversed(range(len(encoder.block_modules(model.module)))):
        paths.append((f"block_{number}", [f"{encoder.blocks}.{number}"]))
    embedding_paths = [path for path in (encoder.embeddings, encoder.patch_embedding, encoder.pre_norm) if path]
    paths.append(("embeddings", embedding_paths))
    return paths


def cascade_stages(model: AttnLensModel) -> list[Stage]:
    """The stages of the cascade of ``model`` (see the module docstring); each parameter belongs to
    the first stage that names a module holding it."""
    names = [name for name, _ in model.module.named_parameters()]
    claimed: set[str] = set()
    stages = []
    for stage, paths in _stage_paths(model):
        owned = tuple(
            name for name in names
            if name not in claimed and any(name == path or name.startswith(path + ".") for path in paths)
        )
        claimed.update(owned)
        if owned:
            stages.append(Stage(stage, owned))
    return stages


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or "norm" in type(module).__name__.lower()


def reinitialised(name: str, parameter: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> torch.Tensor:
    """A fresh CPU value for one parameter (see the module docstring for the rule)."""
    if name.rsplit(".", 1)[-1] == "bias":
        return torch.zeros(parameter.shape)
    if parameter.dim() == 1 and _is_norm(owner):
        return torch.ones(parameter.shape)
    value = torch.empty(parameter.shape)
    return nn.init.trunc_normal_(value, std=0.02, a=-0.04, b=0.04, generator=generator)


def _generator(seed: int, stage: int) -> torch.Generator:
    entropy = np.random.SeedSequence((int(seed), int(stage))).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy))


class CascadingRandomization:
    """A randomised copy of a model, walked through the cascade once per batch.

    The random values of every stage are drawn once (seeded); :meth:`cascade` restores the trained
    weights into the copy, then applies the stages in order and yields the copy after each.
    """

    def __init__(self, model: AttnLensModel, seed: int) -> None:
        self.model = model
        self.stages = cascade_stages(model)
        module = copy.deepcopy(model.module)
        self.copy = AttnLensModel(
            module, model.processor, tokenizer=model.tokenizer, id2label=model.id2label, source=f"{model.source} (randomised)"
        )
        parameters = dict(module.named_parameters())
        self._random: dict[str, torch.Tensor] = {}
        for number, stage in enumerate(self.stages):
            generator = _generator(seed, number)
            for name in stage.parameters:
                owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
                value = reinitialised(name, parameters[name], owner, generator)
                self._random[name] = value.to(device=parameters[name].device, dtype=parameters[name].dtype)

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def cascade(self) -> Iterator[tuple[str, AttnLensModel]]:
        """Yield ``(stage name, randomised model)`` for every stage, cumulatively."""
        trained = dict(self.model.module.named_parameters())
        working = dict(self.copy.module.named_parameters())
        _assign(working, trained, working)
        for stage in self.stages:
            _assign(working, self._random, stage.parameters)
            yield stage.name, self.copy  # (grad mode is not held across the yield)


def _assign(parameters: dict[str, torch.Tensor], values: dict[str, torch.Tensor], names) -> None:
    """Copy ``values[name]`` into ``parameters[name]`` for every name, without recording gradients."""
    with torch.no_grad():
        for name in names:
            parameters[name].copy_(values[name])
