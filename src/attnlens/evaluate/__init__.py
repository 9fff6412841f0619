"""How faithful is an explanation? Perturbation, segmentation and sanity tests on your model and data.

``attnlens.evaluate.run(model, dataset, methods=[...], tests=["perturbation", "segmentation",
"sanity"], out=DIR, **options)`` returns an :class:`EvaluationResult` whose
``summary[method][metric]`` holds ``pointing``, ``iou``, ``pixel_accuracy``, ``miou``, ``map``,
``pos_auc``, ``neg_auc``, ``sanity_spearman_mean`` and ``sanity_spearman_median``, each with a
``<name>_se`` standard error over images; the same summary is written to ``DIR/summary.json``, the
per-image rows to ``DIR/per_image.csv``, the mean curves to ``DIR/curves.json``, a Markdown table to
``DIR/summary.md`` and a figure to ``DIR/evaluation.png``. The command line is
``attnlens evaluate DATASET ...`` and ``attnlens benchmark synthetic --out DIR``.

The protocol (the defaults; Chefer et al., "Transformer Interpretability Beyond Attention
Visualization", CVPR 2021, and Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018):

* **Data** (:mod:`~attnlens.evaluate.data`): images resized straight to the model's input size by
  its processor (no crop); masks (nonzero = object) resized to it with nearest neighbours.
* **Explained class**: the model's top-1 prediction on the clean image (``target="predicted"``;
  from one gradient-free forward pass shared by every method) or the label (``"label"``).
* **Maps**: the method's raw ``(h, w)`` relevance from :func:`attnlens.explain` (batched; non-finite
  values as 0), upsampled bilinearly with ``align_corners=False`` to ``(H, W)``
  (:func:`attnlens.maps.upsample_maps`). Every metric uses the upsampled map, except
  ``unit="tokens"`` perturbation, which ranks the raw patch map.
* **Perturbation** (:mod:`~attnlens.evaluate.perturbation`): stable argsort, ``int(H*W*p)`` pixels
  set to 0 in the normalised input space in all channels for ``p = 0.1 ... 0.9``, positive = most
  relevant first, negative = least relevant first; top-1 accuracy against the label;
  ``AUC = trapezoid(acc, x=[0, 0.1, ..., 0.9]) * 100`` with the clean accuracy at 0, averaged over
  images.
* **Segmentation** (:mod:`~attnlens.evaluate.metrics`): predicted mask = the map above its own mean
  (after per-image min-max normalisation); ``pointing`` = the first argmax lies in the mask; ``iou``
  = per-image foreground IoU, averaged; ``pixel_accuracy`` and ``miou`` = correct pixels and the
  intersections / unions of background and object summed over the data set (``miou`` the mean of
  the two classes' IoU); ``map`` = mean per-image average precision of the upsampled scores against
  the mask, tied scores one threshold (``ap_classes="both"``: Chefer et al.'s script, which pools
  the background's ``1 - s`` with the object's ``s``).
* **Sanity** (:mod:`~attnlens.evaluate.sanity`): cascading re-initialisation from the head down to
  the embeddings; Spearman correlation of the upsampled maps of the trained and each randomised
  model, per image; an image's score is its mean over the stages; ``sanity_spearman_mean`` /
  ``_median`` over images. With ``permuted_model``, the data-randomisation variant
  (``sanity_data_spearman_mean`` / ``_median``).
* **Baselines** (:mod:`~attnlens.evaluate.baselines`): ``random`` (uniform patch maps) and, with
  masks, ``oracle`` (the mask's coverage of each patch), scored like the methods.
* **Standard errors** over images: of a mean, of a ratio of sums (linearisation) and of a median
  (asymptotic); see :mod:`~attnlens.evaluate.metrics`.

Runs are resumable (rows appended per batch atomically; a run killed at any moment resumes without
recomputing, losing or duplicating anything, and ends with the numbers of an uninterrupted run),
shardable over processes and GPUs with ``accelerate launch -m attnlens evaluate ...`` (see
:mod:`~attnlens.evaluate.runner`), and batched (maps per batch; all perturbed copies of a batch in
large forward passes).
"""

from attnlens.evaluate.data import Dataset, Item, read_dataset
from attnlens.evaluate.options import (
    BASELINES,
    CHEFER_STEPS,
    DEFAULT_METHODS,
    EVALUATION_OPTIONS,
    METRICS,
    TESTS,
)
from attnlens.evaluate.runner import EvaluationResult, run

__all__ = [
    "BASELINES",
    "CHEFER_STEPS",
    "DEFAULT_METHODS",
    "EVALUATION_OPTIONS",
    "METRICS",
    "TESTS",
    "Dataset",
    "EvaluationResult",
    "Item",
    "read_dataset",
    "run",
]
