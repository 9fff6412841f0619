"""Interoperability with other interpretability libraries.

* :func:`gradcam_reshape_transform` and :func:`gradcam_target_layers` — pytorch-grad-cam
  (``pip install grad-cam``) on any vision transformer attnlens has an adapter for, with the token
  layout (class, distillation and register tokens, non-square patch grids) taken from the adapter
  instead of grad-cam's example's ``tensor[:, 1:]`` and fixed 14x14 grid.
"""

from attnlens.interop.gradcam import GradCamReshape, gradcam_reshape_transform, gradcam_target_layers

__all__ = ["GradCamReshape", "gradcam_reshape_transform", "gradcam_target_layers"]
