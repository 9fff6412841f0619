"""Probing attention layers: how far heads look, what the class token sees, how layers relate.

The tutorial's probing half as streaming, batched functions:

* mean attention distance per (layer, head) — :func:`mean_attention_distance` ``(layers, batch,
  heads)`` and :func:`dataset_mean_attention_distance` (Dosovitskiy et al. 2021; Raghu et al. 2021);
* DINO attention maps — :func:`cls_attention_maps` ``(B, heads, h, w)``, :func:`head_mean_map`,
  :func:`mass_threshold`, :func:`upsample_maps` (Caron et al. 2021);
* CKA — :func:`cka` on feature matrices, :class:`MinibatchCKA`, :func:`layer_cka_matrix` and
  :func:`model_cka_matrix` over a dataset (Kornblith et al. 2019; Nguyen et al. 2021);
* attention entropy and prefix-token (sink) mass — :func:`attention_entropy`,
  :func:`prefix_attention_mass`; residual-stream token norms and high-norm outliers —
  :func:`token_norms`, :func:`high_norm_tokens` (Darcet et al. 2024);
* figures in :mod:`attnlens.probe.figures`; the ``attnlens probe`` command in
  :mod:`attnlens.probe.cli`.

Images: a preprocessed ``(B, 3, H, W)`` tensor, files, PIL images, arrays, a folder, or any
iterable of them. Per-image functions raise on an unreadable file (their outputs are aligned with
the inputs); ``dataset_*`` functions skip unreadable files with a warning, count them in the
result's ``skipped``, and raise only if nothing is readable. Attention is captured detached and
reduced layer by layer during the forward pass, so memory does not grow with depth or dataset size.
"""

from attnlens.probe._stream import StreamReport, iter_image_batches
from attnlens.probe.cka import (
    CKAResult,
    MinibatchCKA,
    cka,
    gram,
    hsic,
    layer_cka_matrix,
    layer_features,
    model_cka_matrix,
)
from attnlens.probe.dino import (
    cls_attention_maps,
    cls_map_reducer,
    head_mean_map,
    mass_threshold,
    select_heads,
    upsample_maps,
)
from attnlens.probe.distance import (
    UNITS,
    attention_distance_reducer,
    dataset_mean_attention_distance,
    mean_attention_distance,
    patch_distance_matrix,
)
from attnlens.probe.entropy import (
    attention_entropy,
    dataset_attention_entropy,
    dataset_prefix_attention_mass,
    entropy_reducer,
    prefix_attention_mass,
    prefix_attention_maps,
    prefix_mass_reducer,
)
from attnlens.probe.norms import NormStats, TokenNorms, dataset_token_norm_stats, high_norm_tokens, token_norms
from attnlens.probe.stats import LayerHeadStats, RunningMoments, dataset_attention_stats, per_image_attention_stats

__all__ = [
    "CKAResult",
    "LayerHeadStats",
    "MinibatchCKA",
    "NormStats",
    "RunningMoments",
    "StreamReport",
    "TokenNorms",
    "UNITS",
    "attention_distance_reducer",
    "attention_entropy",
    "cka",
    "cls_attention_maps",
    "cls_map_reducer",
    "dataset_attention_entropy",
    "dataset_attention_stats",
    "dataset_mean_attention_distance",
    "dataset_prefix_attention_mass",
    "dataset_token_norm_stats",
    "entropy_reducer",
    "gram",
    "head_mean_map",
    "high_norm_tokens",
    "hsic",
    "iter_image_batches",
    "layer_cka_matrix",
    "layer_features",
    "mass_threshold",
    "mean_attention_distance",
    "model_cka_matrix",
    "patch_distance_matrix",
    "per_image_attention_stats",
    "prefix_attention_mass",
    "prefix_attention_maps",
    "prefix_mass_reducer",
    "select_heads",
    "token_norms",
    "upsample_maps",
]
