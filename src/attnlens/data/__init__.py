"""Data utilities of attnlens: the deterministic synthetic shapes data set."""

from attnlens.data.synthetic import (
    CLASS_COLOURS,
    CLASS_NAMES,
    CLASS_SHAPES,
    MAX_DISTRACTOR_CHROMA,
    SHAPE_NAMES,
    SyntheticShapesConfig,
    class_file_stem,
    dataset_labels,
    generate_dataset,
    render_sample,
    save_dataset,
)

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "CLASS_SHAPES",
    "MAX_DISTRACTOR_CHROMA",
    "SHAPE_NAMES",
    "SyntheticShapesConfig",
    "class_file_stem",
    "dataset_labels",
    "generate_dataset",
    "render_sample",
    "save_dataset",
]
