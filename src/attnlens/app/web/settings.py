"""The settings of a web server, chosen by its operator at start and checked once.

:class:`UploadLimits` bounds what one request may upload (bytes per file, pixels per image, files
per request); :class:`ServeSettings` holds the address, the allow-lists of models and pipelines,
the queue (bounded concurrency and length) and the per-request time limit. Every bad value is a
one-line :class:`~attnlens.errors.InputError` naming the setting and a valid value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnlens.errors import InputError

LOCALHOST = "127.0.0.1"
DEFAULT_PORT = 7860
MEGABYTE = 1_000_000


def _check_positive(name: str, value: object, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise InputError(f"{name} must be a positive {'number' if kind is float else 'integer'}, got {value!r}")


def megabytes(size: int) -> str:
    """``size`` bytes as ``"2 MB"`` / ``"1.5 MB"`` for messages."""
    return f"{size / MEGABYTE:g} MB"


@dataclass(frozen=True)
class UploadLimits:
    """What one request may upload.

    Attributes:
        max_bytes: largest accepted file, in bytes (also enforced by the upload route itself).
        max_pixels: largest accepted image, width x height.
        max_files: most files in one request.
    """

    max_bytes: int = 10 * MEGABYTE
    max_pixels: int = 4096 * 4096
    max_files: int = 16

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_files"):
            _check_positive(f"upload limit {name}", getattr(self, name))

    def describe(self) -> str:
        """One line for the page: the three limits."""
        return (
            f"uploads: at most {self.max_files} file(s) per request, {megabytes(self.max_bytes)} per file, "
            f"{self.max_pixels:,} pixels per image"
        )


@dataclass(frozen=True)
class DiffusionLimits:
    """What one generation request may ask for: denoising steps and image side in pixels."""

    max_steps: int = 100
    max_side: int = 1024

    def __post_init__(self) -> None:
        _check_positive("diffusion limit max_steps", self.max_steps)
        _check_positive("diffusion limit max_side", self.max_side)


@dataclass(frozen=True)
class ServeSettings:
    """How ``attnlens serve`` runs.

    Attributes:
        models: the allow-list of vision models visitors may pick (sources for
            :func:`attnlens.load`; ``"default"`` is the embedded model). Loaded at start.
        diffusion_models: the allow-list of text-to-image pipelines (diffusers folders or hub ids);
            empty: the random-weight demo pipeline (:mod:`attnlens.app.web.demo_pipeline`).
        host, port: the address to bind (default: loopback only).
        share: ask gradio for a public share link (off unless the operator asks).
        concurrency: requests computed at once (the rest wait in the queue).
        queue_size: most requests waiting in the queue; more are refused with a message.
        time_limit: seconds one request may compute before it is stopped.
        device: torch device of the models (``None``: CPU).
        uploads, diffusion: the upload and generation limits.
    """

    models: tuple[str, ...] = ("default",)
    diffusion_models: tuple[str, ...] = ()
    host: str = LOCALHOST
    port: int = DEFAULT_PORT
    share: bool = False
    concurrency: int = 2
    queue_size: int = 32
    time_limit: float = 120.0
    device: str | None = None
    uploads: UploadLimits = field(default_factory=UploadLimits)
    diffusion: DiffusionLimits = field(default_factory=DiffusionLimits)

    def __post_init__(self) -> None:
        if not self.models:
            raise InputError("the model allow-list is empty; pass --model SOURCE at least once (or 'default')")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InputError(f"port must be an integer in 1..65535, got {self.port!r}")
        _check_positive("concurrency", self.concurrency)
        _check_positive("queue size", self.queue_size)
        _check_positive("time limit", self.time_limit, float)
