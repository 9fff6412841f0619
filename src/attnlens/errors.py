"""Exceptions raised by attnlens.

Every error names the problem and, where there is one, the fix. They all derive from
:class:`AttnLensError`, so callers (and the CLI) can catch the library's own errors and tell them
apart from bugs.
"""

from __future__ import annotations


class AttnLensError(Exception):
    """Base class of every error attnlens raises on purpose."""


class InputError(AttnLensError, ValueError):
    """An input (image, tensor, target, option) is invalid."""


class ImageReadError(InputError):
    """An image file is missing, unreadable, corrupt or not an image."""


class ModelLoadError(AttnLensError):
    """A model could not be loaded (missing or partial folder, unsafe checkpoint, unknown source)."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint can only be loaded by unpickling, which the caller did not allow."""


class AttentionNotFoundError(AttnLensError):
    """The attention of a model (or of some of its layers) cannot be seen."""


class UnsupportedModelError(AttnLensError):
    """A method cannot be applied to this model (e.g. rollout over windowed attention)."""
