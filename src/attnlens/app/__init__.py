"""The application layer: inputs in, results and written artefacts out.

The command line, an evaluation runner and a web app all call these functions, so that they give
identical maps (those of :func:`attnlens.explain` / :func:`attnlens.clip.explain_clip` / the
probes) and write the same files:

* :func:`explain_files` — per image an overlay PNG and the raw map (``.npy``, or one ``.npz`` /
  ``.safetensors``), plus ``explanations.json`` (top-5 predictions, the class explained, method,
  validated options) -> :class:`ExplainRun`;
* :func:`compare_file` — one figure of every chosen method on one image -> :class:`CompareRun`;
* :func:`clip_files` — image-text pairs: overlays, token heat maps, ``clip_scores.json`` ->
  :class:`ClipRun`;
* :func:`probe_mad`, :func:`probe_dino`, :func:`probe_cka`, :func:`probe_entropy`,
  :func:`probe_norms` (or :func:`run_probe` by name, :data:`PROBES`) -> :class:`ProbeRun`.

Models come from :func:`attnlens.load` (load once, run many times). Inputs are files, folders, PIL
images or arrays; every input and setting is validated before anything is written, and results
are written atomically as they are produced (``out=None``: nothing is written). Method and probe
options are validated by their :class:`~attnlens.options.OptionSchema`;
:func:`describe_methods` / :func:`describe_probes` describe them for forms.
"""

from attnlens.app.clip import ClipRun, clip_files
from attnlens.app.explain import CompareRun, ExplainedBatch, ExplainRun, compare_file, explain_files
from attnlens.app.inputs import ImageInput, read_images
from attnlens.app.outputs import MAP_FORMATS, Artefacts
from attnlens.app.probe import (
    PROBES,
    Probe,
    ProbeRun,
    describe_probes,
    probe_cka,
    probe_dino,
    probe_entropy,
    probe_mad,
    probe_norms,
    run_probe,
)
from attnlens.app.schemas import describe_methods, method_options, method_schemas

__all__ = [
    "MAP_FORMATS",
    "PROBES",
    "Artefacts",
    "ClipRun",
    "CompareRun",
    "ExplainRun",
    "ExplainedBatch",
    "ImageInput",
    "Probe",
    "ProbeRun",
    "clip_files",
    "compare_file",
    "describe_methods",
    "describe_probes",
    "explain_files",
    "method_options",
    "method_schemas",
    "probe_cka",
    "probe_dino",
    "probe_entropy",
    "probe_mad",
    "probe_norms",
    "read_images",
    "run_probe",
]
