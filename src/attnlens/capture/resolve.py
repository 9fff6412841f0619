"""From what a user passes (a model, a module, a pipeline) to a capture :class:`Subject`."""

from __future__ import annotations

from torch import nn

from attnlens.adapters import find_family
from attnlens.capture.subjects import AdapterSubject, ModuleSubject, Subject
from attnlens.capture.unet import UNetSubject, is_unet
from attnlens.errors import InputError, UnsupportedModelError

# Wrappers whose ``.module`` is the wrapped model: torch's (Distributed)DataParallel and the ones
# accelerate / DeepSpeed put around it.
_MODULE_WRAPPERS = ("DistributedDataParallel", "DataParallel", "DeepSpeedEngine")


def unwrap_module(module: object) -> object:
    """The ``nn.Module`` inside ``(Distributed)DataParallel``, ``torch.compile`` (any object whose
    ``_orig_mod`` is a module) and accelerate/DeepSpeed wrappers, however deeply nested; ``module``
    itself if it is not wrapped."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and any(kind.__name__ in _MODULE_WRAPPERS for kind in type(module).__mro__):
            inner = getattr(module, "module", None)
        if not isinstance(inner, nn.Module) or inner is module:
            return module
        module = inner


def _is_attnlens_model(model: object) -> bool:
    return (
        not isinstance(model, nn.Module)
        and isinstance(getattr(model, "module", None), nn.Module)
        and hasattr(model, "family")
        and callable(getattr(model, "token_layout", None))
    )


def as_subject(model: object, encoder: str | None = None) -> Subject:
    """The capture subject of ``model``.

    Args:
        model: a :class:`Subject` (returned as is), an :class:`attnlens.AttnLensModel`, a diffusers
            pipeline (its ``.unet``), a diffusers UNet or any ``nn.Module`` (wrappers are removed
            with :func:`unwrap_module`).
        encoder: the tower of a multi-encoder model (``"vision"``, ``"text"``); only for models
            with an adapter.

    Raises:
        TypeError: ``model`` is none of these.
        InputError: ``encoder`` is given for a model without encoders.
    """
    if not isinstance(model, nn.Module) and isinstance(model, Subject):
        return model
    if _is_attnlens_model(model):
        return AdapterSubject(unwrap_module(model.module), model.family, encoder, model.token_layout)
    if not isinstance(model, nn.Module) and getattr(model, "unet", None) is not None:
        model = model.unet
    module = unwrap_module(model)
    if not isinstance(module, nn.Module):
        raise TypeError(
            "expected an attnlens model, a torch.nn.Module, a diffusers pipeline or a capture Subject, "
            f"got {type(model).__name__}"
        )
    if is_unet(module):
        if encoder is not None:
            raise InputError(f"encoder={encoder!r} does not apply to a UNet (it has no encoders)")
        return UNetSubject(module)
    try:
        family = find_family(module)
    except UnsupportedModelError:
        if encoder is not None:
            raise
        return ModuleSubject(module)
    return AdapterSubject(module, family, encoder)
