"""What a visitor sends: uploaded files (checked against the limits) or a bundled sample by name.

A request names images in two ways only: files it uploaded (which the upload route stored in the
server's upload folder) and bundled samples, picked by name from :func:`sample_choices`. A path
outside the upload folder is refused, so no request can make the server read a file of its
choosing. Each upload is checked against :class:`~attnlens.app.web.settings.UploadLimits`
(number of files, bytes, pixels read from the header, before anything is decoded); the images are
then read by the application layer (:func:`attnlens.app.inputs.read_images`), with the same
validation and messages as the command line.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from PIL import Image

from attnlens.app.web.settings import UploadLimits, megabytes
from attnlens.errors import InputError

NO_SAMPLE = "(none: use my upload)"


def sample_choices() -> dict[str, Path]:
    """Bundled sample images by name (``red_circle`` -> its file)."""
    from attnlens.loading import sample_images

    return {path.stem: path for path in sample_images()}


def upload_paths(files: object) -> list[str]:
    """The file paths of an upload component's value: ``None``, one path, or a list of them."""
    if files is None:
        return []
    items = files if isinstance(files, (list, tuple)) else [files]
    return [os.fspath(getattr(item, "path", item)) for item in items]


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def uploaded_name(path: str | os.PathLike) -> str:
    """The name a visitor gave an uploaded file (the server's folders stay private)."""
    return Path(path).name


class UploadChecker:
    """Checks the files of one request against the limits and the upload folder.

    Args:
        limits: the server's :class:`UploadLimits`.
        upload_root: the folder the upload route writes into; every uploaded path must lie in it.
    """

    def __init__(self, limits: UploadLimits, upload_root: str | os.PathLike) -> None:
        self.limits = limits
        self.upload_root = Path(upload_root).resolve()

    def files(self, files: object, *, required: bool = True) -> list[Path]:
        """The uploaded files of ``files`` (a component value), each inside the upload folder and
        within the byte limit, at most ``max_files`` of them."""
        paths = upload_paths(files)
        if required and not paths:
            raise InputError("no image given: upload an image or pick a bundled sample")
        if len(paths) > self.limits.max_files:
            raise InputError(
                f"{len(paths)} files were uploaded; this server accepts at most {self.limits.max_files} per request"
            )
        return [self._checked(path) for path in paths]

    def _checked(self, given: str) -> Path:
        path = Path(given).resolve()
        if not _inside(path, self.upload_root) or not path.is_file():
            raise InputError(
                f"{uploaded_name(given)!r} was not uploaded with this request: the server reads only files uploaded "
                "through the page or the API, and bundled samples by name"
            )
        size = path.stat().st_size
        if size > self.limits.max_bytes:
            raise InputError(
                f"{uploaded_name(path)}: the file is {megabytes(size)}; this server accepts files up to "
                f"{megabytes(self.limits.max_bytes)}: downscale or compress it"
            )
        return path

    def images(self, files: object, *, required: bool = True) -> list[Path]:
        """:meth:`files`, each also within the pixel limit (read from the image header, before
        decoding; a file that is not an image is left to the application layer's reader, which
        names the problem as the command line does)."""
        checked = self.files(files, required=required)
        for path in checked:
            self._check_pixels(path)
        return checked

    def _check_pixels(self, path: Path) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as handle:
                    width, height = handle.size
        except Exception:  # noqa: BLE001 - the application layer's reader reports unreadable files
            return
        if width * height > self.limits.max_pixels:
            raise InputError(
                f"{uploaded_name(path)}: the image has {width}x{height} = {width * height:,} pixels; this server accepts "
                f"at most {self.limits.max_pixels:,} pixels per image: downscale it"
            )

    def image_or_sample(self, upload: object, sample: str | None) -> Path:
        """One image: the uploaded one, else the bundled sample named ``sample``."""
        uploaded = self.images(upload, required=False)
        if len(uploaded) > 1:
            raise InputError(f"{len(uploaded)} images were uploaded; this tab explains one image at a time")
        if uploaded:
            return uploaded[0]
        return sample_path(sample)

    def images_or_samples(self, uploads: object, use_samples: bool) -> list[Path]:
        """The uploaded images, else (``use_samples``) every bundled sample."""
        uploaded = self.images(uploads, required=not use_samples)
        return uploaded or list(sample_choices().values())

    def copy_into(self, files: object, folder: Path) -> list[Path]:
        """Copy the uploaded ``files`` (checked; images also for pixels) into ``folder`` under
        their uploaded names, for runs that read a folder (a labelled data set)."""
        copied = []
        folder.mkdir(parents=True, exist_ok=True)
        for path in self.files(files):
            if path.suffix.lower() != ".csv":
                self._check_pixels(path)
            target = folder / uploaded_name(path)
            if target.exists():
                raise InputError(f"two uploaded files are called {target.name!r}; give every file its own name")
            copied.append(Path(shutil.copyfile(path, target)))
        return copied


def sample_path(name: str | None) -> Path:
    """The bundled sample called ``name``; a one-line :class:`InputError` for any other name."""
    samples = sample_choices()
    if not name or name == NO_SAMPLE:
        raise InputError("no image given: upload an image or pick a bundled sample")
    if name not in samples:
        raise InputError(f"{name!r} is not a bundled sample; choose one of: {', '.join(samples)}")
    return samples[name]

