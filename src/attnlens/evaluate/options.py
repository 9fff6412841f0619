"""The settings of an evaluation, declared once: tests, metric names and the option schema.

:data:`EVALUATION_OPTIONS` is the one declaration of the evaluation's options; the API validates
keyword options with it and the command line generates its flags from it. The defaults are the
protocol of Chefer et al. (CVPR'21) as :mod:`attnlens.evaluate` documents it.
"""

from __future__ import annotations

from collections.abc import Iterable

from attnlens.errors import InputError
from attnlens.options import Option, OptionSchema

TESTS = ("perturbation", "segmentation", "sanity")
"""The tests, in the order they are reported."""

DEFAULT_METHODS = ("generic", "rollout", "transformer_attribution", "attnlrp")
"""The methods evaluated when none are named."""

RANDOM, ORACLE = "random", "oracle"
BASELINES = (RANDOM, ORACLE)
"""The baselines added to every table (``oracle`` only where masks exist): the floor and the ceiling."""

CHEFER_STEPS = tuple(k / 10 for k in range(1, 10))
"""Chefer et al.'s perturbation fractions 0.1 ... 0.9 (``k / 10`` is the same double as the literal)."""

METRICS = {
    "perturbation": ("pos_auc", "neg_auc"),
    "segmentation": ("pointing", "iou", "pixel_accuracy", "miou", "map"),
    "sanity": ("sanity_spearman_mean", "sanity_spearman_median"),
}
"""The metric names of each test (each also reported with a ``<name>_se`` standard error)."""

DATA_SANITY_METRICS = ("sanity_data_spearman_mean", "sanity_data_spearman_median")
"""The metrics of the data-randomisation sanity check (with a model trained on permuted labels)."""

FILLS = ("zero", "black", "mean", "blur")

EVALUATION_OPTIONS = OptionSchema(
    Option(
        "target", str, "predicted", "the class each map explains: the model's top-1 prediction or the image's label",
        choices=("predicted", "label"),
    ),
    Option(
        "steps", float, CHEFER_STEPS, "perturbation fractions p, increasing; int(H*W*p) pixels are removed at each",
        minimum=0.0, maximum=1.0, multiple=True,
    ),
    Option(
        "fill", str, "zero", "value of removed pixels: 0 in the model's normalised input space, a black pixel, the "
        "dataset's mean pixel, or a Gaussian blur of the image", choices=FILLS,
    ),
    Option("blur_sigma", float, 5.0, "standard deviation in pixels of the Gaussian blur of fill=blur", minimum=0.1),
    Option(
        "unit", str, "pixels", "remove single pixels ranked by the upsampled map, or whole patch tokens ranked by the "
        "patch map", choices=("pixels", "tokens"),
    ),
    Option(
        "score", str, "accuracy", "score of a perturbed input: top-1 accuracy against the label, or the softmax "
        "probability of the explained class (deletion / insertion curves)", choices=("accuracy", "probability"),
    ),
    Option(
        "ap_classes", str, "object", "segmentation AP of the map's scores against the mask, or of both classes pooled "
        "(scores 1-s for the background, as Chefer et al.'s script)", choices=("object", "both"),
    ),
    Option("baselines", bool, True, "add the random-map baseline and, where masks exist, the oracle"),
    Option("seed", int, 0, "seed of the random baseline's maps and of the sanity test's re-initialisation", minimum=0),
    Option(
        "missing", str, "skip", "a missing or unreadable image: skip it with a warning (counted), or fail",
        choices=("skip", "fail"),
    ),
    Option(
        "perturbation_batch", int, 0, "perturbed inputs per forward pass (0: all perturbed copies of a batch at once)",
        minimum=0,
    ),
)
"""The evaluation's options (see :mod:`attnlens.evaluate` for the protocol they configure)."""


def check_names(given: str | Iterable[str], valid: Iterable[str], what: str) -> list[str]:
    """``given`` (a comma-separated string or names) as a list, each checked against ``valid``,
    without repeats; a one-line :class:`InputError` names the first unknown one."""
    names = [name.strip() for name in given.split(",")] if isinstance(given, str) else [str(name).strip() for name in given]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        raise InputError(f"no {what}s given; valid {what}s: {', '.join(valid)}")
    known = list(valid)
    for name in names:
        if name not in known:
            raise InputError(f"unknown {what} {name!r}; valid {what}s: {', '.join(known)}")
    return names


def check_steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    """The perturbation fractions, which must increase strictly within ``(0, 1]``."""
    if not steps or steps[0] <= 0.0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise InputError(f"option steps={list(steps)} must increase strictly within (0, 1], e.g. 0.1,0.2,...,0.9")
    return steps
