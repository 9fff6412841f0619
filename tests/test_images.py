"""Image reading: every mode and dtype becomes RGB uint8; bad files give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnlens.errors import ImageReadError, InputError
from attnlens.images import MIN_SIDE, list_image_files, load_images, to_rgb_array


def test_modes_become_rgb(tmp_path) -> None:
    gray = Image.fromarray(np.full((20, 30), 100, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((20, 30, 3), 0, np.uint8), np.full((20, 30), 0, np.uint8)]), "RGBA")
    sixteen = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    palette = gray.convert("P")
    for image in (gray, rgba, sixteen, palette):
        path = tmp_path / f"{image.mode.replace(';', '_')}.png"
        image.save(path)
        array = to_rgb_array(path)
        assert array.shape == (20, 30, 3) and array.dtype == np.uint8
    assert to_rgb_array(tmp_path / "L.png")[0, 0].tolist() == [100, 100, 100]
    assert to_rgb_array(tmp_path / "RGBA.png")[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert to_rgb_array(tmp_path / "I_16.png")[0, 0].tolist() == [255, 255, 255]


def test_arrays_of_every_dtype() -> None:
    assert to_rgb_array(np.full((9, 9), 0.5))[0, 0].tolist() == [128, 128, 128]
    assert to_rgb_array(np.full((9, 9, 3), 1000, np.uint16))[0, 0, 0] == round(1000 * 255 / 65535)
    assert to_rgb_array(np.zeros((9, 9, 1), np.uint8)).shape == (9, 9, 3)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        to_rgb_array(np.full((9, 9, 3), 2.0))
    with pytest.raises(InputError, match="channels-first"):
        to_rgb_array(np.zeros((3, 9, 9), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        to_rgb_array(np.full((9, 9), np.nan))


def test_bad_files_name_the_file_and_the_problem(tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((MIN_SIDE - 1, 40, 3), np.uint8)).save(tiny)
    cases = {
        tmp_path / "missing.png": "file not found",
        text: "not an image file",
        truncated: "corrupt or truncated",
        tiny: "too small",
        tmp_path: "is a folder",
    }
    for path, message in cases.items():
        with pytest.raises((ImageReadError, InputError), match=message) as info:
            to_rgb_array(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_huge_images_are_refused(monkeypatch, tmp_path) -> None:
    import attnlens.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match="too large"):
        to_rgb_array(path)


def test_load_images_and_folders(tmp_path) -> None:
    assert len(load_images(np.zeros((2, 10, 10, 3), np.uint8))) == 2
    assert len(load_images(np.zeros((10, 10, 3), np.uint8))) == 1
    with pytest.raises(InputError, match="no images"):
        load_images([])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files"):
        list_image_files([empty])
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(empty / "b.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(empty / "a.jpg")
    assert [p.name for p in list_image_files([empty])] == ["a.jpg", "b.png"]
    with pytest.raises(InputError, match="unsupported image type"):
        load_images([42])
